"""roi_align against a slow loop-by-loop reference written here from the RoIAlign definition.

The reference loops over rois, bins and samples in plain Python, computes every coordinate as a
Python float and interpolates each sample explicitly from its four neighbours. It works on numpy
arrays (fast value checks) and on torch tensors (autograd through the loops gives reference
gradients).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from m3sgg.ops import RoIAlign, roi_align


def _bilinear(fmap: Any, y: float, x: float, height: int, width: int) -> Any:
    """Value of ``fmap`` ``[C, H, W]`` at ``(y, x)`` by the RoIAlign sampling rule (``[C]``)."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0 * fmap[:, 0, 0]
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low = int(y)  # y >= 0: truncation is floor
    x_low = int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * fmap[:, y_low, x_low]
        + hy * lx * fmap[:, y_low, x_high]
        + ly * hx * fmap[:, y_high, x_low]
        + ly * lx * fmap[:, y_high, x_high]
    )


def reference_roi_align(
    features: Any,
    rois: list[list[float]],
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    stack: Callable[[list[Any]], Any],
    grid_type: Callable[[float], Any] = np.float64,
) -> Any:
    """Slow RoIAlign: ``features`` ``[N, C, H, W]`` (numpy or torch) -> ``[K, C, oh, ow]``.

    ``sampling_ratio=0`` counts ``ceil(size / bins)`` samples per roi and axis, the size computed
    in ``grid_type`` arithmetic (``np.float32`` for float32 maps, as the C kernels do).
    """
    height, width = features.shape[2], features.shape[3]
    oh, ow = output_size
    offset = 0.5 if aligned else 0.0
    per_roi = []
    for batch, bx1, by1, bx2, by2 in rois:
        fmap = features[int(batch)]
        x1 = bx1 * spatial_scale - offset
        y1 = by1 * spatial_scale - offset
        roi_w = bx2 * spatial_scale - offset - x1
        roi_h = by2 * spatial_scale - offset - y1
        if not aligned:
            roi_w = max(roi_w, 1.0)
            roi_h = max(roi_h, 1.0)
        bin_h, bin_w = roi_h / oh, roi_w / ow
        grid_y = grid_x = sampling_ratio
        if sampling_ratio == 0:
            t = grid_type
            gx1, gy1 = t(bx1) * t(spatial_scale) - t(offset), t(by1) * t(spatial_scale) - t(offset)
            gw = t(t(bx2) * t(spatial_scale) - t(offset)) - gx1
            gh = t(t(by2) * t(spatial_scale) - t(offset)) - gy1
            if not aligned:
                gw, gh = max(gw, t(1.0)), max(gh, t(1.0))
            grid_y, grid_x = max(math.ceil(gh / t(oh)), 0), max(math.ceil(gw / t(ow)), 0)
        count = max(grid_y * grid_x, 1)
        rows = []
        for ph in range(oh):
            cols = []
            for pw in range(ow):
                total = 0.0 * fmap[:, 0, 0]
                for iy in range(grid_y):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_y
                    for ix in range(grid_x):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_x
                        total = total + _bilinear(fmap, y, x, height, width)
                cols.append(total / count)
            rows.append(stack(cols))  # [ow, C]
        per_roi.append(stack(rows))  # [oh, ow, C]
    return stack(per_roi)  # [K, oh, ow, C]


def reference_numpy(features: torch.Tensor, rois: torch.Tensor, **kwargs: Any) -> np.ndarray:
    grid_type = np.float64 if features.dtype == torch.float64 else np.float32
    out = reference_roi_align(
        features.double().numpy(),
        rois.double().tolist(),
        stack=np.stack,
        grid_type=grid_type,
        **kwargs,
    )
    return out.transpose(0, 3, 1, 2)


def reference_torch(features: torch.Tensor, rois: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    out = reference_roi_align(features, rois.double().tolist(), stack=torch.stack, **kwargs)
    return out.permute(0, 3, 1, 2)


def random_rois(gen: torch.Generator, num_images: int, img_h: float, img_w: float) -> torch.Tensor:
    """A mix of boxes in image coordinates: ordinary, partly and fully outside, tiny, degenerate."""

    def uniform(n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)

    rows = []
    # Ordinary boxes that may stick out of the image on any side.
    xs = uniform(2 * 6, -0.3 * img_w, 1.3 * img_w).view(6, 2).sort(dim=1).values
    ys = uniform(2 * 6, -0.3 * img_h, 1.3 * img_h).view(6, 2).sort(dim=1).values
    rows += [[x[0], y[0], x[1], y[1]] for x, y in zip(xs.tolist(), ys.tolist(), strict=True)]
    # Tiny boxes: at most 1/80 of the image (under a feature pixel for maps under 80 pixels).
    for _ in range(3):
        x, y = uniform(1, 0, img_w).item(), uniform(1, 0, img_h).item()
        dw, dh = uniform(1, 0, 0.5 * img_w / 40).item(), uniform(1, 0, 0.5 * img_h / 40).item()
        rows.append([x, y, x + dw, y + dh])
    # Degenerate: a point, a horizontal segment, and an inverted box.
    x, y = uniform(1, 0, img_w).item(), uniform(1, 0, img_h).item()
    rows.append([x, y, x, y])
    rows.append([0.1 * img_w, y, 0.7 * img_w, y])
    rows.append([0.6 * img_w, 0.7 * img_h, 0.2 * img_w, 0.1 * img_h])
    # Fully outside (below-right) and fully covering.
    rows.append([1.2 * img_w, 1.1 * img_h, 1.5 * img_w, 1.4 * img_h])
    rows.append([-0.05 * img_w, -0.05 * img_h, 1.05 * img_w, 1.05 * img_h])
    boxes = torch.tensor(rows, dtype=torch.float64)
    batch = torch.randint(0, num_images, (len(rows), 1), generator=gen).double()
    return torch.cat([batch, boxes], dim=1)


TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5, 1 / 16])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(
    seed: int, aligned: bool, sampling_ratio: int, spatial_scale: float, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(seed)
    height, width = 7, 9  # not square: a swapped axis would show
    features = torch.randn(2, 3, height, width, generator=gen, dtype=torch.float64).to(dtype)
    rois = random_rois(gen, 2, height / spatial_scale, width / spatial_scale).to(dtype)
    kwargs = dict(
        output_size=(2, 3),
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
    ours = roi_align(features, rois, **kwargs)
    expected = reference_numpy(features, rois, **kwargs)
    assert ours.dtype == dtype
    assert ours.shape == (rois.shape[0], 3, 2, 3)
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=0, atol=TOLERANCE[dtype])


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    aligned=st.booleans(),
    sampling_ratio=st.integers(0, 3),
    output_size=st.tuples(st.integers(1, 3), st.integers(1, 3)),
)
def test_matches_reference_on_pixel_lattice(
    data: st.DataObject, aligned: bool, sampling_ratio: int, output_size: tuple[int, int]
) -> None:
    """Boxes on a quarter-pixel lattice hit the edge cases exactly: samples at -1, 0, H-1, H."""
    height, width = 3, 4
    coord = st.integers(-8, 24).map(lambda q: q / 4)
    rois = [
        [float(data.draw(st.integers(0, 1)))] + [data.draw(coord) for _ in range(4)]
        for _ in range(data.draw(st.integers(1, 4)))
    ]
    features = torch.randn(2, 2, height, width, dtype=torch.float64)
    rois_t = torch.tensor(rois, dtype=torch.float64)
    kwargs = dict(
        output_size=output_size, spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=aligned
    )
    ours = roi_align(features, rois_t, **kwargs)
    np.testing.assert_allclose(
        ours.numpy(), reference_numpy(features, rois_t, **kwargs), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("aligned", [True, False])
def test_gradcheck(aligned: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(2, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [
            [0, 0.3, 0.2, 3.1, 2.7],
            [1, -1.0, 1.5, 2.0, 5.5],  # partly outside
            [1, 2.2, 1.1, 2.4, 1.2],  # tiny
            [0, 3.9, 2.9, 6.0, 4.5],  # over the last row and column
        ],
        dtype=torch.float64,
    )

    def fn(feat: torch.Tensor) -> torch.Tensor:
        return roi_align(feat, rois, (2, 3), sampling_ratio=2, aligned=aligned)

    assert torch.autograd.gradcheck(fn, (features,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_gradient_matches_reference(aligned: bool, sampling_ratio: int) -> None:
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(2, 2, 5, 6, generator=gen, dtype=torch.float64)
    rois = random_rois(gen, 2, 5 / 0.5, 6 / 0.5)[:6]
    kwargs = dict(
        output_size=(2, 3), spatial_scale=0.5, sampling_ratio=sampling_ratio, aligned=aligned
    )
    grad_out = torch.randn(rois.shape[0], 2, 2, 3, generator=gen, dtype=torch.float64)

    ours_in = features.clone().requires_grad_(True)
    roi_align(ours_in, rois, **kwargs).backward(grad_out)
    ref_in = features.clone().requires_grad_(True)
    reference_torch(ref_in, rois, **kwargs).backward(grad_out)

    assert ref_in.grad is not None and ours_in.grad is not None
    assert ref_in.grad.abs().sum() > 0
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("spatial_scale", [1.0, 1 / 16])
def test_constant_map_gives_constant(aligned: bool, spatial_scale: float) -> None:
    gen = torch.Generator().manual_seed(5)
    height, width = 6, 8
    features = torch.full((1, 4, height, width), 2.5)
    # Boxes inside [0, W-1] x [0, H-1] feature pixels, so even the 1-pixel minimum stays inside.
    corners = torch.rand(10, 4, generator=gen, dtype=torch.float64)
    xs = (corners[:, [0, 2]] * (width - 1)).sort(dim=1).values / spatial_scale
    ys = (corners[:, [1, 3]] * (height - 1)).sort(dim=1).values / spatial_scale
    rois = torch.stack([torch.zeros(10), xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], dim=1).float()
    out = roi_align(features, rois, 3, spatial_scale=spatial_scale, aligned=aligned)
    torch.testing.assert_close(out, torch.full_like(out, 2.5), rtol=0, atol=1e-6)


RAMP_CASES = [
    # (roi, output size, sampling ratio, spatial scale, aligned, expected) on the 4x4 map
    # f(y, x) = 4y + x.
    # aligned: box 1..3 shifts to 0.5..2.5; samples at 1 and 2 on each axis: mean(5, 6, 9, 10).
    ([0, 1, 1, 3, 3], 1, 2, 1.0, True, [[7.5]]),
    # Same samples without the shift.
    ([0, 0.5, 0.5, 2.5, 2.5], 1, 2, 1.0, False, [[7.5]]),
    # 2x2 bins over -0.5..3.5: samples at 0, 1 | 2, 3 -> bin means of y and x are 0.5 or 2.5.
    ([0, 0, 0, 4, 4], 2, 2, 1.0, True, [[2.5, 4.5], [10.5, 12.5]]),
    # Samples at 2.5 and 3.5; 3.5 is past the last pixel and takes row/column 3 alone:
    # effective coordinates {2.5, 3} -> 4 * 2.75 + 2.75.
    ([0, 2, 2, 4, 4], 1, 2, 1.0, False, [[13.75]]),
    # One sample per bin at 4 (== H: valid, clamped to pixel 3) and at 6 (> H: contributes 0).
    ([0, 3, 3, 7, 7], 2, 1, 1.0, False, [[15.0, 0.0], [0.0, 0.0]]),
    # x samples at -1.25 (< -1: contribute 0 but count) and -0.75 (clamped to column 0);
    # y samples at 0.75 and 1.25 -> (0 + 0 + 3 + 5) / 4.
    ([0, -1, 1, 0, 2], 1, 2, 1.0, True, [[2.0]]),
    # A tiny box gets the 1x1 minimum: samples at x in {1.25, 1.75}, y in {2.25, 2.75}.
    ([0, 1, 2, 1.1, 2.1], 1, 2, 1.0, False, [[4 * 2.5 + 1.5]]),
    # Scale 1/2: box 2..6 in the image is 1..3 on the map; samples at 1.5 and 2.5 -> f(2, 2) = 10.
    ([0, 2, 2, 6, 6], 1, 2, 0.5, False, [[10.0]]),
    # Adaptive (ratio 0): the 0..4 box has ceil(4 / 1) = 4 samples per axis at 0.5, 1.5, 2.5,
    # 3.5 (-> 3): mean 1.875 on both axes -> 5 * 1.875.
    ([0, 0, 0, 4, 4], 1, 0, 1.0, False, [[9.375]]),
    # Adaptive, 2x1 bins over a 0..3 x 0..1 box: y gets ceil(1 / 2) = 1 sample per bin (at 0.25
    # and 0.75), x ceil(3 / 1) = 3 samples (0.5, 1.5, 2.5 -> mean 1.5): 4y + 1.5.
    ([0, 0, 0, 3, 1], (2, 1), 0, 1.0, False, [[2.5], [4.5]]),
    # Adaptive with a tiny box: the 1x1 minimum gives 1 sample at the centre (1.5, 2.5).
    ([0, 1, 2, 1.1, 2.1], 1, 0, 1.0, False, [[4 * 2.5 + 1.5]]),
    # Adaptive, aligned, inverted box: size < 0 -> no samples, the bin is 0.
    ([0, 3, 3, 1, 1], 1, 0, 1.0, True, [[0.0]]),
]


@pytest.mark.parametrize(("roi", "size", "ratio", "scale", "aligned", "expected"), RAMP_CASES)
def test_hand_computed_values_on_ramp(
    roi: list[float],
    size: int | tuple[int, int],
    ratio: int,
    scale: float,
    aligned: bool,
    expected: list[list[float]],
) -> None:
    features = (4 * torch.arange(4.0)[:, None] + torch.arange(4.0)[None, :]).view(1, 1, 4, 4)
    out = roi_align(
        features,
        torch.tensor([roi], dtype=torch.float32),
        size,
        spatial_scale=scale,
        sampling_ratio=ratio,
        aligned=aligned,
    )
    torch.testing.assert_close(out[0, 0], torch.tensor(expected), rtol=0, atol=1e-6)


def test_chunking_gives_the_same_result_and_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(6)
    features = torch.randn(2, 5, 8, 8, generator=gen, dtype=torch.float64)
    rois = random_rois(gen, 2, 8.0, 8.0)
    grad_out = torch.randn(rois.shape[0], 5, 3, 3, generator=gen, dtype=torch.float64)
    calls: list[int] = []
    embedding_bag = torch.nn.functional.embedding_bag

    def counting_embedding_bag(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return embedding_bag(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "embedding_bag", counting_embedding_bag)
    results = []
    chunks = []
    for bound in (1, 20_000, 2**30):  # one roi per chunk, a few per chunk, all at once
        calls.clear()
        feat = features.clone().requires_grad_(True)
        out = roi_align(feat, rois, 3, max_chunk_bytes=bound)
        out.backward(grad_out)
        results.append((out.detach(), feat.grad))
        chunks.append(len(calls))
    assert chunks[0] == rois.shape[0] and 1 < chunks[1] < rois.shape[0] and chunks[2] == 1
    for out, grad in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(grad, results[0][1], rtol=0, atol=1e-12)


def test_adaptive_grid_counts_in_float32_like_the_kernels() -> None:
    """A box whose size is a whole number of bins in float32 but a hair over it in float64."""
    # float32(14.1) - float32(0.1) == 14.0 exactly, while the float64 difference is 14.0000002:
    # float32 arithmetic gives ceil(14 / 7) = 2 samples per bin along x, float64 would give 3.
    x1, x2 = np.float32(0.1), np.float32(14.1)
    assert x2 - x1 == np.float32(14.0) and float(x2) - float(x1) > 14.0
    features = torch.randn(1, 2, 3, 20, generator=torch.Generator().manual_seed(11))
    rois = torch.tensor([[0.0, float(x1), 0.0, float(x2), 1.0]])
    kwargs = dict(output_size=(1, 7), spatial_scale=1.0, sampling_ratio=0, aligned=False)
    out = roi_align(features, rois, **kwargs).double().numpy()
    float32_grid = reference_numpy(features, rois, **kwargs)  # float32 map: float32 sizes
    float64_grid = reference_roi_align(
        features.double().numpy(), rois.double().tolist(), stack=np.stack, **kwargs
    ).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, float32_grid, rtol=0, atol=1e-5)
    assert np.abs(out - float64_grid).max() > 1e-3


def test_adaptive_mixed_grids_and_chunks_match_reference_and_gradient() -> None:
    """Rois of many sizes (many (s_y, s_x) groups), one roi per chunk or all at once."""
    gen = torch.Generator().manual_seed(12)
    features = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    rois = random_rois(gen, 2, 9 * 8.0, 11 * 8.0)
    kwargs = dict(output_size=(2, 2), spatial_scale=1 / 8, sampling_ratio=0, aligned=False)
    grad_out = torch.randn(rois.shape[0], 3, 2, 2, generator=gen, dtype=torch.float64)
    expected = reference_numpy(features, rois, **kwargs)
    ref_in = features.clone().requires_grad_(True)
    reference_torch(ref_in, rois, **kwargs).backward(grad_out)
    for bound in (1, 2**30):
        feat = features.clone().requires_grad_(True)
        out = roi_align(feat, rois, max_chunk_bytes=bound, **kwargs)
        out.backward(grad_out)
        np.testing.assert_allclose(out.detach().numpy(), expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(feat.grad, ref_in.grad, rtol=0, atol=1e-12)


def test_no_rois_gives_empty_output_that_backpropagates() -> None:
    features = torch.randn(1, 3, 4, 4, requires_grad=True)
    out = roi_align(features, torch.zeros(0, 5), (2, 3))
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()
    assert features.grad is not None and torch.all(features.grad == 0)


def test_overflowing_box_sizes_give_a_finite_output() -> None:
    # 1e308 - (-1e308) overflows to inf: samples become NaN and must count as outside.
    rois = torch.tensor(
        [[0.0, -1e308, 0.5, 1e308, 2.5], [0.0, 1.0, 1.0, 2.0, 2.0]], dtype=torch.float64
    )
    out = roi_align(torch.ones(1, 2, 4, 4, dtype=torch.float64), rois, 2)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], torch.ones(2, 2, 2, dtype=torch.float64))


def test_rois_get_no_gradient_and_any_real_dtype_is_accepted() -> None:
    features = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[1.0, 0.5, 0.5, 3.5, 4.0]], requires_grad=True)  # float32 rois
    out = roi_align(features, rois, 2)
    assert out.dtype == torch.float64
    out.sum().backward()
    assert rois.grad is None
    assert features.grad is not None and features.grad[0].abs().sum() == 0  # image 0 unused
    int_rois = torch.tensor([[1, 0, 1, 3, 4]])
    torch.testing.assert_close(
        roi_align(features, int_rois, 2),
        roi_align(features, int_rois.double(), 2),
        rtol=0,
        atol=0,
    )


def test_non_contiguous_and_channels_last_features() -> None:
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(2, 6, 7, 9, generator=gen)
    rois = random_rois(gen, 2, 7.0, 9.0).float()
    expected = roi_align(base[:, ::2].contiguous(), rois, 2)
    torch.testing.assert_close(roi_align(base[:, ::2], rois, 2), expected, rtol=0, atol=0)
    cl = base.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(roi_align(cl, rois, 2), roi_align(base, rois, 2))


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_low_precision_dtypes(dtype: torch.dtype, atol: float) -> None:
    gen = torch.Generator().manual_seed(8)
    features = torch.randn(2, 4, 6, 7, generator=gen)
    rois = random_rois(gen, 2, 6.0, 7.0)
    expected = roi_align(features.to(dtype).double(), rois, 2)
    out = roi_align(features.to(dtype), rois, 2)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=atol)


def test_module_matches_function() -> None:
    gen = torch.Generator().manual_seed(9)
    features = torch.randn(2, 3, 6, 6, generator=gen)
    rois = random_rois(gen, 2, 96.0, 96.0).float()
    pool = RoIAlign((2, 3), spatial_scale=1 / 16, sampling_ratio=3, aligned=False)
    assert "sampling_ratio=3" in repr(pool) and "aligned=False" in repr(pool)
    torch.testing.assert_close(
        pool(features, rois),
        roi_align(features, rois, (2, 3), spatial_scale=1 / 16, sampling_ratio=3, aligned=False),
        rtol=0,
        atol=0,
    )
    with pytest.raises(ValueError, match="adaptive"):
        RoIAlign(7, sampling_ratio=-1)


FEATURES = torch.zeros(2, 3, 4, 5)
GOOD_ROIS = torch.tensor([[0.0, 0, 0, 2, 2]])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(rois=torch.zeros(3, 4)), ValueError, r"rois must have shape \[K, 5\].*\[3, 4\]"),
        (dict(rois=torch.zeros(5)), ValueError, r"rois must have shape \[K, 5\].*\[5\]"),
        (dict(rois=torch.zeros(1, 5, dtype=torch.bool)), TypeError, "rois must be real"),
        (
            dict(rois=torch.tensor([[0.0, 0, 0, 1, 1], [2.0, 0, 0, 1, 1]])),
            ValueError,
            r"rois\[1\] has batch index 2\.0.*\[0, 2\)",
        ),
        (dict(rois=torch.tensor([[-1.0, 0, 0, 1, 1]])), ValueError, r"rois\[0\].*batch index"),
        (dict(rois=torch.tensor([[0.5, 0, 0, 1, 1]])), ValueError, "whole number"),
        (dict(rois=torch.tensor([[0.0, 0, math.nan, 1, 1]])), ValueError, "non-finite"),
        (dict(rois=torch.tensor([[0.0, 0, 0, math.inf, 1]])), ValueError, "non-finite"),
        (dict(features=torch.zeros(3, 4, 5)), ValueError, r"\[N, C, H, W\].*\[3, 4, 5\]"),
        (dict(features=torch.zeros(1, 3, 4, 5, dtype=torch.int64)), TypeError, "floating"),
        (dict(features=torch.zeros(1, 3, 0, 5)), ValueError, "H=0, W=5"),
        (dict(features=[[0.0]]), TypeError, "must be tensors"),
        (dict(output_size=0), ValueError, "output_size must be positive"),
        (dict(output_size=(2, 0)), ValueError, "output_size must be positive"),
        (dict(output_size=(2,)), TypeError, "pair of ints"),
        (dict(output_size=2.0), TypeError, "pair of ints"),
        (dict(spatial_scale=0.0), ValueError, "spatial_scale must be finite and positive"),
        (dict(spatial_scale=math.nan), ValueError, "spatial_scale"),
        (dict(sampling_ratio=-1), ValueError, r"must be >= 0 \(0 = adaptive\)"),
        (
            dict(sampling_ratio=0, rois=torch.tensor([[0.0, 0, 0, 1e9, 1e9]])),
            ValueError,
            r"rois\[0\].*adaptive samples per bin, more than 1048576",
        ),
        (dict(sampling_ratio=2.0), TypeError, "sampling_ratio must be an int"),
        (dict(max_chunk_bytes=0), ValueError, "max_chunk_bytes must be positive"),
    ],
)
def test_input_validation(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    args: dict[str, Any] = dict(features=FEATURES, rois=GOOD_ROIS, output_size=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        roi_align(**args)


def test_rois_on_another_device_are_refused() -> None:
    with pytest.raises(ValueError, match="rois are on meta but features are on cpu"):
        roi_align(FEATURES, GOOD_ROIS.to("meta"), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(10)
    features = torch.randn(2, 8, 9, 11, generator=gen)
    rois = random_rois(gen, 2, 9 / 0.5, 11 / 0.5).float()
    grad_out = torch.randn(rois.shape[0], 8, 3, 3, generator=gen)
    results = []
    for device in ("cpu", "cuda"):
        feat = features.to(device).requires_grad_(True)
        out = roi_align(feat, rois.to(device), 3, spatial_scale=0.5)
        out.backward(grad_out.to(device))
        assert out.device.type == device
        results.append((out.detach().cpu(), feat.grad.cpu()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=1e-5)

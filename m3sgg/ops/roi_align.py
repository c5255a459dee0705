"""RoIAlign in plain torch: pools a fixed-size feature grid out of every region of interest.

Plain torch has no RoIAlign and torchvision cannot be installed beside our torch, so this module
implements the operator of Mask R-CNN (He et al., 2017) from its definition, with the same
semantics as the standard operator (the one ``torchvision.ops.roi_align`` documents).

Convention:

* ``features`` is ``[N, C, H, W]``; ``rois`` is ``[K, 5]``, one row ``(b, x1, y1, x2, y2)`` per
  region: ``b`` is the index of the image in ``features`` and the box is in *input-image*
  coordinates (x along the width, y along the height). ``spatial_scale`` maps image coordinates
  to feature coordinates (``1/16`` for a stride-16 backbone). The result is ``[K, C, oh, ow]``.
* ``aligned=True`` subtracts half a pixel after scaling, so that feature pixel ``i`` has its
  centre at continuous coordinate ``i`` (the pixel-accurate convention). ``aligned=False`` is the
  original formulation: no shift, and each box is at least one feature pixel wide and high.
* A box is cut into ``oh x ow`` bins. Each bin averages ``s_y x s_x`` bilinear samples at the
  centres of a regular sub-grid of the bin. A sample with ``y`` outside ``[-1, H]`` or ``x``
  outside ``[-1, W]`` contributes 0 (it still counts in the average).
  Otherwise its coordinates are clamped to ``[0, H-1] x [0, W-1]`` and it interpolates its four
  neighbouring pixels; on the last row or column both neighbours are that row or column.
* ``sampling_ratio > 0`` fixes the number of samples per bin and axis. ``sampling_ratio = 0`` is
  the adaptive mode of the reference kernels (the one the Action Genome detector uses):
  ``ceil(roi_h / oh)`` samples along y and ``ceil(roi_w / ow)`` along x, per roi, with the box
  size computed in the features' precision (at least float32) as the kernels do. A box of size 0
  or less along an axis (``aligned=True`` only) gets no samples there and pools zeros.

Implementation: all ``K x oh x ow x s_y x s_x`` samples, each with its four neighbours, become
``4 s_y s_x`` indices per output bin into the features laid out as ``[N*H*W, C]`` rows, each with
its bilinear weight divided by ``s_y s_x``. One ``embedding_bag`` call (mode ``sum`` with per-sample
weights) gathers those rows and sums them with their weights, without materializing the
``[K*oh*ow, 4 s_y s_x, C]`` gathered tensor. In the adaptive mode the rois are grouped by their
``(s_y, s_x)`` and each group takes that path. Rois are processed in chunks so that the indices and
weights of one chunk stay under a memory bound. The output is differentiable with respect to
``features`` through autograd (the backward of the weighted gather is a weighted scatter-add);
boxes are treated as constants, as in the standard operator. Sample coordinates and weights are
computed in float64 whatever the feature dtype (their products in at least float32); the weighted
sums run in the feature dtype. There is no device-specific code: CPU and CUDA tensors take the same
path. Features in ``torch.channels_last`` memory format are used without a copy; others are copied
once into that layout.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["DEFAULT_MAX_CHUNK_BYTES", "MAX_ADAPTIVE_SAMPLES", "RoIAlign", "roi_align"]

#: Default bound, in bytes, on the working memory of one chunk of rois (indices, weights, output).
DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20

#: Largest number of samples per bin (``s_y * s_x``) the adaptive mode accepts for one roi.
MAX_ADAPTIVE_SAMPLES = 2**20


def _check_output_size(output_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        size = (output_size, output_size)
    elif (
        isinstance(output_size, tuple | list)
        and len(output_size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in output_size)
    ):
        size = (output_size[0], output_size[1])
    else:
        raise TypeError(
            "roi_align: output_size must be an int or a pair of ints (height, width), "
            f"got {output_size!r}"
        )
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"roi_align: output_size must be positive, got {output_size!r}")
    return size


def _check_params(
    output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int
) -> tuple[int, int]:
    size = _check_output_size(output_size)
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, int | float):
        raise TypeError(f"roi_align: spatial_scale must be a float, got {spatial_scale!r}")
    if not (math.isfinite(spatial_scale) and spatial_scale > 0):
        raise ValueError(
            f"roi_align: spatial_scale must be finite and positive, got {spatial_scale!r}"
        )
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise TypeError(f"roi_align: sampling_ratio must be an int, got {sampling_ratio!r}")
    if sampling_ratio < 0:
        raise ValueError(
            f"roi_align: sampling_ratio must be >= 0 (0 = adaptive), got {sampling_ratio!r}"
        )
    return size


def _check_inputs(features: Tensor, rois: Tensor) -> None:
    if not isinstance(features, Tensor) or not isinstance(rois, Tensor):
        raise TypeError(
            "roi_align: features and rois must be tensors, got "
            f"{type(features).__name__} and {type(rois).__name__}"
        )
    if features.dim() != 4:
        raise ValueError(
            f"roi_align: features must have shape [N, C, H, W], got {list(features.shape)}"
        )
    if not features.is_floating_point():
        raise TypeError(f"roi_align: features must be floating point, got {features.dtype}")
    if features.shape[2] == 0 or features.shape[3] == 0:
        raise ValueError(
            "roi_align: features must have a non-empty spatial size, got "
            f"H={features.shape[2]}, W={features.shape[3]}"
        )
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            "roi_align: rois must have shape [K, 5] (batch index, x1, y1, x2, y2), got "
            f"{list(rois.shape)}"
        )
    if rois.dtype == torch.bool or rois.is_complex():
        raise TypeError(f"roi_align: rois must be real numbers, got {rois.dtype}")
    if rois.device != features.device:
        raise ValueError(
            f"roi_align: rois are on {rois.device} but features are on {features.device}"
        )


def _check_roi_values(rois: Tensor, num_images: int) -> None:
    """Refuse non-finite rows and batch indices that are not whole numbers in ``[0, N)``."""
    batch = rois[:, 0]
    bad_batch = (batch != batch.floor()) | (batch < 0) | (batch >= num_images)
    bad_batch |= ~torch.isfinite(batch)
    bad_coords = ~torch.isfinite(rois[:, 1:]).all(dim=1)
    bad = bad_batch | bad_coords
    if bool(bad.any()):  # one host sync; the error message needs the offending row anyway
        row = int(bad.nonzero()[0, 0])
        values = [float(v) for v in rois[row].tolist()]
        if bool(bad_batch[row]):
            raise ValueError(
                f"roi_align: rois[{row}] has batch index {values[0]!r}; it must be a whole "
                f"number in [0, {num_images}) (features hold {num_images} images)"
            )
        raise ValueError(f"roi_align: rois[{row}] has a non-finite coordinate: {values[1:]}")


def _axis_samples(
    start: Tensor, bin_size: Tensor, bins: int, ratio: int, size: int
) -> tuple[Tensor, Tensor]:
    """Neighbour indices and bilinear weights along one axis, both ``[K, bins, ratio, 2]``.

    ``start`` and ``bin_size`` are ``[K]`` (float64, feature coordinates). Index ``[..., 0]`` is
    the lower neighbour, ``[..., 1]`` the upper one. Samples outside ``[-1, size]`` get weight 0.
    """
    bin_index = torch.arange(bins, dtype=start.dtype, device=start.device)
    sub_index = torch.arange(ratio, dtype=start.dtype, device=start.device) + 0.5
    start, bin_size = start[:, None, None], bin_size[:, None, None]
    pos = start + bin_index[None, :, None] * bin_size + sub_index[None, None, :] * bin_size / ratio
    inside = (pos >= -1.0) & (pos <= size)  # False for NaN (overflowed box sizes too)
    # Clamping to [0, size-1] reproduces the border rule: a sample at or past the last pixel
    # takes that pixel alone (lower = upper = size-1, fraction 0).
    pos = pos.where(inside, 0.0).clamp(min=0.0, max=size - 1)
    lower = pos.floor()
    frac = pos - lower
    lower = lower.long()
    upper = (lower + 1).clamp(max=size - 1)
    weights = torch.stack((1.0 - frac, frac), dim=-1) * inside[..., None]
    return torch.stack((lower, upper), dim=-1), weights


class _PoolArgs(NamedTuple):
    table: Tensor  # [N*H*W, C]
    height: int
    width: int
    oh: int
    ow: int
    dtype: torch.dtype
    max_chunk_bytes: int


def _adaptive_grid(
    rois: Tensor,
    dtype: torch.dtype,
    spatial_scale: float,
    offset: float,
    aligned: bool,
    oh: int,
    ow: int,
) -> tuple[Tensor, Tensor]:
    """Samples per bin along y and x, ``[K]`` int64 each, as the kernels count them.

    The kernels compute the box size in the features' type (``float`` for float32 maps), so
    the size is computed here in that precision (at least float32) before ``ceil``: a size on
    the edge of a whole number of bins then gets the kernels' count.
    """
    grid_dtype = torch.promote_types(dtype, torch.float32)
    r = rois.detach().to(grid_dtype)
    x1 = r[:, 1] * spatial_scale - offset
    y1 = r[:, 2] * spatial_scale - offset
    roi_w = (r[:, 3] * spatial_scale - offset) - x1
    roi_h = (r[:, 4] * spatial_scale - offset) - y1
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    grid_y = torch.ceil(roi_h / oh).to(torch.float64).clamp(min=0)
    grid_x = torch.ceil(roi_w / ow).to(torch.float64).clamp(min=0)
    samples = grid_y * grid_x
    bad = ~(samples <= MAX_ADAPTIVE_SAMPLES)  # also catches NaN and inf
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"roi_align: rois[{row}] = {rois[row].tolist()} needs "
            f"{float(grid_y[row])} x {float(grid_x[row])} adaptive samples per bin, more than "
            f"{MAX_ADAPTIVE_SAMPLES}; pass a fixed sampling_ratio for boxes this large"
        )
    return grid_y.long(), grid_x.long()


def _pool_fixed(
    pool: _PoolArgs,
    geometry: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    ratio_y: int,
    ratio_x: int,
) -> Tensor:
    """Pool the rois of ``geometry``, ``ratio_y x ratio_x`` samples per bin: ``[K, oh, ow, C]``."""
    batch, x1, y1, roi_w, roi_h = geometry
    oh, ow, dtype = pool.oh, pool.ow, pool.dtype
    channels = pool.table.shape[1]
    y_index, y_weight = _axis_samples(y1, roi_h / oh, oh, ratio_y, pool.height)  # [K, oh, sy, 2]
    x_index, x_weight = _axis_samples(x1, roi_w / ow, ow, ratio_x, pool.width)  # [K, ow, sx, 2]
    # Row of pixel (b, y, x) in the [N*H*W, C] table: b*H*W + y*W + x. The 1/(sy*sx) of the
    # average goes into the y weights; products of weights are formed in at least float32.
    y_row = (batch * (pool.height * pool.width))[:, None, None, None] + y_index * pool.width
    weight_dtype = torch.promote_types(dtype, torch.float32)
    y_weight = (y_weight / (ratio_y * ratio_x)).to(weight_dtype)
    x_weight = x_weight.to(weight_dtype)
    terms = 4 * ratio_y * ratio_x  # (sample y, neighbour y, sample x, neighbour x) per bin
    # Per roi: int64 indices, weights (product and cast), pooled output (and its final copy).
    item = pool.table.element_size()
    bytes_per_roi = oh * ow * (terms * (8 + 8 + item) + 2 * channels * item)
    chunk = max(1, pool.max_chunk_bytes // bytes_per_roi)
    count = batch.shape[0]
    outputs = []
    for lo in range(0, max(count, 1), chunk):
        hi = min(lo + chunk, count)
        bins = (hi - lo) * oh * ow
        # Broadcast to [k, oh, ow, s_y, 2, s_x, 2], then one row of 4 s_y s_x terms per bin.
        flat = y_row[lo:hi, :, None, :, :, None, None] + x_index[lo:hi, None, :, None, None]
        weight = y_weight[lo:hi, :, None, :, :, None, None] * x_weight[lo:hi, None, :, None, None]
        weight = weight.to(dtype).reshape(bins, terms)
        pooled = nn.functional.embedding_bag(
            flat.reshape(bins, terms), pool.table, per_sample_weights=weight, mode="sum"
        )
        outputs.append(pooled.view(hi - lo, oh, ow, channels))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)


def _pool_adaptive(
    pool: _PoolArgs,
    geometry: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    grid: tuple[Tensor, Tensor],
) -> Tensor:
    """Pool each roi with its own ``(s_y, s_x)``: one fixed-ratio pass per distinct pair."""
    grid_y, grid_x = grid
    count, channels = grid_y.shape[0], pool.table.shape[1]
    key = grid_y * (int(grid_x.max()) + 1) + grid_x
    keys, group = torch.unique(key, return_inverse=True)
    parts, order = [], []
    for g in range(keys.shape[0]):
        members = (group == g).nonzero().squeeze(1)
        ratio_y, ratio_x = int(grid_y[members[0]]), int(grid_x[members[0]])
        if ratio_y == 0 or ratio_x == 0:  # no samples: the bins are 0, as in the kernels
            parts.append(pool.table.new_zeros(members.shape[0], pool.oh, pool.ow, channels))
        else:
            part = tuple(t[members] for t in geometry)
            parts.append(_pool_fixed(pool, part, ratio_y, ratio_x))
        order.append(members)
    # Back to roi order with one gather (differentiable, no per-group copy of the output).
    inverse = torch.empty(count, dtype=torch.long, device=grid_y.device)
    inverse[torch.cat(order)] = torch.arange(count, device=grid_y.device)
    return torch.cat(parts)[inverse]


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
    *,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> Tensor:
    """Pool ``output_size`` bins of bilinearly sampled features out of each box.

    Args:
        features: ``[N, C, H, W]`` floating-point feature maps (any float dtype, any device).
        rois: ``[K, 5]`` rows ``(batch index, x1, y1, x2, y2)`` in input-image coordinates, on
            the same device as ``features``. Batch indices must be whole numbers in ``[0, N)``.
        output_size: ``oh`` (square) or ``(oh, ow)``.
        spatial_scale: multiplies box coordinates into feature coordinates (e.g. ``1/16``).
        sampling_ratio: bilinear samples per bin along each axis, or ``0`` for the adaptive
            mode of the reference kernels (``ceil(box size / bins)`` per roi and axis).
        aligned: shift boxes by ``-0.5`` feature pixel after scaling (``True``), or use the
            original formulation with boxes at least 1x1 feature pixel (``False``).
        max_chunk_bytes: bound on the working memory of one chunk of rois (sample indices,
            weights, pooled output); rois are processed in chunks below it (at least one roi
            per chunk).

    Returns:
        ``[K, C, oh, ow]`` (contiguous) in the dtype and on the device of ``features``;
        differentiable with respect to ``features`` (``rois`` get no gradient). Checking the
        rois' values costs one device-to-host synchronization on CUDA.

    Raises:
        TypeError, ValueError: with the offending argument and value, for a bad shape, dtype,
        device, batch index, non-finite coordinate, output size, scale or sampling ratio.

    Example:
        >>> features = torch.arange(16.0).view(1, 1, 4, 4)  # value 4*y + x
        >>> rois = torch.tensor([[0.0, 1.0, 1.0, 3.0, 3.0]])
        >>> roi_align(features, rois, output_size=1, aligned=True)
        tensor([[[[7.5000]]]])
    """
    oh, ow = _check_params(output_size, spatial_scale, sampling_ratio)
    _check_inputs(features, rois)
    if isinstance(max_chunk_bytes, bool) or not isinstance(max_chunk_bytes, int):
        raise TypeError(f"roi_align: max_chunk_bytes must be an int, got {max_chunk_bytes!r}")
    if max_chunk_bytes <= 0:
        raise ValueError(f"roi_align: max_chunk_bytes must be positive, got {max_chunk_bytes}")
    num_images, channels, height, width = features.shape
    boxes = rois.detach().to(torch.float64)
    _check_roi_values(boxes, num_images)

    offset = 0.5 if aligned else 0.0
    x1 = boxes[:, 1] * spatial_scale - offset
    y1 = boxes[:, 2] * spatial_scale - offset
    roi_w = boxes[:, 3] * spatial_scale - offset - x1
    roi_h = boxes[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    geometry = (boxes[:, 0].long(), x1, y1, roi_w, roi_h)
    # Rows of [N*H*W, C]; one row per (image, y, x).
    table = features.permute(0, 2, 3, 1).reshape(num_images * height * width, channels)
    pool = _PoolArgs(table, height, width, oh, ow, features.dtype, max_chunk_bytes)
    if sampling_ratio > 0 or boxes.shape[0] == 0:
        ratio = max(sampling_ratio, 1)
        pooled = _pool_fixed(pool, geometry, ratio, ratio)
    else:
        grid = _adaptive_grid(rois, features.dtype, spatial_scale, offset, aligned, oh, ow)
        pooled = _pool_adaptive(pool, geometry, grid)
    return pooled.permute(0, 3, 1, 2).contiguous()


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align`; the pooling parameters are fixed at construction.

    Args:
        output_size: ``oh`` (square) or ``(oh, ow)``.
        spatial_scale: multiplies box coordinates into feature coordinates.
        sampling_ratio: bilinear samples per bin along each axis (``0``: adaptive).
        aligned: half-pixel shift (``True``) or the original formulation (``False``).

    Example:
        >>> pool = RoIAlign(output_size=7, spatial_scale=1 / 16)
        >>> pool(torch.zeros(2, 8, 38, 63), torch.tensor([[1.0, 0, 0, 320, 240]])).shape
        torch.Size([1, 8, 7, 7])
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = 2,
        aligned: bool = True,
    ) -> None:
        super().__init__()
        self.output_size = _check_params(output_size, spatial_scale, sampling_ratio)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = sampling_ratio
        self.aligned = bool(aligned)

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        """Pool ``rois`` ``[K, 5]`` out of ``features`` ``[N, C, H, W]`` into ``[K, C, oh, ow]``."""
        return roi_align(
            features,
            rois,
            self.output_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )

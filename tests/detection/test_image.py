"""The frame preprocessing: cv2.resize's bilinear rule on hand cases, BGR means, im_info."""

from __future__ import annotations

import numpy as np
import pytest

from m3sgg.detection.image import PIXEL_MEANS, prepare_frame, prepare_frames, resize_bilinear


def test_resize_doubling_by_hand() -> None:
    image = np.array([[0.0, 10.0], [20.0, 30.0]], dtype=np.float32)[:, :, None]
    # Source x of output column dx: (dx + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25. Columns
    # before the first / past the last source column take it alone: 0, 2.5, 7.5, 10 on row 0.
    # Rows: -0.25 reads row 0 twice (weights 0.25 + 0.75), 0.25 -> row0 + 0.25 (row1 - row0),
    # 0.75 -> row0 + 0.75 (row1 - row0), 1.25 reads row 1 twice.
    expected = np.array(
        [[0, 2.5, 7.5, 10], [5, 7.5, 12.5, 15], [15, 17.5, 22.5, 25], [20, 22.5, 27.5, 30]],
        dtype=np.float32,
    )
    out = resize_bilinear(image, 2.0)
    assert out.dtype == np.float32 and out.shape == (4, 4, 1)
    np.testing.assert_allclose(out[:, :, 0], expected, rtol=0, atol=1e-5)


def test_resize_non_integer_scale_by_hand() -> None:
    image = np.array([[0.0, 3.0, 6.0]], dtype=np.float32)[:, :, None]  # 1 x 3
    # Scale 4/3: 4 x 1 output... width round(3 * 4/3) = 4, height round(4/3) = 1.
    # Source x: (dx + 0.5) * 0.75 - 0.5 = -0.125, 0.625, 1.375, 2.125.
    out = resize_bilinear(image, 4.0 / 3.0)
    assert out.shape == (1, 4, 1)
    np.testing.assert_allclose(out[0, :, 0], [0.0, 1.875, 4.125, 6.0], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [((270, 480), 600 / 270, (600, 1067)), ((4, 5), 1.5, (6, 8)), ((4, 7), 1.5, (6, 10))],
)
def test_output_size_rounds_half_to_even(
    size: tuple[int, int], scale: float, expected: tuple[int, int]
) -> None:
    # 5 * 1.5 = 7.5 -> 8 and 7 * 1.5 = 10.5 -> 10 (OpenCV's cvRound, half to even).
    out = resize_bilinear(np.zeros((*size, 1), dtype=np.float32), scale)
    assert out.shape[:2] == expected


def test_prepare_frame_flips_to_bgr_and_subtracts_means() -> None:
    rgb = np.zeros((3, 5, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50  # R, G, B
    out, scale = prepare_frame(rgb)
    assert scale == 200.0 and out.shape == (600, 1000, 3)  # short side 3 -> 600, no 1000 cap
    expected = np.array([50, 100, 200], dtype=np.float32) - PIXEL_MEANS.astype(np.float32)
    np.testing.assert_allclose(out[0, 0], expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(out[-1, -1], expected, rtol=0, atol=1e-4)


def test_prepare_frames_pads_and_takes_the_first_scale() -> None:
    frames = [np.zeros((6, 8, 3), np.uint8), np.zeros((5, 10, 3), np.uint8)]
    images, im_info = prepare_frames(frames)
    # 6x8 -> scale 100 -> 600x800; 5x10 -> scale 120 -> 600x1200; padded to 600x1200.
    assert images.shape == (2, 3, 600, 1200)
    np.testing.assert_allclose(im_info.numpy(), [[600, 1200, 100.0], [600, 1200, 100.0]])
    assert float(images[0, :, :, 800:].abs().max()) == 0.0  # zero padding right of frame 0

"""Frame preprocessing of the Action Genome detector, exactly as STTran's data loader.

STTran (``dataloader/action_genome.py`` with ``fasterRCNN/lib/model/utils/blob.py``) reads each
frame as RGB ``uint8``, flips it to BGR, converts to float32, subtracts the Caffe pixel means
:data:`PIXEL_MEANS` (BGR), and resizes it with OpenCV's bilinear ``cv2.resize(im, None, fx=s,
fy=s)`` where ``s = 600 / short side``. The original's cap of the long side at 1000 pixels is
commented out there, so it is not applied here either (a 480x270 AG frame becomes 1067x600).
Frames of a video are zero-padded to the largest size into one ``[B, 3, H, W]`` batch, and
``im_info`` is ``(H, W, s)`` of the batch with the scale of the video's first frame.

:func:`resize_bilinear` reproduces ``cv2.resize`` with ``INTER_LINEAR`` on float32 images
(OpenCV is not a dependency): output size ``round(w * s)`` (half to even), and for output column
``x`` the source coordinate ``float32((x + 0.5) / s - 0.5)`` computed in float64 and then rounded to
float32 as OpenCV does; its floor is the left neighbour, the remainder the weight; coordinates
before the first or after the last pixel take that pixel. Columns are interpolated first, then
rows, in float32 (rows outside the image are the clipped row, read with both weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PIXEL_MEANS",
    "SHORT_SIDE",
    "prepare_frame",
    "prepare_frames",
    "resize_bilinear",
    "resize_scale",
]

#: Caffe ImageNet means in BGR order, subtracted from 0..255 pixel values.
PIXEL_MEANS = np.array([102.9801, 115.9465, 122.7717], dtype=np.float64)
#: Target length of the short side.
SHORT_SIDE = 600


def resize_scale(height: int, width: int, short_side: int = SHORT_SIDE) -> float:
    """The scale that takes the short side to ``short_side`` (a Python float, as the original)."""
    return float(short_side) / float(min(height, width))


def _axis_taps(
    source: int, target: int, scale: float, clamp_weight: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source index and the float32 weight of the upper one, per output index.

    OpenCV zeroes the weight of a column before the first or past the last source column
    (``clamp_weight``) but keeps the weight of such a row and reads the clipped row twice.
    """
    inverse = 1.0 / scale
    pos = ((np.arange(target, dtype=np.float64) + 0.5) * inverse - 0.5).astype(np.float32)
    lower = np.floor(pos).astype(np.int64)
    frac = (pos - lower.astype(np.float32)).astype(np.float32)
    if clamp_weight:
        below = lower < 0
        frac[below], lower[below] = 0.0, 0
        above = lower >= source - 1
        frac[above], lower[above] = 0.0, source - 1
    upper = np.clip(lower + 1, 0, source - 1)
    return np.clip(lower, 0, source - 1), upper, frac


def resize_bilinear(image: np.ndarray, scale: float) -> np.ndarray:
    """``cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)`` for float32.

    ``image`` is ``[H, W, C]`` float32; the result is ``[round(H s), round(W s), C]`` float32.
    """
    height, width = image.shape[:2]
    out_h = int(np.rint(height * scale))
    out_w = int(np.rint(width * scale))
    image = np.asarray(image, dtype=np.float32)
    x0, x1, fx = _axis_taps(width, out_w, scale, clamp_weight=True)
    y0, y1, fy = _axis_taps(height, out_h, scale, clamp_weight=False)
    wx = fx[None, :, None]
    rows = image[:, x0] * (np.float32(1) - wx) + image[:, x1] * wx  # [H, out_w, C]
    wy = fy[:, None, None]
    return rows[y0] * (np.float32(1) - wy) + rows[y1] * wy


def prepare_frame(rgb: np.ndarray, short_side: int = SHORT_SIDE) -> tuple[np.ndarray, float]:
    """One RGB ``uint8`` frame ``[H, W, 3]`` -> (BGR mean-subtracted resized float32, scale)."""
    bgr = np.asarray(rgb)[:, :, ::-1].astype(np.float32)
    bgr -= PIXEL_MEANS  # float32 minus float64 means, stored back as float32 (as the original)
    scale = resize_scale(bgr.shape[0], bgr.shape[1], short_side)
    return resize_bilinear(bgr, scale), scale


def prepare_frames(
    frames: Sequence[np.ndarray], short_side: int = SHORT_SIDE
) -> tuple[Tensor, Tensor]:
    """RGB ``uint8`` frames -> images ``[B, 3, H, W]`` float32 and ``im_info`` ``[B, 3]``.

    Frames of different sizes are zero-padded at the bottom and right to the largest; every
    row of ``im_info`` is ``(H, W, scale of the first frame)``, the original's batch rule.
    """
    if not frames:
        raise ValueError("prepare_frames: no frames")
    prepared = [prepare_frame(frame, short_side) for frame in frames]
    height = max(im.shape[0] for im, _ in prepared)
    width = max(im.shape[1] for im, _ in prepared)
    blob = np.zeros((len(prepared), height, width, 3), dtype=np.float32)
    for i, (im, _) in enumerate(prepared):
        blob[i, : im.shape[0], : im.shape[1]] = im
    info = np.array([[height, width, prepared[0][1]]], dtype=np.float32).repeat(len(frames), 0)
    return torch.from_numpy(blob).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(info)

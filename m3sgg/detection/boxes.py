"""Box arithmetic of the Faster R-CNN detector: anchors, delta decoding, clipping, union boxes.

Conventions of the original (jwyang's faster-rcnn.pytorch, itself from Girshick's py-faster-rcnn):
boxes are ``(x1, y1, x2, y2)`` in pixels and a box's size counts both end pixels
(``w = x2 - x1 + 1``). A delta ``(dx, dy, dw, dh)`` moves the centre ``(x1 + w/2, y1 + h/2)`` by
``(dx w, dy h)`` and scales the size by ``(exp dw, exp dh)``; the decoded box is
``centre -/+ size / 2`` (so a zero delta returns ``(x1, y1, x2 + 1, y2 + 1)``, the original's rule).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ANCHOR_RATIOS",
    "ANCHOR_SCALES",
    "BBOX_STDS",
    "base_anchors",
    "clip_boxes",
    "decode_boxes",
    "shifted_anchors",
    "union_boxes",
]

#: Anchor scales (multiples of the 16-pixel base) and aspect ratios of the AG detector's config.
ANCHOR_SCALES: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0)
ANCHOR_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
#: The standard deviations the class-specific box deltas were normalised by in training.
BBOX_STDS: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)


def _anchor_from_size(ws: np.ndarray, hs: np.ndarray, cx: float, cy: float) -> np.ndarray:
    return np.stack(
        [cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)],
        axis=1,
    )


def base_anchors(
    base_size: int = 16,
    ratios: Sequence[float] = ANCHOR_RATIOS,
    scales: Sequence[float] = ANCHOR_SCALES,
) -> Tensor:
    """The ``len(ratios) * len(scales)`` anchors at cell (0, 0), ratio-major: ``[A, 4]`` float32.

    Each ratio ``r`` reshapes the ``base_size``-square window (centre ``(base - 1) / 2``) to
    ``w = round(sqrt(base^2 / r))``, ``h = round(w r)`` (round half to even, as numpy), then
    each scale multiplies both sides. With the defaults of Faster R-CNN (scales 8, 16, 32) the
    first anchor is ``(-83, -39, 100, 56)``.
    """
    side = float(base_size)
    centre = 0.5 * (side - 1)
    rows = []
    for ratio in ratios:
        w = np.round(np.sqrt(side * side / ratio))
        h = np.round(w * ratio)
        ws = w * np.asarray(scales, dtype=np.float64)
        hs = h * np.asarray(scales, dtype=np.float64)
        rows.append(_anchor_from_size(ws, hs, centre, centre))
    return torch.from_numpy(np.concatenate(rows, axis=0)).float()


def shifted_anchors(anchors: Tensor, height: int, width: int, stride: int) -> Tensor:
    """Anchors at every cell of an ``height x width`` map: ``[H * W * A, 4]``.

    Order: cell by cell in row-major order (y outer, x inner), the ``A`` anchors of a cell
    together, the layout of the RPN's outputs after ``permute(0, 2, 3, 1)``.
    """
    ys = torch.arange(height, device=anchors.device, dtype=anchors.dtype) * stride
    xs = torch.arange(width, device=anchors.device, dtype=anchors.dtype) * stride
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
    return (anchors[None] + shifts).reshape(-1, 4)


def decode_boxes(boxes: Tensor, deltas: Tensor) -> Tensor:
    """Apply deltas to boxes: ``boxes [..., 4]``, ``deltas [..., 4 k]`` -> ``[..., 4 k]``.

    Each box takes ``k`` deltas (``k = 1`` for the RPN, ``k = classes`` for the class-specific
    regression), in the original's arithmetic (see the module docstring).
    """
    widths = (boxes[..., 2] - boxes[..., 0] + 1.0)[..., None]
    heights = (boxes[..., 3] - boxes[..., 1] + 1.0)[..., None]
    ctr_x = boxes[..., 0:1] + 0.5 * widths
    ctr_y = boxes[..., 1:2] + 0.5 * heights
    dx, dy, dw, dh = deltas[..., 0::4], deltas[..., 1::4], deltas[..., 2::4], deltas[..., 3::4]
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    out = torch.stack(
        [
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w,
            pred_ctr_y + 0.5 * pred_h,
        ],
        dim=-1,
    )
    return out.reshape(deltas.shape)


def clip_boxes(boxes: Tensor, height: Tensor | float, width: Tensor | float) -> Tensor:
    """Clamp every xyxy quadruple of ``boxes [..., 4 k]`` into ``[0, width-1] x [0, height-1]``.

    ``height`` and ``width`` are numbers or tensors that broadcast against ``boxes[..., 0]``
    (e.g. ``[B, 1]`` for ``[B, R, 4 k]`` boxes: one image size per batch row).
    """
    shape = boxes.shape
    quads = boxes.reshape(*shape[:-1], -1, 4)
    x_max = (torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device) - 1)[..., None, None]
    y_max = (torch.as_tensor(height, dtype=boxes.dtype, device=boxes.device) - 1)[..., None, None]
    xs = torch.minimum(quads[..., 0::2].clamp(min=0), x_max)
    ys = torch.minimum(quads[..., 1::2].clamp(min=0), y_max)
    out = torch.stack([xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]], dim=-1)
    return out.reshape(shape)


def union_boxes(boxes: Tensor, pairs: Tensor) -> Tensor:
    """Smallest box holding both boxes of each pair: boxes [N, 4], pairs [P, 2] -> [P, 4]."""
    first, second = boxes[pairs[:, 0]], boxes[pairs[:, 1]]
    return torch.cat(
        [torch.minimum(first[:, :2], second[:, :2]), torch.maximum(first[:, 2:], second[:, 2:])],
        dim=1,
    )

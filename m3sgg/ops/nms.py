"""Greedy non-maximum suppression in plain torch, by the rule of the Faster R-CNN kernels.

The Action Genome detector and STTran's sgdet post-processing suppress boxes with the NMS of
jwyang's faster-rcnn.pytorch (its CUDA kernel). That rule, which :func:`nms` follows:

* boxes are ``(x1, y1, x2, y2)`` in pixels and sizes count both end pixels: ``w = x2 - x1 + 1``;
* ``IoU = inter / (area_a + area_b - inter)`` in the boxes' dtype, with ``inter = max(0, w) *
  max(0, h)`` of the intersection;
* boxes are visited by descending score (ties: lower index first); a box is suppressed when its IoU
  with an earlier *kept* box is strictly greater than ``threshold``;
* the kept indices are returned in ascending order of index.

Implementation: boxes in score order are taken in blocks of :data:`BLOCK`. A block first loses
the boxes that a box kept in an earlier block suppresses (one ``[block, kept]`` IoU matrix), then
the greedy rule runs inside the block as a fixed point: with ``M[i, j] = IoU(i, j) > threshold``
for ``i < j``, box ``j`` is kept iff no kept ``i < j`` has ``M[i, j]``; starting from "all kept",
each vectorized sweep ``keep = ~(M.T @ keep)`` fixes at least one more position in order, and the
sweeps stop when nothing changes. The result is exactly the sequential greedy one. With
``max_kept`` the blocks stop once that many boxes are kept (the region proposal layer needs only
its top 100 of 6000), so memory and time stay far below the ``[n, n]`` matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BLOCK", "box_iou_plus_one", "nms"]

#: Boxes per block of the greedy pass (see the module docstring).
BLOCK = 512


def box_iou_plus_one(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU ``[len(a), len(b)]`` of xyxy boxes, ``+1`` pixel sizes (the kernels' rule)."""
    left = torch.maximum(a[:, None, 0], b[None, :, 0])
    right = torch.minimum(a[:, None, 2], b[None, :, 2])
    top = torch.maximum(a[:, None, 1], b[None, :, 1])
    bottom = torch.minimum(a[:, None, 3], b[None, :, 3])
    zero = a.new_zeros(())
    inter = torch.maximum(right - left + 1, zero) * torch.maximum(bottom - top + 1, zero)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _greedy_block(boxes: Tensor, threshold: float) -> Tensor:
    """Kept mask of score-ordered ``boxes`` by the greedy rule, as a fixed point."""
    over = box_iou_plus_one(boxes, boxes) > threshold
    over = torch.triu(over, diagonal=1).to(torch.float32)  # [i, j]: earlier i suppresses j
    keep = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    while True:
        new_keep = ~((keep.to(torch.float32) @ over) > 0)
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep


def nms(boxes: Tensor, scores: Tensor, threshold: float, max_kept: int | None = None) -> Tensor:
    """Indices (int64, ascending) of the boxes that greedy NMS keeps; see the module docstring.

    Args:
        boxes: ``[n, 4]`` xyxy boxes (float).
        scores: ``[n]`` scores; higher is visited first.
        threshold: suppress when IoU with a kept, higher-scoring box is ``> threshold``.
        max_kept: keep only the first ``max_kept`` kept boxes in score order (``None``: all).

    Raises:
        ValueError: shapes that do not match.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"nms: boxes must be [n, 4], got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms: scores must be [{boxes.shape[0]}], got {tuple(scores.shape)}")
    n = boxes.shape[0]
    if n == 0 or max_kept == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    ordered = boxes[order]
    kept: list[Tensor] = []  # positions in ``ordered``, in score order
    count = 0
    for start in range(0, n, BLOCK):
        block = ordered[start : start + BLOCK]
        alive = torch.ones(block.shape[0], dtype=torch.bool, device=boxes.device)
        if kept:
            earlier = ordered[torch.cat(kept)]
            alive = ~(box_iou_plus_one(earlier, block) > threshold).any(dim=0)
        positions = alive.nonzero().flatten()
        if positions.numel() > 0:
            keep = _greedy_block(block[positions], threshold)
            kept.append(positions[keep] + start)
            count += int(keep.sum())
        if max_kept is not None and count >= max_kept:
            break
    if not kept:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    positions = torch.cat(kept)
    if max_kept is not None:
        positions = positions[:max_kept]
    return torch.sort(order[positions]).values

"""What STTran's detector wrapper (``lib/object_detector.py``) produces, per mode.

* predcls / sgcls (:func:`gt_box_outputs`): the ground-truth boxes of each frame are scaled by
  the frame's ``im_info`` scale, RoIAligned 7x7 on the base map and run through the layer4
  head (one feature per box); for sgcls also the detector's class distribution over the 36
  object classes (softmax of ``cls_score`` with the background logit left out).
* union maps (:func:`union_maps`): each pair's union box (scaled the same way), RoIAligned 7x7
  on the base map, ``[P, base_channels, 7, 7]``.
* sgdet (:func:`detect`): the class-specific boxes of the 100 proposals, then per class
  ``j = 1..36``: the proposals whose probability of ``j`` is ``> score_threshold`` (0.1), sorted
  by it, NMS at ``nms_threshold`` (0.4); for ``person`` only the best kept box survives, for the
  other classes every kept box, classes in ascending order. Boxes are divided by the scale back
  into frame pixels and clamped at 0. Then, as the original's evaluation branch, the labels and
  scores are re-taken from the arg-max of the box's class distribution (not the class under
  which it survived NMS). The original's quirk is kept: it clips the decoded boxes to the image
  only for the first frame of each chunk of 10 frames of a video (``clip_boxes(..., 1)`` on a
  chunk), so a frame is clipped iff its index in the video is a multiple of ``clip_every``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from m3sgg.detection.boxes import BBOX_STDS, clip_boxes, decode_boxes, union_boxes
from m3sgg.detection.faster_rcnn import ActionGenomeDetector
from m3sgg.ops.nms import nms

__all__ = [
    "FrameDetections",
    "GTBoxOutputs",
    "SgdetRules",
    "all_pairs",
    "detect",
    "gt_box_outputs",
    "union_maps",
]


class SgdetRules(NamedTuple):
    """The sgdet post-processing constants of ``lib/object_detector.py``."""

    score_threshold: float = 0.1
    nms_threshold: float = 0.4
    clip_every: int = 10


class GTBoxOutputs(NamedTuple):
    """Features of given boxes: ``features`` ``[N, D]``; ``class_dists`` ``[N, 36]`` or None."""

    features: Tensor
    class_dists: Tensor | None


class FrameDetections(NamedTuple):
    """The sgdet detections of one frame (``k`` boxes), boxes in frame pixels.

    Attributes:
        boxes: ``[k, 4]`` xyxy, clamped at 0.
        nms_labels: ``[k]`` the class under which each box survived NMS (1..36).
        nms_scores: ``[k]`` that class's probability.
        features: ``[k, D]`` box features (of the proposal the box came from).
        class_dists: ``[k, 36]`` softmax over the object classes (background left out).
        labels: ``[k]`` arg-max class of ``class_dists`` (1..36), the original's ``pred_labels``.
        scores: ``[k]`` its probability.
    """

    boxes: Tensor
    nms_labels: Tensor
    nms_scores: Tensor
    features: Tensor
    class_dists: Tensor
    labels: Tensor
    scores: Tensor


def _scaled_rois(boxes: Tensor, frame_index: Tensor, scale: Tensor) -> Tensor:
    """``(b, x1, y1, x2, y2)`` rows in resized pixels (float32 products, as the original)."""
    scaled = boxes.to(torch.float32) * scale.to(torch.float32)
    return torch.cat([frame_index.to(torch.float32)[:, None], scaled], dim=1)


def gt_box_outputs(
    detector: ActionGenomeDetector,
    base: Tensor,
    boxes: Tensor,
    frame_index: Tensor,
    scale: Tensor,
    class_dists: bool = False,
) -> GTBoxOutputs:
    """Box features (and class distributions) of ``boxes`` ``[N, 4]`` in frame pixels.

    ``frame_index`` ``[N]`` says which map of ``base`` ``[B, C, h, w]`` each box is on; ``scale``
    is the ``im_info`` scale (a 0-d tensor).
    """
    rois = _scaled_rois(boxes, frame_index, scale).to(base.device)
    features = detector.box_features(base, rois)
    dists = detector.class_distributions(features) if class_dists else None
    return GTBoxOutputs(features, dists)


def union_maps(
    detector: ActionGenomeDetector,
    base: Tensor,
    boxes: Tensor,
    frame_index: Tensor,
    pairs: Tensor,
    scale: Tensor,
) -> Tensor:
    """RoIAlign maps ``[P, C, 7, 7]`` of each pair's union box; ``pairs`` index ``boxes``."""
    rois = _scaled_rois(boxes, frame_index, scale)
    united = union_boxes(rois[:, 1:], pairs)
    union_rois = torch.cat([rois[pairs[:, 0], :1], united], dim=1).to(base.device)
    return detector.pool(base, union_rois)


def all_pairs(count: int, device: torch.device | str = "cpu") -> Tensor:
    """Every unordered pair ``(i, j)``, ``i < j``, of ``count`` boxes, row-major: ``[P, 2]``."""
    first, second = torch.triu_indices(count, count, offset=1, device=device)
    return torch.stack([first, second], dim=1)


def detect(
    detector: ActionGenomeDetector,
    images: Tensor,
    im_info: Tensor,
    first_frame: int = 0,
    rules: SgdetRules | None = None,
) -> tuple[list[FrameDetections], Tensor]:
    """sgdet detections of a batch of consecutive frames of one video, and its base maps.

    ``first_frame`` is the index in the video of ``images[0]`` (it decides which frames the
    original clips, see the module docstring).
    """
    rules = rules or SgdetRules()
    out = detector(images, im_info)
    batch, count = out.rois.shape[:2]
    num_classes = out.class_probs.shape[2]
    stds = torch.tensor(BBOX_STDS, dtype=out.box_deltas.dtype, device=out.box_deltas.device)
    deltas = (out.box_deltas.reshape(batch, count, num_classes, 4) * stds).reshape(batch, count, -1)
    boxes = decode_boxes(out.rois[:, :, 1:5], deltas)  # [B, R, 4 C]
    clipped = clip_boxes(boxes, im_info[:1, 0:1], im_info[:1, 1:2])
    frames = torch.arange(batch, device=boxes.device) + first_frame
    clip = (frames % rules.clip_every == 0)[:, None, None]
    boxes = torch.where(clip, clipped, boxes) / im_info[0, 2].to(boxes.dtype)
    results = []
    for i in range(batch):
        results.append(
            _frame_detections(detector, out.class_probs[i], boxes[i], out.features[i], rules)
        )
    return results, out.base


def _frame_detections(
    detector: ActionGenomeDetector,
    probs: Tensor,
    boxes: Tensor,
    features: Tensor,
    rules: SgdetRules,
) -> FrameDetections:
    """Per-class NMS of one frame (see the module docstring)."""
    count, num_classes = probs.shape
    class_boxes = boxes.reshape(count, num_classes, 4)
    candidate = probs[:, 1:] > rules.score_threshold  # [R, C-1]
    kept_rois, kept_classes = [], []
    for j in (candidate.any(dim=0).nonzero().flatten() + 1).tolist():
        inds = candidate[:, j - 1].nonzero().flatten()
        order = torch.sort(probs[inds, j], descending=True, stable=True).indices
        inds = inds[order]
        keep = nms(class_boxes[inds, j], probs[inds, j], rules.nms_threshold)
        if j == 1:
            keep = keep[:1]  # only the best person survives
        kept_rois.append(inds[keep])
        kept_classes.append(torch.full_like(keep, j))
    roi = torch.cat(kept_rois) if kept_rois else torch.zeros(0, dtype=torch.long)
    cls = torch.cat(kept_classes) if kept_classes else torch.zeros(0, dtype=torch.long)
    roi, cls = roi.to(probs.device), cls.to(probs.device)
    cand_boxes = class_boxes[roi, cls]
    cand_scores = probs[roi, cls]
    feats = features[roi]
    dists = detector.class_distributions(feats)
    scores, labels = dists.max(dim=1)
    return FrameDetections(
        boxes=cand_boxes.clamp(min=0),
        nms_labels=cls,
        nms_scores=cand_scores,
        features=feats,
        class_dists=dists,
        labels=labels + 1,
        scores=scores,
    )

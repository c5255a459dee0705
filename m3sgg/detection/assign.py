"""sgdet training inputs as STTran's detector wrapper builds them (``assign_relations`` + SUPPLY).

In sgdet training STTran does not train on the ground-truth boxes: it runs the detector, matches
its detections to the ground truth of each frame, and "supplies" the ground-truth boxes the
detector missed. Per frame, as ``lib/funcs.py:assign_relations`` and the training branch of
``lib/object_detector.py`` do (the ground truth is the person box, then the visible objects in
annotation order; IoU with +1 pixel sizes):

1. every detection whose best IoU with a ground-truth box is ``> 0.5`` takes that box's class as
   its *assigned label* (0 otherwise);
2. the person, then each object in order, is *found* when some detection overlaps it with IoU
   ``> threshold`` (0.5): the best such detection, or for an object whose best detection was
   already taken, the next best one by IoU that is not taken (even below the threshold; if all
   are taken, the best one again). A found object's detection gets the object's class as its
   assigned label. Not found: the box is *supplied*;
3. the frame's boxes are its detections, then the supplied ground-truth boxes (their features
   pooled on the frame's base map like ground-truth boxes, label = the ground-truth class,
   score 1);
4. the relation entries are the found ground-truth boxes (in order), then the supplied ones; the
   subject of every pair is the box at the *position of the person among those entries* (the
   original's ``localhuman``: usually box 0, the best person detection, and not always the box
   matched to the person; kept as is), the object of pair ``m`` is the box found for (or
   supplied for) entry ``m``, and its relation targets are those of entry ``m``'s ground truth.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from m3sgg.data.collate import box_iou
from m3sgg.detection.faster_rcnn import ActionGenomeDetector
from m3sgg.detection.modes import FrameDetections

__all__ = ["FrameAssignment", "TrainingFrame", "assign_frame", "box_overlaps", "training_frame"]


#: IoU ``[len(boxes), len(query)]`` (float64) with +1 pixel sizes, 0 without overlap: the Cython
#: ``bbox_overlaps`` formula, which the collate's sgdet assignment uses too.
box_overlaps = box_iou


class FrameAssignment(NamedTuple):
    """Matches of one frame: ``found`` ``(gt index, detection index)`` pairs in order, the
    ``supplied`` gt indices, and ``assigned_labels`` ``[k]`` of the detections (0: none)."""

    found: list[tuple[int, int]]
    supplied: list[int]
    assigned_labels: np.ndarray


def assign_frame(
    det_boxes: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, threshold: float = 0.5
) -> FrameAssignment:
    """Steps 1-2 of the module docstring for one frame (``gt_boxes[0]`` is the person)."""
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, dtype=np.int64)
    labels = np.zeros(det_boxes.shape[0], dtype=np.int64)
    found: list[tuple[int, int]] = []
    supplied: list[int] = []
    if det_boxes.shape[0] == 0:
        return FrameAssignment(found, list(range(len(gt_labels))), labels)
    ious = box_iou(det_boxes, gt_boxes)
    best = ious.max(axis=1) > 0.5
    labels[best] = gt_labels[ious.argmax(axis=1)][best]
    taken: list[int] = []
    for m in range(len(gt_labels)):
        if not (ious[:, m] > threshold).any():
            supplied.append(m)
            continue
        candidate = int(ious[:, m].argmax())
        if m > 0:
            if candidate in taken:
                for c in np.argsort(-ious[:, m]).tolist():  # numpy default sort, as the original
                    if c not in taken:
                        candidate = c
                        break
            labels[candidate] = gt_labels[m]
        found.append((m, candidate))
        taken.append(candidate)
    return FrameAssignment(found, supplied, labels)


class TrainingFrame(NamedTuple):
    """One frame's sgdet training inputs (``n`` boxes, ``P`` pairs).

    Attributes:
        boxes: ``[n, 4]`` float32 frame pixels: detections, then supplied ground-truth boxes.
        labels: ``[n]`` assigned labels (0: matched to nothing).
        scores: ``[n]`` NMS-class scores of the detections, 1 for supplied boxes.
        features: ``[n, D]``.
        class_dists: ``[n, 36]`` the detector's distributions of those features.
        pairs: ``[P, 2]`` frame-local ``(subject, object)``.
        pair_targets: ``[P]`` index of the pair's ground-truth object in the frame's annotation
            (0 is the person, 1.. the visible objects in order).
    """

    boxes: Tensor
    labels: Tensor
    scores: Tensor
    features: Tensor
    class_dists: Tensor
    pairs: Tensor
    pair_targets: Tensor


def training_frame(
    detector: ActionGenomeDetector,
    base: Tensor,
    scale: Tensor,
    detections: FrameDetections,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    threshold: float = 0.5,
) -> TrainingFrame:
    """Steps 1-4 of the module docstring; ``base`` is the frame's map ``[1, C, h, w]``."""
    det_boxes = detections.boxes
    match = assign_frame(det_boxes.detach().cpu().numpy(), gt_boxes, gt_labels, threshold)
    k = det_boxes.shape[0]
    device = det_boxes.device
    supplied = match.supplied
    boxes, features = det_boxes.to(torch.float32), detections.features
    labels = torch.as_tensor(match.assigned_labels, device=device)
    scores = detections.nms_scores
    if supplied:
        scale32 = scale.to(torch.float32).to(device)
        scaled = (
            torch.as_tensor(np.asarray(gt_boxes)[supplied], dtype=torch.float32).to(device)
            * scale32
        )
        rois = torch.cat([scaled.new_zeros(len(supplied), 1), scaled], dim=1)
        extra = detector.box_features(base, rois).to(features.dtype)
        boxes = torch.cat([boxes, scaled / scale32])
        features = torch.cat([features, extra])
        supplied_labels = torch.as_tensor(np.asarray(gt_labels)[supplied], device=device)
        labels = torch.cat([labels, supplied_labels.to(labels.dtype)])
        scores = torch.cat([scores, scores.new_ones(len(supplied))])
    entries = [m for m, _ in match.found] + supplied
    objects = [d for _, d in match.found] + list(range(k, k + len(supplied)))
    subject = entries.index(0)  # position of the person among the entries (see step 4)
    pairs = [(subject, objects[m]) for m, gt in enumerate(entries) if gt != 0]
    targets = [gt for gt in entries if gt != 0]
    return TrainingFrame(
        boxes=boxes,
        labels=labels.to(torch.int64),
        scores=scores,
        features=features,
        class_dists=detector.class_distributions(features),
        pairs=torch.tensor(pairs, dtype=torch.int64, device=device).reshape(-1, 2),
        pair_targets=torch.tensor(targets, dtype=torch.int64, device=device),
    )

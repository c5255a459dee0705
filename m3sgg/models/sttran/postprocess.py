"""sgdet evaluation: the detections STTran relates, as its ``ObjectClassifier`` picks them.

In sgdet evaluation the original (``lib/sttran.py``, ``ObjectClassifier.forward``, sgdet branch)
does not use its classifier's weights: from the detector's distributions over classes 1..36 it

1. ``clean_class`` for classes 5, 8 and 17, in that order: every box whose label (the detector's
   arg-max class) is the class gets a copy, appended after its frame's boxes, whose distribution
   has that class zeroed and whose label is the arg-max of what is left;
2. per frame and per arg-max class, greedy NMS at IoU 0.6 in descending score (kept boxes ordered
   by frame, class, score);
3. labels = the best object class (2..36), scores its probability; the most person-like box of
   each frame (first on ties) becomes the person (label 1, its person probability);
4. pairs (the frame's person, every box not labelled person), in box order.

:func:`sgdet_boxes` does this for a whole batch at once; ``source`` maps every kept box back to
its detection (its box, feature and union-table row), and :meth:`SgdetBoxes.predictions` gives
the metric's keys for them. :func:`box_predictions` gives those keys for predictions on the
batch's own boxes (predcls, sgcls, sgdet training).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from m3sgg.ops.nms import nms

if TYPE_CHECKING:
    from m3sgg.data.collate import Batch

__all__ = [
    "CLEAN_CLASSES",
    "NMS_THRESHOLD",
    "SgdetBoxes",
    "box_predictions",
    "person_pairs",
    "sgdet_boxes",
]

#: The classes ``clean_class`` duplicates, in the original's order.
CLEAN_CLASSES = (5, 8, 17)
#: IoU above which the classifier's NMS suppresses a box of the same arg-max class.
NMS_THRESHOLD = 0.6


class SgdetBoxes(NamedTuple):
    """The boxes STTran relates in sgdet evaluation (``M`` boxes, ``Q`` pairs).

    Attributes:
        source: int64 ``[M]`` the detection each box is (a copy of).
        frame: int64 ``[M]`` batch-level frame, non-decreasing.
        dist: ``[M, C - 1]`` the distributions (with ``clean_class``'s zeroed entries).
        labels, scores: ``[M]`` the predicted classes (1 for each frame's person) and scores.
        pair_idx: int64 ``[Q, 2]`` (person, object) indices into these boxes.
        im_idx: int64 ``[Q]`` frame of each pair.
    """

    source: torch.Tensor
    frame: torch.Tensor
    dist: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    pair_idx: torch.Tensor
    im_idx: torch.Tensor

    def predictions(self, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """The metric's box and pair keys (``docs/metrics.md``) for these boxes: ``boxes`` (the
        rows of the batch's ``boxes`` ``[N, 5]`` they are copies of), ``labels``/``scores`` and
        ``pred_labels``/``pred_scores`` (both the predicted ones: detections have no given
        class), ``im_idx``, ``pair_idx`` and ``object_distribution``."""
        return {
            "boxes": boxes[self.source],
            "labels": self.labels,
            "scores": self.scores,
            "pred_labels": self.labels,
            "pred_scores": self.scores,
            "im_idx": self.im_idx,
            "pair_idx": self.pair_idx,
            "object_distribution": self.dist,
        }


def box_predictions(
    batch: Batch,
    pred_labels: torch.Tensor | None = None,
    pred_scores: torch.Tensor | None = None,
    pair_idx: torch.Tensor | None = None,
    im_idx: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The metric's box and pair keys (``docs/metrics.md``) for predictions on the batch's own
    boxes: ``boxes``, ``labels`` and ``scores`` as given, ``pred_labels``/``pred_scores`` (the
    given labels and scores unless predicted ones are passed) and the pairs ``pair_idx``/
    ``im_idx`` (the batch's unless re-formed ones are passed)."""
    return {
        "boxes": batch.boxes,
        "labels": batch.labels,
        "scores": batch.scores,
        "pred_labels": batch.labels if pred_labels is None else pred_labels,
        "pred_scores": batch.scores if pred_scores is None else pred_scores,
        "im_idx": batch.im_idx if im_idx is None else im_idx,
        "pair_idx": batch.pair_idx if pair_idx is None else pair_idx,
    }


def sgdet_boxes(
    boxes: torch.Tensor,
    frame: torch.Tensor,
    dists: torch.Tensor,
    num_frames: int,
    labels: torch.Tensor | None = None,
) -> SgdetBoxes:
    """The original's sgdet evaluation labelling (module docstring), vectorised over frames.

    Args:
        boxes: ``[N, 4]`` xyxy detections; frame: ``[N]`` their batch-level frames,
            non-decreasing; dists: ``[N, C - 1]`` the distributions over 1..C-1 (STTran: the
            detector's).
        labels: ``[N]`` the labels step 1 (``clean_class``) reads to pick the boxes it copies;
            default the arg-max of ``dists`` + 1 (STTran). TEMPURA passes the detector's labels
            with its own classifier's ``dists``, as its original does; the copies' labels are
            always the arg-max of their zeroed ``dists``.
    """
    device = boxes.device
    source = torch.arange(len(boxes), device=device)
    if labels is None:
        labels = dists.argmax(dim=1) + 1 if len(dists) else frame.new_zeros(0)
    copy = torch.zeros(len(boxes), dtype=torch.long, device=device)
    for step, cls in enumerate(CLEAN_CLASSES, start=1):
        picked = torch.nonzero(labels == cls).squeeze(1)
        extra = dists[picked].clone()
        extra[:, cls - 1] = 0.0
        source = torch.cat([source, source[picked]])
        frame = torch.cat([frame, frame[picked]])
        dists = torch.cat([dists, extra])
        labels = torch.cat([labels, extra.argmax(dim=1) + 1 if len(extra) else labels[:0]])
        copy = torch.cat([copy, torch.full_like(picked, step)])
        # A frame's boxes, then its copies of this step: stable by (frame, step appended).
        order = torch.sort(frame * (len(CLEAN_CLASSES) + 1) + copy, stable=True).indices
        source, frame, dists, labels, copy = (
            source[order],
            frame[order],
            dists[order],
            labels[order],
            torch.zeros_like(copy),
        )
    # Per-frame, per-class NMS; visit order: frame, class, descending score.
    best = dists.argmax(dim=1) if len(dists) else frame.new_zeros(0)
    score = dists.gather(1, best[:, None]).squeeze(1) if len(dists) else dists.new_zeros(0)
    by_score = torch.sort(score, descending=True, stable=True).indices
    key = (frame * dists.shape[1] + best)[by_score]
    order = by_score[torch.sort(key, stable=True).indices]
    kept = order
    if len(order):
        coords = boxes[source[order]].to(torch.float64)
        span = float(coords.abs().max()) * 2 + 4
        group = (frame * dists.shape[1] + best)[order].to(torch.float64)
        shifted = coords + (group * span)[:, None]
        scores_sorted = torch.arange(len(order), 0, -1, device=device, dtype=torch.float64)
        kept = order[nms(shifted, scores_sorted, NMS_THRESHOLD)]
    source, frame, dists = source[kept], frame[kept], dists[kept]
    scores, labels = dists[:, 1:].max(dim=1) if len(dists) else (dists[:, 0], frame)
    labels = labels + 2
    rows = torch.arange(len(kept), device=device)
    person = dists[:, 0]
    top = torch.full((num_frames,), float("-inf"), dtype=person.dtype, device=device)
    top = top.scatter_reduce(0, frame, person, "amax")
    candidate = torch.where(person == top[frame], rows, len(kept))
    human = torch.full((num_frames,), len(kept), dtype=torch.long, device=device)
    human = human.scatter_reduce(0, frame, candidate, "amin")
    has = human < len(kept)
    labels[human[has]] = 1
    scores[human[has]] = dists[human[has], 0]
    objects = torch.nonzero((labels != 1) & has[frame]).squeeze(1)
    pair_idx = torch.stack([human[frame[objects]], objects], dim=1)
    return SgdetBoxes(source, frame, dists, labels, scores, pair_idx, frame[objects])


def person_pairs(
    labels: torch.Tensor, human: torch.Tensor, box_frame: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """STTran's evaluation pairs: (the person box of its frame, box) for every box not labelled
    person, in box order (so grouped by video and frame); returns ``(pair_idx, im_idx)``."""
    objects = torch.nonzero((labels != 1) & (human[box_frame] >= 0)).squeeze(1)
    frame = box_frame[objects]
    return torch.stack([human[frame], objects], dim=1), frame

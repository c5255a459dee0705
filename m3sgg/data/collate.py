"""One or several Action Genome videos → one typed :class:`Batch` of tensors, and back.

Why: models see a whole batch at once (one forward, one masked attention), while the metrics
consume one video at a time with *video-local* indices. :func:`collate` concatenates the videos'
feature-store sections and shifts every index by offsets (numpy, vectorized; the only Python loop
is over videos), and attaches the relation targets. :func:`split_predictions` undoes the offsets on
a model's batch-level predictions and returns ``(VideoGT, prediction dict)`` per video in the key
contract of ``docs/metrics.md``.

Index spaces in a :class:`Batch` (all batch-level):

- frames ``0..F-1``: video ``v`` owns frames ``frame_offsets[v]:frame_offsets[v + 1]``;
- boxes ``0..N-1``: video ``v`` owns ``box_offsets[v]:box_offsets[v + 1]``; ``boxes[:, 0]`` is the
  box's batch-level frame;
- pairs ``0..P-1``: video ``v`` owns ``pair_offsets[v]:pair_offsets[v + 1]`` (contiguous, an
  invariant models may rely on); ``pair_idx`` holds batch-level box indices, ``im_idx`` the
  batch-level frame.

Relation targets:

- ``section="gt"``: the store's ground-truth boxes are, per frame, the person then the visible
  objects in annotation order, and each pair is (person, object ``j``). Pair targets are object
  ``j``'s labels; every pair has targets (``relation_mask`` all true).
- ``section="det"`` (sgdet): each detected box is assigned to the ground-truth box of *its own
  frame* (the person or a visible object) with the highest IoU, computed with the metrics' "+1
  pixel" convention; the assignment holds when that IoU is ≥ 0.5 (ties go to the earlier GT box:
  the person, then objects in annotation order). Assignment is not one-to-one: two detections
  may take the same GT box. A pair gets the labels of the GT *object* its object box is assigned
  to; a pair whose object box is unassigned (or assigned to the person) has no relation targets:
  ``relation_mask`` false, attention ``-1``, spatial/contacting zero, and losses skip it.
  ``object_targets`` holds each box's assigned GT class, or ``-1``.

Example::

    loader = DataLoader(dataset, batch_size=8, collate_fn=collate, pin_memory=True)
    for batch in loader:
        predictions = model(batch.to(device))
        for gt, pred in split_predictions(batch, predictions):
            ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch

from m3sgg.data.batch_fields import ExtraFields
from m3sgg.data.features import union_index
from m3sgg.data.structures import VideoGT
from m3sgg.errors import DataError
from m3sgg.vocab import GROUP_SIZES, PREDICATE_OFFSETS

if TYPE_CHECKING:
    from m3sgg.data.action_genome import VideoSample
    from m3sgg.data.features import VideoFeatures

__all__ = [
    "BOX_PREDICTION_KEYS",
    "PAIR_PREDICTION_KEYS",
    "Batch",
    "box_iou",
    "collate",
    "split_predictions",
]

Section = Literal["gt", "det", "det_train"]

#: Prediction keys with one row per box (cut by ``box_offsets``).
BOX_PREDICTION_KEYS: tuple[str, ...] = ("boxes", "labels", "scores", "pred_labels", "pred_scores")
#: Prediction keys with one row per pair (cut by ``pair_offsets``).
PAIR_PREDICTION_KEYS: tuple[str, ...] = (
    "im_idx",
    "pair_idx",
    "attention_distribution",
    "attention_probabilities",
    "spatial_distribution",
    "contacting_distribution",
)

#: Minimum IoU for a detection to take a ground-truth box's labels (sgdet).
MATCH_IOU = 0.5

_NUM_SPATIAL = GROUP_SIZES["spatial"]
_NUM_CONTACTING = GROUP_SIZES["contacting"]


@dataclass(frozen=True, eq=False)
class Batch(ExtraFields):
    """Several videos' boxes, pairs, features and targets, concatenated with batch-level indices.

    The contract, field by field, is ``docs/batch.md``.

    ``V`` videos, ``F`` frames, ``N`` boxes, ``P`` pairs in all. Offsets are Python ints (no
    device synchronisation to read them).

    Attributes:
        section: ``"gt"`` (ground-truth boxes: predcls, sgcls) or ``"det"`` (detections: sgdet).
        video_ids: ``V`` video ids.
        sample_indices: ``V`` dataset indices of the samples.
        gts: ``V`` ground truths, passed through for the metrics.
        boxes: float32 ``[N, 5]``: batch-level frame index, then x1, y1, x2, y2 in pixels.
        box_video: int64 ``[N]`` video of each box.
        labels: int64 ``[N]``: GT classes for ``gt`` (person 1, then object classes); the
            detector's arg-max class (background excluded) for ``det``.
        scores: float32 ``[N]``: 1 for GT boxes, detection scores for ``det``.
        box_features: float32 ``[N, object_dim]``.
        class_dists: float32 ``[N, C - 1]`` the detector's class probabilities over classes
            ``1..C-1`` (``det``, ``det_train``; ``gt`` when the store has them), else ``None``.
        object_targets: int64 ``[N]`` GT class of each box (``gt``: equal to ``labels``; ``det``:
            the class of the assigned GT box or ``-1``; ``det_train``: the stored assigned
            class, 0 for none).
        pair_idx: int64 ``[P, 2]`` (subject, object) batch-level box indices.
        im_idx: int64 ``[P]`` batch-level frame of each pair.
        pair_video: int64 ``[P]`` video of each pair.
        union_maps: ``[U, C, S, S]`` (the store's dtype): every frame's union table, back to
            back; :meth:`union_rows` finds the row of any box pair of a frame.
        attention: int64 ``[P]`` attention label (0..2) of each pair, ``-1`` when none.
        spatial: float32 ``[P, 6]`` multi-hot spatial labels.
        contacting: float32 ``[P, 17]`` multi-hot contacting labels.
        relation_mask: bool ``[P]``: the pair has relation targets.
        frame_video: int64 ``[F]`` video of each frame.
        frame_box_offsets: int64 ``[F + 1]`` boxes of batch frame ``f``:
            ``frame_box_offsets[f]:frame_box_offsets[f + 1]``.
        frame_union_offsets: int64 ``[F + 1]`` union-table rows of batch frame ``f``.
        union_diagonal: whether the union tables pair each box with itself (``det``).
        frame_offsets, box_offsets, pair_offsets: ``V + 1`` ints each.
        extras: fields plugins add (:func:`m3sgg.data.batch_fields.register_batch_field`);
            tensors among them move with the batch.
    """

    section: str
    video_ids: tuple[str, ...]
    sample_indices: tuple[int, ...]
    gts: tuple[VideoGT, ...]
    boxes: torch.Tensor
    box_video: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    box_features: torch.Tensor
    class_dists: torch.Tensor | None
    object_targets: torch.Tensor
    pair_idx: torch.Tensor
    im_idx: torch.Tensor
    pair_video: torch.Tensor
    union_maps: torch.Tensor
    attention: torch.Tensor
    spatial: torch.Tensor
    contacting: torch.Tensor
    relation_mask: torch.Tensor
    frame_video: torch.Tensor
    frame_box_offsets: torch.Tensor
    frame_union_offsets: torch.Tensor
    union_diagonal: bool
    frame_offsets: tuple[int, ...]
    box_offsets: tuple[int, ...]
    pair_offsets: tuple[int, ...]
    extras: Mapping[str, Any] = field(default_factory=dict)

    _TENSORS: ClassVar[tuple[str, ...]] = (
        "boxes",
        "box_video",
        "labels",
        "scores",
        "box_features",
        "class_dists",
        "object_targets",
        "pair_idx",
        "im_idx",
        "pair_video",
        "union_maps",
        "attention",
        "spatial",
        "contacting",
        "relation_mask",
        "frame_video",
        "frame_box_offsets",
        "frame_union_offsets",
    )

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_frames(self) -> int:
        return self.frame_offsets[-1]

    @property
    def num_boxes(self) -> int:
        return self.box_offsets[-1]

    @property
    def num_pairs(self) -> int:
        return self.pair_offsets[-1]

    @property
    def device(self) -> torch.device:
        return self.boxes.device

    def _map(self, fn: Any) -> Batch:
        changes = {}
        for name in self._TENSORS:
            value = getattr(self, name)
            changes[name] = None if value is None else fn(value)
        return replace(self, **changes, extras=self._mapped_extras(fn))

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """A copy with every tensor on ``device`` (ground truths and offsets stay as they are)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """A copy with every tensor in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        return self._map(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return self.num_videos

    def union_rows(self, pair_idx: torch.Tensor) -> torch.Tensor:
        """Rows of ``union_maps`` holding the union boxes of ``pair_idx`` ``[P, 2]`` (batch-level
        box indices; both boxes of a pair in the same frame, distinct unless
        ``union_diagonal``). Vectorized; no device synchronisation."""
        frame = self.boxes[pair_idx[:, 0], 0].long()
        start = self.frame_box_offsets[frame]
        count = self.frame_box_offsets[frame + 1] - start
        local = pair_idx - start[:, None]
        row = union_index(local[:, 0], local[:, 1], count, self.union_diagonal)
        return self.frame_union_offsets[frame] + row


@dataclass(frozen=True)
class _Part:
    """One video's section with its targets, video-local indices (numpy)."""

    features: VideoFeatures
    labels: np.ndarray
    scores: np.ndarray
    object_targets: np.ndarray
    attention: np.ndarray
    spatial: np.ndarray
    contacting: np.ndarray
    relation_mask: np.ndarray


def collate(samples: Sequence[VideoSample], section: Section = "gt") -> Batch:
    """Concatenate videos into one :class:`Batch` (usable as a ``DataLoader`` ``collate_fn``).

    Args:
        samples: one or more :class:`~m3sgg.data.action_genome.VideoSample` with features.
        section: ``"gt"`` (predcls, sgcls) or ``"det"`` (sgdet); see the module docstring for
            how targets are assigned in each.

    Raises:
        ValueError: no samples or an unknown section.
        DataError: a sample lacks the section, or its features disagree with its ground truth.
    """
    if section not in ("gt", "det", "det_train"):
        raise ValueError(f"section must be 'gt', 'det' or 'det_train', got {section!r}")
    if not samples:
        raise ValueError("collate needs at least one sample")
    parts = [_video_part(sample, section) for sample in samples]

    num_frames = np.array([s.gt.num_frames for s in samples], dtype=np.int64)
    num_boxes = np.array([p.features.num_boxes for p in parts], dtype=np.int64)
    num_pairs = np.array([p.features.num_pairs for p in parts], dtype=np.int64)
    frame_off = np.concatenate([[0], np.cumsum(num_frames)]).astype(np.int64)
    box_off = np.concatenate([[0], np.cumsum(num_boxes)]).astype(np.int64)
    pair_off = np.concatenate([[0], np.cumsum(num_pairs)]).astype(np.int64)
    videos = np.arange(len(samples), dtype=np.int64)
    box_video = np.repeat(videos, num_boxes)
    pair_video = np.repeat(videos, num_pairs)

    def cat(name: str, source: str = "features") -> np.ndarray:
        arrays = [getattr(p.features if source == "features" else p, name) for p in parts]
        return np.concatenate(arrays, axis=0)

    boxes = cat("boxes").astype(np.float32, copy=True)
    boxes[:, 0] += frame_off[:-1][box_video]
    pair_idx = cat("pair_idx").astype(np.int64).reshape(-1, 2) + box_off[:-1][pair_video][:, None]
    im_idx = cat("im_idx").astype(np.int64) + frame_off[:-1][pair_video]
    class_dists = None
    if all(p.features.class_dists is not None for p in parts):
        class_dists = _tensor(cat("class_dists"), np.float32)
    frame_boxes = np.concatenate([p.features.box_counts() for p in parts])
    frame_unions = np.concatenate([np.diff(p.features.union_offsets) for p in parts])
    union_maps = np.concatenate([p.features.union_maps for p in parts], axis=0)

    return Batch(
        section=section,
        video_ids=tuple(s.video_id for s in samples),
        sample_indices=tuple(int(s.index) for s in samples),
        gts=tuple(s.gt for s in samples),
        boxes=_tensor(boxes, np.float32),
        box_video=_tensor(box_video, np.int64),
        labels=_tensor(cat("labels", "part"), np.int64),
        scores=_tensor(cat("scores", "part"), np.float32),
        box_features=_tensor(cat("box_features"), np.float32),
        class_dists=class_dists,
        object_targets=_tensor(cat("object_targets", "part"), np.int64),
        pair_idx=_tensor(pair_idx, np.int64),
        im_idx=_tensor(im_idx, np.int64),
        pair_video=_tensor(pair_video, np.int64),
        union_maps=torch.from_numpy(np.ascontiguousarray(union_maps)),
        attention=_tensor(cat("attention", "part"), np.int64),
        spatial=_tensor(cat("spatial", "part"), np.float32),
        contacting=_tensor(cat("contacting", "part"), np.float32),
        relation_mask=_tensor(cat("relation_mask", "part"), np.bool_),
        frame_video=_tensor(np.repeat(videos, num_frames), np.int64),
        frame_box_offsets=_tensor(_offsets(frame_boxes), np.int64),
        frame_union_offsets=_tensor(_offsets(frame_unions), np.int64),
        union_diagonal=parts[0].features.union_diagonal,
        frame_offsets=tuple(int(x) for x in frame_off),
        box_offsets=tuple(int(x) for x in box_off),
        pair_offsets=tuple(int(x) for x in pair_off),
    )


def split_predictions(
    batch: Batch,
    predictions: Mapping[str, torch.Tensor],
    *,
    box_keys: Sequence[str] = BOX_PREDICTION_KEYS,
    pair_keys: Sequence[str] = PAIR_PREDICTION_KEYS,
    device: torch.device | str | None = "cpu",
) -> list[tuple[VideoGT, dict[str, torch.Tensor]]]:
    """Cut batch-level predictions into ``(VideoGT, dict)`` per video, with video-local indices.

    ``boxes[:, 0]`` and ``im_idx`` become frame indices within the video and ``pair_idx`` box
    indices within the video, as the metrics expect. Keys of ``box_keys``/``pair_keys`` missing
    from ``predictions`` are skipped; keys in neither list are left out. Tensors are detached and
    moved to ``device`` once, before cutting (``None`` keeps them where they are).

    Boxes and pairs: a model may return boxes and pairs of its own (sgcls/sgdet evaluation forms
    them): ``predictions["boxes"]`` (its column 0, the batch-level frame) assigns each box to a
    video, ``predictions["pair_idx"]`` each pair (the video of its subject box); a video's rows
    must be contiguous. Without ``boxes`` (or ``pair_idx``) the batch's are meant.

    Raises:
        ValueError: a listed prediction does not have one row per box (or pair), or the
            predicted pairs are not grouped by video.
    """
    moved: dict[str, torch.Tensor] = {}
    own_boxes = "boxes" in predictions
    num_boxes = predictions["boxes"].shape[0] if own_boxes else batch.num_boxes
    own_pairs = "pair_idx" in predictions
    num_pairs = predictions["pair_idx"].shape[0] if own_pairs else batch.num_pairs
    for keys, rows, what in (
        (box_keys, num_boxes, "box"),
        (pair_keys, num_pairs, "pair"),
    ):
        for key in keys:
            if key not in predictions:
                continue
            value = predictions[key].detach()
            if value.shape[0] != rows:
                raise ValueError(
                    f"prediction {key!r} has {value.shape[0]} rows, expected one per {what} "
                    f"({rows})"
                )
            moved[key] = value if device is None else value.to(device)

    target = device if device is not None else batch.device
    frame_start = torch.tensor(batch.frame_offsets[:-1], dtype=torch.int64, device=target)
    if own_boxes:
        frame_video = batch.frame_video.to(target)
        box_video = frame_video[moved["boxes"][:, 0].long()]
        if bool((box_video[1:] < box_video[:-1]).any()):
            raise ValueError("predicted boxes must be grouped by video (by their frame)")
        box_counts = torch.bincount(box_video, minlength=batch.num_videos).tolist()
    else:
        box_video = batch.box_video.to(target)
        box_counts = np.diff(batch.box_offsets).tolist()
    box_start = torch.tensor(
        np.concatenate([[0], np.cumsum(box_counts)[:-1]]), dtype=torch.int64, device=target
    )
    if "boxes" in moved:
        boxes = moved["boxes"].clone()
        boxes[:, 0] -= frame_start[box_video].to(boxes.dtype)
        moved["boxes"] = boxes
    if own_pairs:
        pair_video = box_video[moved["pair_idx"][:, 0]]
        if bool((pair_video[1:] < pair_video[:-1]).any()):
            raise ValueError("predicted pairs must be grouped by video (by their subject box)")
        pair_counts = torch.bincount(pair_video, minlength=batch.num_videos).tolist()
    else:
        pair_video = batch.pair_video.to(target)
        pair_counts = np.diff(batch.pair_offsets).tolist()
    if "im_idx" in moved:
        moved["im_idx"] = moved["im_idx"] - frame_start[pair_video]
    if "pair_idx" in moved:
        moved["pair_idx"] = moved["pair_idx"] - box_start[pair_video][:, None]

    pieces: dict[str, tuple[torch.Tensor, ...]] = {}
    for key, value in moved.items():
        counts = box_counts if key in box_keys else pair_counts
        pieces[key] = torch.split(value, counts)
    return [
        (gt, {key: chunks[v] for key, chunks in pieces.items()}) for v, gt in enumerate(batch.gts)
    ]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(len(a), len(b))`` of xyxy boxes with the "+1 pixel" convention (float64)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _tensor(array: np.ndarray, dtype: type) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))


def _object_labels(gt: VideoGT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per visible object: attention label (or -1), spatial and contacting multi-hot."""
    num = gt.num_objects
    attention = np.full(num, -1, dtype=np.int64)
    spatial = np.zeros((num, _NUM_SPATIAL), dtype=np.float32)
    contacting = np.zeros((num, _NUM_CONTACTING), dtype=np.float32)
    pred, obj = gt.rel_pred, gt.rel_obj
    s0, c0 = PREDICATE_OFFSETS["spatial"], PREDICATE_OFFSETS["contacting"]
    is_att = pred < s0
    attention[obj[is_att]] = pred[is_att]
    is_sp = (pred >= s0) & (pred < c0)
    spatial[obj[is_sp], pred[is_sp] - s0] = 1.0
    is_co = pred >= c0
    contacting[obj[is_co], pred[is_co] - c0] = 1.0
    return attention, spatial, contacting


def _video_part(sample: VideoSample, section: str) -> _Part:
    features = {"gt": sample.features, "det": sample.det, "det_train": sample.det_train}[section]
    if features is None:
        raise DataError(
            sample.video_id,
            f"the sample has no {section!r} feature section (open the dataset with a feature "
            "store" + (" that holds detections" if section == "det" else "") + ")",
            field=section,
        )
    gt = sample.gt
    if tuple(features.frame_keys) != tuple(gt.frame_keys):
        raise DataError(
            sample.video_id,
            f"the {section!r} features cover frames {list(features.frame_keys)[:3]}... "
            f"({features.num_frames}), the annotations {list(gt.frame_keys)[:3]}... "
            f"({gt.num_frames})",
            field="frame_keys",
        )
    if section == "gt":
        return _gt_part(sample.video_id, gt, features)
    if section == "det_train":
        return _det_train_part(sample.video_id, gt, features)
    return _det_part(sample.video_id, gt, features)


def _gt_part(video_id: str, gt: VideoGT, features: VideoFeatures) -> _Part:
    """Targets of the ground-truth section: person then objects per frame, pairs (person, j)."""
    num_frames = gt.num_frames
    box_frame = features.boxes[:, 0].astype(np.int64)
    box_counts = np.bincount(box_frame, minlength=num_frames)
    obj_counts = np.bincount(gt.obj_frame, minlength=num_frames)
    if (
        box_counts.shape[0] != num_frames
        or np.any(np.diff(box_frame) < 0)
        or not np.array_equal(box_counts, obj_counts + 1)
    ):
        raise DataError(
            video_id,
            "the 'gt' feature boxes must be, frame by frame, the person then each visible object "
            f"({(obj_counts + 1).tolist()} per frame); found {box_counts.tolist()}",
            field="gt.boxes",
        )
    box_start = np.concatenate([[0], np.cumsum(box_counts)[:-1]]).astype(np.int64)
    obj_start = gt.object_offsets()[:-1]
    labels = np.ones(features.num_boxes, dtype=np.int64)
    objects = np.arange(gt.num_objects, dtype=np.int64)
    obj_box = box_start[gt.obj_frame] + 1 + objects - obj_start[gt.obj_frame]
    labels[obj_box] = gt.obj_class

    pair_box = features.pair_idx[:, 1].astype(np.int64)
    pair_frame = box_frame[pair_box]
    local = pair_box - box_start[pair_frame] - 1
    if np.any(local < 0):
        raise DataError(
            video_id,
            "a 'gt' pair's object is the person box; pairs must be (person, object)",
            field="gt.pair_idx",
        )
    pair_obj = obj_start[pair_frame] + local
    attention, spatial, contacting = _object_labels(gt)
    return _Part(
        features=features,
        labels=labels,
        scores=np.ones(features.num_boxes, dtype=np.float32),
        object_targets=labels.copy(),
        attention=attention[pair_obj],
        spatial=spatial[pair_obj],
        contacting=contacting[pair_obj],
        relation_mask=np.ones(features.num_pairs, dtype=bool),
    )


def _det_part(video_id: str, gt: VideoGT, features: VideoFeatures) -> _Part:
    """Detector labels, and targets by IoU ≥ 0.5 assignment to the frame's GT boxes."""
    if features.class_dists is None:
        raise DataError(video_id, "the 'det' section has no class_dists", field="det.class_dists")
    dists = np.asarray(features.class_dists, dtype=np.float32)
    num_boxes, num_pairs = features.num_boxes, features.num_pairs
    if num_boxes:
        labels = np.argmax(dists, axis=1).astype(np.int64) + 1
    else:
        labels = np.zeros(0, dtype=np.int64)
    if features.scores is not None:
        scores = np.asarray(features.scores, dtype=np.float32)
    else:
        scores = dists[np.arange(num_boxes), labels - 1]

    num_frames = gt.num_frames
    gt_boxes = np.concatenate([gt.person_boxes.astype(np.float64), gt.obj_boxes], axis=0)
    gt_frame = np.concatenate([np.arange(num_frames, dtype=np.int64), gt.obj_frame])
    gt_class = np.concatenate([np.ones(num_frames, dtype=np.int64), gt.obj_class])
    box_frame = features.boxes[:, 0].astype(np.int64)
    iou = box_iou(features.boxes[:, 1:], gt_boxes)
    iou[box_frame[:, None] != gt_frame[None, :]] = -1.0
    if gt_boxes.shape[0]:
        best = np.argmax(iou, axis=1)
        matched = iou[np.arange(num_boxes), best] >= MATCH_IOU
    else:
        best = np.zeros(num_boxes, dtype=np.int64)
        matched = np.zeros(num_boxes, dtype=bool)
    object_targets = np.where(matched, gt_class[best] if gt_boxes.shape[0] else -1, -1)

    attention = np.full(num_pairs, -1, dtype=np.int64)
    spatial = np.zeros((num_pairs, _NUM_SPATIAL), dtype=np.float32)
    contacting = np.zeros((num_pairs, _NUM_CONTACTING), dtype=np.float32)
    pair_box = features.pair_idx[:, 1].astype(np.int64)
    has = matched[pair_box] & (best[pair_box] >= num_frames)
    if has.any():
        obj_attention, obj_spatial, obj_contacting = _object_labels(gt)
        pair_obj = best[pair_box[has]] - num_frames
        attention[has] = obj_attention[pair_obj]
        spatial[has] = obj_spatial[pair_obj]
        contacting[has] = obj_contacting[pair_obj]
    return _Part(
        features=features,
        labels=labels,
        scores=scores,
        object_targets=object_targets.astype(np.int64),
        attention=attention,
        spatial=spatial,
        contacting=contacting,
        relation_mask=has,
    )


def _det_train_part(video_id: str, gt: VideoGT, features: VideoFeatures) -> _Part:
    """sgdet training inputs: stored assigned labels, pair targets name a GT object per pair."""
    if features.labels is None or features.pair_targets is None:
        raise DataError(
            video_id, "the 'det_train' section has no labels/pair_targets", field="det_train"
        )
    obj_start = gt.object_offsets()
    frame = features.im_idx
    target = np.asarray(features.pair_targets, dtype=np.int64)
    count = obj_start[frame + 1] - obj_start[frame]
    bad = np.flatnonzero(target >= count)
    if bad.size:
        p = int(bad[0])
        raise DataError(
            video_id,
            f"pair {p} names GT object {int(target[p])} of frame {int(frame[p])}, which has "
            f"{int(count[p])} visible objects",
            field="det_train.pair_targets",
        )
    pair_obj = obj_start[frame] + target
    attention, spatial, contacting = _object_labels(gt)
    labels = np.asarray(features.labels, dtype=np.int64)
    scores = features.scores if features.scores is not None else np.ones(len(labels), np.float32)
    return _Part(
        features=features,
        labels=labels,
        scores=np.asarray(scores, dtype=np.float32),
        object_targets=labels.copy(),
        attention=attention[pair_obj],
        spatial=spatial[pair_obj],
        contacting=contacting[pair_obj],
        relation_mask=np.ones(features.num_pairs, dtype=bool),
    )

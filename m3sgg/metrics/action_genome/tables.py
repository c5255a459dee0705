"""The input side of the AG recall: checked prediction and ground-truth arrays, and the
batch-wide tables ``update()`` copies a video into until the batch is evaluated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from m3sgg.data.structures import VideoGT
from m3sgg.metrics.base import content_key
from m3sgg.vocab import GROUP_SIZES, NUM_AG_PREDICATES, PREDICATE_GROUPS, PREDICATE_OFFSETS

AG_MODES: tuple[str, ...] = ("predcls", "sgcls", "sgdet")
AG_CONSTRAINTS: tuple[str, ...] = ("with", "semi", "no")
#: Cells per frame the ``no`` constraint keeps (ranked by the float32 object-score product × cell).
NO_CONSTRAINT_TOP = 100
#: TEMPURA's guard in ``hits / (count + 1e-10)``.
_EPS = 1e-10
_NP = NUM_AG_PREDICATES  # 26 columns per candidate row
_PERSON = 1
_NO_RANK = np.iinfo(np.int32).max  # rank of a GT relation no prediction recalls
_OFFSETS = tuple(PREDICATE_OFFSETS[g] for g in PREDICATE_GROUPS)  # (0, 3, 9)
_WIDTHS = tuple(GROUP_SIZES[g] for g in PREDICATE_GROUPS)  # (3, 6, 17)
_PREDICATE_GROUP = np.repeat(np.arange(3), _WIDTHS)  # predicate id -> block 0/1/2
_REVERSED_BLOCK = 1  # the spatial block holds the pairs reversed (object -> person)


class _Table:
    """Columns sharing a row count, grown by doubling and reused from batch to batch.

    A video is written in two steps: :meth:`reserve` gives the slice of its rows (writes there
    are invisible until :meth:`commit`), so a video that fails halfway leaves nothing behind.
    """

    def __init__(self, **columns: tuple[Any, int | None]) -> None:
        self.size = 0
        self._columns = {name: (np.dtype(dtype), width) for name, (dtype, width) in columns.items()}
        self._data = {name: self._empty(name, 64) for name in self._columns}

    def _empty(self, name: str, rows: int) -> np.ndarray:
        dtype, width = self._columns[name]
        return np.empty((rows,) if width is None else (rows, width), dtype)

    def reserve(self, rows: int) -> slice:
        end = self.size + rows
        capacity = next(iter(self._data.values())).shape[0]
        if end > capacity:
            capacity = max(end, 2 * capacity)
            for name, old in self._data.items():
                self._data[name] = new = self._empty(name, capacity)
                new[: self.size] = old[: self.size]
        return slice(self.size, end)

    def __getitem__(self, name: str) -> np.ndarray:
        """Column ``name``: the committed rows followed by the reserved ones (write target)."""
        return self._data[name]

    def commit(self, rows: int) -> None:
        self.size += rows

    def rows(self, name: str) -> np.ndarray:
        """The committed rows of column ``name`` (a view, valid until the next write)."""
        return self._data[name][: self.size]


def _view(pred: Mapping[str, Any], name: str, width: int | None) -> np.ndarray:
    """``pred[name]`` as a numpy array (no copy where possible): 1-D, or ``(N, width)``."""
    value = pred[name]
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            value = value.float()
        value = value.cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"pred[{name!r}] must hold numbers, got dtype {array.dtype}")
    if width is None:
        if array.ndim != 1 and array.size != 0:
            raise ValueError(f"pred[{name!r}] must be 1-D, got shape {array.shape}")
        return array.reshape(-1)
    if array.size == 0:
        return array.reshape(0, width)
    if array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"pred[{name!r}] must have shape (N, {width}), got {array.shape}")
    return array


class _PredArrays(NamedTuple):
    """One video's predictions as checked numpy arrays (views of the caller's data)."""

    boxes: np.ndarray  # (B, 5)
    labels: np.ndarray  # (B,)
    scores: np.ndarray  # (B,)
    pair_frame: np.ndarray  # (P,) int64
    pair_idx: np.ndarray  # (P, 2)
    attention: np.ndarray  # (P, 3) logits, or probabilities when attention_is_probability
    spatial: np.ndarray  # (P, 6)
    contacting: np.ndarray  # (P, 17)
    attention_is_probability: bool

    PER_PAIR = ("pair_frame", "pair_idx", "attention", "spatial", "contacting")


def _pred_arrays(pred: Mapping[str, Any], mode: str) -> _PredArrays:
    """The keys ``mode`` reads from ``pred``, checked against each other."""
    label_key, score_key = (
        ("labels", "scores") if mode == "predcls" else ("pred_labels", "pred_scores")
    )
    probabilities = "attention_probabilities" in pred
    attention_key = "attention_probabilities" if probabilities else "attention_distribution"
    needed = (
        "boxes",
        label_key,
        score_key,
        "im_idx",
        "pair_idx",
        attention_key,
        "spatial_distribution",
        "contacting_distribution",
    )
    missing = [key for key in needed if key not in pred]
    if missing:
        raise ValueError(f"pred for mode {mode!r} lacks the keys {missing}")
    boxes = _view(pred, "boxes", 5)
    labels = _view(pred, label_key, None)
    scores = _view(pred, score_key, None)
    im_idx = _view(pred, "im_idx", None)
    pair_idx = _view(pred, "pair_idx", 2)
    attention = _view(pred, attention_key, _WIDTHS[0])
    spatial = _view(pred, "spatial_distribution", _WIDTHS[1])
    contacting = _view(pred, "contacting_distribution", _WIDTHS[2])
    num_boxes = boxes.shape[0]
    if labels.shape[0] != num_boxes or scores.shape[0] != num_boxes:
        raise ValueError(
            f"pred[{label_key!r}] and pred[{score_key!r}] need one entry per box "
            f"({num_boxes}), got {labels.shape[0]} and {scores.shape[0]}"
        )
    num_pairs = pair_idx.shape[0]
    for name, array in (
        ("im_idx", im_idx),
        (attention_key, attention),
        ("spatial_distribution", spatial),
        ("contacting_distribution", contacting),
    ):
        if array.shape[0] != num_pairs:
            raise ValueError(f"pred[{name!r}] has {array.shape[0]} rows for {num_pairs} pairs")
    if num_pairs and (pair_idx.min() < 0 or pair_idx.max() >= num_boxes):
        raise ValueError(f"pred['pair_idx'] must index the {num_boxes} boxes")
    pair_frame = im_idx.astype(np.int64)
    if (pair_frame != im_idx).any():
        raise ValueError("pred['im_idx'] must hold integer frame indices")
    return _PredArrays(
        boxes, labels, scores, pair_frame, pair_idx, attention, spatial, contacting, probabilities
    )


class _GTArrays(NamedTuple):
    """One video's ground truth as checked numpy arrays (see :class:`VideoGT`)."""

    person: np.ndarray  # (F, 4) float32
    obj_frame: np.ndarray
    obj_class: np.ndarray
    obj_boxes: np.ndarray
    rel_obj: np.ndarray
    rel_pred: np.ndarray


def _gt_arrays(sample_id: str, gt: VideoGT) -> _GTArrays:
    """``gt``'s arrays, checked: shapes agree and every index is in range."""
    num_frames = gt.num_frames
    person = np.asarray(gt.person_boxes, np.float32)  # VideoGT's dtype (float32)
    obj_frame, obj_class = np.asarray(gt.obj_frame), np.asarray(gt.obj_class)
    obj_boxes = np.asarray(gt.obj_boxes)
    rel_obj, rel_pred = np.asarray(gt.rel_obj), np.asarray(gt.rel_pred)
    num_objects, num_relations = obj_class.shape[0], rel_obj.shape[0]
    where = f"gt of video {sample_id!r}"
    if person.shape != (num_frames, 4) or obj_boxes.shape != (num_objects, 4):
        raise ValueError(f"{where}: person_boxes or obj_boxes are mis-shaped")
    if obj_frame.shape != (num_objects,) or rel_pred.shape != (num_relations,):
        raise ValueError(f"{where}: obj_frame or rel_pred are mis-shaped")
    if num_objects and (obj_frame.min() < 0 or obj_frame.max() >= num_frames):
        raise ValueError(f"{where}: obj_frame must index its frames")
    if num_relations and (rel_obj.min() < 0 or rel_obj.max() >= num_objects):
        raise ValueError(f"{where}: rel_obj must index its objects")
    if num_relations and (rel_pred.min() < 0 or rel_pred.max() >= _NP):
        raise ValueError(f"{where}: rel_pred must be predicate ids 0..25")
    return _GTArrays(person, obj_frame, obj_class, obj_boxes, rel_obj, rel_pred)


class _Pending:
    """Videos taken by ``update()`` and not evaluated yet, stored batch-wide.

    Each video is checked, then copied once, straight into these tables with its frames,
    objects and boxes renumbered batch-wide (``_make_batch`` reads views of them). The caller's
    arrays are never kept nor modified. Dtypes follow the reference: boxes float64 (float32
    values widen exactly), object scores and attention logits float32, spatial and contacting
    probabilities float64.
    """

    def __init__(self) -> None:
        self.sample_ids: list[str] = []
        self.keys: list[str] = []  # identities: id and ground-truth content (content_key)
        self.frames = _Table(person=(np.float64, 4), video=(np.int64, None))
        self.objects = _Table(frame=(np.int64, None), cls=(np.int64, None), box=(np.float64, 4))
        self.relations = _Table(obj=(np.int64, None), pred=(np.int64, None))
        self.boxes = _Table(box=(np.float64, 4), label=(np.int64, None), score=(np.float32, None))
        self.pairs = _Table(
            frame=(np.int64, None),
            sub=(np.int64, None),
            obj=(np.int64, None),
            attention=(np.float32, _WIDTHS[0]),  # logits (or probabilities, see below)
            probability=(np.bool_, None),  # the row's attention is already a distribution
            # predicate scores, float64: spatial and contacting here, softmaxed attention at
            # evaluation (one array, so a cell's score is one lookup)
            values=(np.float64, _NP),
        )

    @property
    def size(self) -> int:
        """Pairs + frames: what the batch costs to evaluate."""
        return self.pairs.size + self.frames.size

    def clear(self) -> None:
        """Forget the videos (the memory stays, for the next batch)."""
        self.sample_ids.clear()
        self.keys.clear()
        for table in (self.frames, self.objects, self.relations, self.boxes, self.pairs):
            table.size = 0

    def add(self, sample_id: str, gt: VideoGT, pred: Mapping[str, Any], mode: str) -> None:
        """Check one video's ``gt`` and ``pred`` (for ``mode``) and copy them in."""
        p = _pred_arrays(pred, mode)
        g = _gt_arrays(sample_id, gt)
        num_frames, num_pairs = g.person.shape[0], p.pair_frame.shape[0]
        if num_pairs and (p.pair_frame.min() < 0 or p.pair_frame.max() >= num_frames):
            keep = (p.pair_frame >= 0) & (p.pair_frame < num_frames)  # the reference ignores them
            p = p._replace(**{name: getattr(p, name)[keep] for name in _PredArrays.PER_PAIR})
            num_pairs = p.pair_frame.shape[0]
        num_objects, num_relations = g.obj_class.shape[0], g.rel_obj.shape[0]
        num_boxes = p.boxes.shape[0]

        # copy in, renumbered: frames, objects and boxes follow those already pending
        frames, objects, relations = self.frames, self.objects, self.relations
        box_table, pairs = self.boxes, self.pairs
        rows = frames.reserve(num_frames)
        frames["person"][rows] = g.person
        frames["video"][rows] = len(self.sample_ids)
        rows = objects.reserve(num_objects)
        np.add(g.obj_frame, frames.size, out=objects["frame"][rows], casting="unsafe")
        objects["cls"][rows] = g.obj_class
        objects["box"][rows] = g.obj_boxes
        rows = relations.reserve(num_relations)
        np.add(g.rel_obj, objects.size, out=relations["obj"][rows], casting="unsafe")
        relations["pred"][rows] = g.rel_pred
        rows = box_table.reserve(num_boxes)
        box_table["box"][rows] = p.boxes[:, 1:]
        box_table["label"][rows] = p.labels
        box_table["score"][rows] = p.scores
        rows = pairs.reserve(num_pairs)
        np.add(p.pair_frame, frames.size, out=pairs["frame"][rows])
        np.add(p.pair_idx[:, 0], box_table.size, out=pairs["sub"][rows], casting="unsafe")
        np.add(p.pair_idx[:, 1], box_table.size, out=pairs["obj"][rows], casting="unsafe")
        pairs["attention"][rows] = p.attention
        pairs["probability"][rows] = p.attention_is_probability
        pairs["values"][rows, _OFFSETS[1] : _OFFSETS[2]] = p.spatial
        pairs["values"][rows, _OFFSETS[2] :] = p.contacting
        frames.commit(num_frames)
        objects.commit(num_objects)
        relations.commit(num_relations)
        box_table.commit(num_boxes)
        pairs.commit(num_pairs)
        self.sample_ids.append(sample_id)
        self.keys.append(content_key(sample_id, gt.frame_keys, *g))

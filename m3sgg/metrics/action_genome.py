"""Action Genome scene-graph recall: R@K, mR@K and per-predicate recall as STTran/TEMPURA report.

The numbers equal those of STTran's ``BasicSceneGraphEvaluator`` (R@K) and of TEMPURA's evaluator
(mR@K, per-predicate recall) on the same predictions. One sample is one **video**.

Per frame::

    GT relations      object m: (person, m, a), (m, person, 3+s) for each spatial s (reversed),
                      (person, m, 9+c) for each contacting c           -> 26 global predicate ids
    candidate rows    the frame's pairs three times: attention (columns 0-2), spatial with the
                      pair reversed (3-8), contacting (9-25); zeros outside a row's group
    with              one prediction per row: argmax column (lowest on ties), score = row max
                      (so an all-zero row predicts predicate 0 with score 0)
    semi (t)          rows with col0+col1 > 0: their argmax; else rows with col3+col4 > 0 or
                      col9+col10 > 0: every column with value > t (float64); else nothing
    no                every cell; the top 100 by float32(subject_score * object_score) * cell
    triplet score     subject_score * object_score * predicate_score (float64), ranked descending
    match             same subject class, predicate and object class, subject IoU and object IoU
                      >= iou_threshold ("+1 pixel" IoU, float64); no one-to-one assignment
    R@K of the frame  GT relations recalled by the top K predictions / GT relations

Dtypes follow the reference: the attention logits go through ``torch.softmax(dim=1)`` in float32
on the CPU, then all probabilities are widened to float64 (a model whose attention output is
already a distribution, TEMPURA's mixture heads, gives ``attention_probabilities`` instead: taken
as is, widened, never softmaxed again, as TEMPURA's evaluator does); boxes and object scores are
float32 widened to float64 (their product is rounded to float32 only for the ``no`` top-100 cut).

Aggregation: ``R@K`` is the mean over all evaluated frames of all videos; ``per_predicate[K][p]``
is ``hits[p] / (count[p] + 1e-10)`` with hits and counts summed over the whole evaluation (the
``1e-10`` is TEMPURA's), and ``mR@K`` is their sum divided by 26 (predicates without ground truth
count 0). State is per video and is cleared by ``reset()``, so mR does not drift across epochs.

Behaviours the reference leaves open:

* **Frames without any GT relation** (impossible in the AG protocol) are skipped: they are in
  neither the R@K average nor the mR counts, and are counted in ``frames_without_gt``. A frame
  with GT but without predicted pairs is evaluated and has recall 0.
* **Ties.** The reference ranks with an unstable sort, so equal scores straddling a cut make its
  result platform-dependent. Here the ranking is stable: equal scores keep the reference's
  candidate order (attention rows, spatial rows, contacting rows, each in pair order, columns
  ascending); in ``no``, the top-100 cut keeps that order among equal cut scores and the final
  ranking keeps the cut's order, i.e. it sorts by (triplet score desc, cut score desc, order).
* Pairs whose ``im_idx`` is not a frame of the ground truth are ignored, as in the reference.

Implementation: no Python loop per frame or per relation. ``update`` checks a video and copies
it once, straight into batch-wide tables (frames, boxes and objects renumbered); the pending
videos are evaluated together when they reach about ``_BATCH_SIZE`` pairs + frames, and at
``compute()``. The tables and the few large temporaries are reused from batch to batch (fresh
memory costs a page fault per 4 KiB, more than the arithmetic on it). Matching is done once per
batch, whatever the constraints: a candidate recalls a GT relation iff its predicate is the
relation's and its (pair, direction) matches the relation's object (classes and IoUs), so every
GT relation gets the keys ``(direction, pair, predicate)`` that would recall it (usually one).
Each constraint then ranks its
candidates within their frames (a padded frame × candidate table sorted row-wise; rows with
equal scores re-sorted stably) and a relation is recalled at K iff its best key ranks below K.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, NamedTuple

import ignite.distributed as idist
import numpy as np
import torch
from ignite.exceptions import NotComputableError

from m3sgg.data.structures import VideoGT
from m3sgg.errors import ConfigError
from m3sgg.metrics.base import SampleStatsMetric, content_key
from m3sgg.vocab import GROUP_SIZES, NUM_AG_PREDICATES, PREDICATE_GROUPS, PREDICATE_OFFSETS

__all__ = [
    "AG_CONSTRAINTS",
    "AG_MODES",
    "NO_CONSTRAINT_TOP",
    "ActionGenomeRecall",
    "ActionGenomeRecallSuite",
]

AG_MODES: tuple[str, ...] = ("predcls", "sgcls", "sgdet")
AG_CONSTRAINTS: tuple[str, ...] = ("with", "semi", "no")
#: Cells per frame the ``no`` constraint keeps (ranked by the float32 object-score product × cell).
NO_CONSTRAINT_TOP = 100
#: TEMPURA's guard in ``hits / (count + 1e-10)``.
_EPS = 1e-10
_NP = NUM_AG_PREDICATES  # 26 columns per candidate row
_PERSON = 1
_NO_RANK = np.iinfo(np.int32).max  # rank of a GT relation no prediction recalls
#: Videos are evaluated in batches of about this many pairs + frames (bounded memory, few calls).
_BATCH_SIZE = 4096
_OFFSETS = tuple(PREDICATE_OFFSETS[g] for g in PREDICATE_GROUPS)  # (0, 3, 9)
_WIDTHS = tuple(GROUP_SIZES[g] for g in PREDICATE_GROUPS)  # (3, 6, 17)
_PREDICATE_GROUP = np.repeat(np.arange(3), _WIDTHS)  # predicate id -> block 0/1/2
_REVERSED_BLOCK = 1  # the spatial block holds the pairs reversed (object -> person)


# --------------------------------------------------------------------------------------------
# Videos taken by update(), stored batch-wide until evaluated
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# A batch of videos: the constraint-independent work
# --------------------------------------------------------------------------------------------


class _Workspace:
    """Scratch buffers reused from batch to batch.

    A large temporary array gets fresh pages from the OS each time it is allocated (the
    allocator returns big blocks on free), and the page faults cost more than the arithmetic on
    it. The few big per-batch temporaries therefore live here; a metric drops them at reset.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def empty(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised array viewing buffer ``name`` (valid until ``name`` is asked again)."""
        dtype = np.dtype(dtype)
        size = math.prod(shape) * dtype.itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape[0] < size:
            buffer = np.empty(size, np.uint8)
            self._buffers[name] = buffer
        return buffer[:size].view(dtype).reshape(shape)

    def full(self, name: str, shape: tuple[int, ...], value: Any, dtype: Any) -> np.ndarray:
        out = self.empty(name, shape, dtype)
        out.fill(value)
        return out

    def table(self, name: str, size: int, value: Any, dtype: Any) -> np.ndarray:
        """A 1-D array of ``value`` that the caller restores after use (it is not refilled)."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape[0] < size:
            buffer = np.full(size, value, dtype)
            self._buffers[name] = buffer
        return buffer[:size]


@dataclass
class _Batch:
    """Several videos evaluated together; frames, boxes and objects are renumbered batch-wide.

    Candidate cells are numbered ``(block * P + q) * 26 + column`` (block 0 attention, 1 spatial,
    2 contacting; ``q`` the pair). Within a frame, ascending ids are the reference's row order.
    """

    num_videos: int
    num_frames: int
    frame_video: np.ndarray  # (F,) video of each frame
    num_pairs: int
    pair_frame: np.ndarray  # (P,)
    values: np.ndarray  # (P, 26) float64 predicate scores: softmaxed attention, spatial, contacting
    blocks: tuple[np.ndarray, ...]  # its column blocks: views (P, 3), (P, 6), (P, 17)
    pair_score: np.ndarray  # (P,) float64 subject_score * object_score (exact in float64)
    pair_score32: np.ndarray  # (P,) the same product rounded to float32, widened
    rel_frame: np.ndarray  # (R,) frame of each GT relation
    rel_pred: np.ndarray  # (R,) predicate id of each GT relation
    rel_key: np.ndarray  # (R,) key of the candidates that would recall each GT relation, -1 if
    # none or several would (its object matches several pairs): then these rows hold them
    match_rel: np.ndarray  # (J,) GT relation whose object matches several (pair, direction) ...
    match_key: np.ndarray  # (J,) ... and the key of each
    workspace: _Workspace
    _argmax: list[tuple[np.ndarray, np.ndarray] | None]
    _pair_slots: tuple[np.ndarray, np.ndarray] | None = None

    def pair_slots(self) -> tuple[np.ndarray, np.ndarray]:
        """Each pair's position among its frame's pairs, and pairs per frame, cached."""
        if self._pair_slots is None:
            self._pair_slots = _group_slots(self.pair_frame, self.num_frames)
        return self._pair_slots

    def row_argmax(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Argmax column (lowest on ties) and max of the 26-column rows of ``block``, cached."""
        cached = self._argmax[block]
        if cached is None:
            cached = _row_argmax(self.blocks[block], _OFFSETS[block])
            self._argmax[block] = cached
        return cached


def _make_batch(pending: _Pending, iou_threshold: float, workspace: _Workspace) -> _Batch:
    """The pending videos as a batch (views of their tables), with the shared work done."""
    frames, objects, relations = pending.frames, pending.objects, pending.relations
    person, frame_video = frames.rows("person"), frames.rows("video")
    obj_frame, obj_class, obj_boxes = (
        objects.rows("frame"),
        objects.rows("cls"),
        objects.rows("box"),
    )
    rel_obj, rel_pred = relations.rows("obj"), relations.rows("pred")
    boxes, labels, scores = (pending.boxes.rows(name) for name in ("box", "label", "score"))
    pair_frame, sub, obj = (pending.pairs.rows(name) for name in ("frame", "sub", "obj"))
    attention = pending.pairs.rows("attention")
    values = pending.pairs.rows("values")
    # softmax is row-wise: one call over the batch equals one call per video
    values[:, : _OFFSETS[1]] = torch.softmax(torch.from_numpy(attention), dim=1).numpy()
    given = pending.pairs.rows("probability")
    if given.any():  # distributions already (TEMPURA): as they are, widened
        values[given, : _OFFSETS[1]] = attention[given]
    score64 = scores.astype(np.float64)
    rel_key, match_rel, match_key = _match_keys(
        person,
        obj_frame,
        obj_class,
        obj_boxes,
        rel_obj,
        rel_pred,
        boxes,
        labels,
        pair_frame,
        sub,
        obj,
        iou_threshold,
    )
    return _Batch(
        num_videos=len(pending.sample_ids),
        num_frames=frames.size,
        frame_video=frame_video,
        num_pairs=int(sub.shape[0]),
        pair_frame=pair_frame,
        values=values,
        blocks=tuple(values[:, o : o + w] for o, w in zip(_OFFSETS, _WIDTHS, strict=True)),
        pair_score=score64[sub] * score64[obj],
        pair_score32=(scores[sub] * scores[obj]).astype(np.float64),
        rel_frame=obj_frame[rel_obj],
        rel_pred=rel_pred,
        rel_key=rel_key,
        match_rel=match_rel,
        match_key=match_key,
        workspace=workspace,
        _argmax=[None, None, None],
    )


def _row_argmax(values: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Argmax and max of rows that are ``values`` at ``offset`` and zeros elsewhere (26 wide)."""
    if values.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    if values.shape[1] > 3:  # one pass for both; torch too returns the first maximal index
        best_t, column_t = torch.max(torch.from_numpy(values), dim=1)
        best, column = best_t.numpy(), column_t.numpy()
    else:  # on narrow rows numpy is faster
        column = values.argmax(axis=1)
        best = values[np.arange(values.shape[0]), column]
    column += offset
    positive = best > 0
    if offset == 0:
        # a zero maximum is first reached inside the block, a negative one just after it
        zero_column = np.where(best == 0, column, values.shape[1])
    else:
        zero_column = np.zeros_like(column)  # the zeros before the block come first
    return np.where(positive, column, zero_column), np.where(positive, best, 0.0)


def _iou(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of the columns of float64 ``(4, n)`` xyxy boxes, with the reference's "+1 pixel"
    arithmetic: ``inter / ((gt_area + pred_area) - inter)``, 0 unless both overlaps are > 0."""
    gx1, gy1, gx2, gy2 = gt
    px1, py1, px2, py2 = pred
    # in place, in the reference's order of operations (so every rounding is the same)
    iw = np.minimum(gx2, px2)
    iw -= np.maximum(gx1, px1)
    iw += 1
    ih = np.minimum(gy2, py2)
    ih -= np.maximum(gy1, py1)
    ih += 1
    inter = iw * ih
    union = gx2 - gx1
    union += 1
    height = gy2 - gy1
    height += 1
    union *= height
    area = px2 - px1
    area += 1
    height = py2 - py1
    height += 1
    area *= height
    union += area
    union -= inter
    overlap = iw > 0
    overlap &= ih > 0
    with np.errstate(divide="ignore", invalid="ignore"):  # degenerate boxes; zeroed below
        inter /= union  # a masked divide is slower than dividing everything
    inter[~overlap] = 0.0
    return inter


def _person_matches(
    person_t: np.ndarray,
    boxes_t: np.ndarray,
    frame: np.ndarray,
    box: np.ndarray,
    iou_threshold: float,
) -> np.ndarray:
    """``IoU(GT person box of frame, box) >= iou_threshold`` for each (frame, box).

    A frame's pairs usually share their person box, so the IoU is computed once per run of
    equal (frame, box) entries and repeated.
    """
    n = frame.shape[0]
    start = np.ones(n, bool)
    if n > 1:
        start[1:] = frame[1:] != frame[:-1]
        start[1:] |= box[1:] != box[:-1]
    first = np.flatnonzero(start)
    ok = _iou(person_t[:, frame[first]], boxes_t[:, box[first]]) >= iou_threshold
    return np.repeat(ok, np.diff(first, append=n))


def _join(left: np.ndarray, right: np.ndarray, key_range: int) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs ``(i, j)`` with ``left[i] == right[j]``, keys ints in ``[0, key_range)``."""
    if key_range > 1 << 24:  # sparse keys: renumber them densely first
        keys, right = np.unique(right, return_inverse=True)
        pos = np.minimum(np.searchsorted(keys, left), max(keys.shape[0] - 1, 0))
        left = np.where(keys[pos] == left, pos, keys.shape[0]) if keys.shape[0] else left * 0
        key_range = keys.shape[0] + 1
    counts = np.bincount(right, minlength=key_range)
    if counts.max(initial=0) <= 1:  # each key at most once on the right: a lookup table
        where = np.full(key_range, -1, np.int64)
        where[right] = np.arange(right.shape[0])
        found = where[left]
        li = np.flatnonzero(found >= 0)
        return li, found[li]
    in_order = right.shape[0] < 2 or bool((right[1:] >= right[:-1]).all())
    if in_order:
        order = np.arange(right.shape[0])
    else:  # a stable argsort of 16-bit keys is a radix sort
        order = np.argsort(
            right.astype(np.uint16) if key_range <= 1 << 16 else right, kind="stable"
        )
    per_left = counts[left]
    li = np.repeat(np.arange(left.shape[0]), per_left)
    first = np.repeat(np.cumsum(counts)[left] - per_left - np.cumsum(per_left) + per_left, per_left)
    return li, order[first + np.arange(li.shape[0])]


def _match_keys(
    person: np.ndarray,
    obj_frame: np.ndarray,
    obj_class: np.ndarray,
    obj_boxes: np.ndarray,
    rel_obj: np.ndarray,
    rel_pred: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    pair_frame: np.ndarray,
    sub: np.ndarray,
    obj: np.ndarray,
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each GT relation, the keys of the candidates that would recall it.

    A candidate of pair ``(i, j)`` is the triplet ``(i, column, j)``, or ``(j, column, i)`` in the
    (reversed) spatial block. Against a GT relation ``(person, p, m)`` or, for spatial ``p``,
    ``(m, p, person)``, it matches iff ``column == p`` and, when the candidate's direction equals
    the relation's, *forward*: ``label[i] == person``, ``label[j] == class[m]``, IoU(i, person
    box) and IoU(j, box m) pass; when the directions differ, *backward*: the same with ``i``
    and ``j`` swapped. So matching depends on the direction, not on the block: the key is
    ``(direction * P + pair) * 26 + column`` (direction 1 = reversed). Cells outside their
    block's group (zero scores, which ``with`` and ``no`` can still rank) are candidates too.

    Usually a GT object matches one (pair, direction) or none: its relations get one key each,
    ``rel_key`` (-1: none). Relations of objects matching several get ``-1`` there and a row
    ``(match_rel, match_key)`` per match.
    """
    empty = np.zeros(0, np.int64)
    num_pairs = sub.shape[0]
    rel_key = np.full(rel_obj.shape[0], -1, np.int64)
    if num_pairs == 0 or rel_obj.shape[0] == 0:
        return rel_key, empty, empty
    # (4, n) layouts: each coordinate contiguous
    person_t, obj_boxes_t, boxes_t = person.T.copy(), obj_boxes.T.copy(), boxes.T.copy()
    lo = min(int(labels.min()), int(obj_class.min()))
    span = max(int(labels.max()), int(obj_class.max())) - lo + 1
    obj_key = obj_frame * span + (obj_class - lo)
    key_range = (int(pair_frame.max()) + 1) * span

    found_pair, found_obj, found_backward = [], [], []
    for backward, (head, tail) in enumerate(((sub, obj), (obj, sub))):
        # ``head`` stands for the person and ``tail`` for object m
        pairs = np.flatnonzero(labels[head] == _PERSON)  # labels first: IoUs cost more
        if pairs.shape[0] == 0:
            continue
        pairs = pairs[
            _person_matches(person_t, boxes_t, pair_frame[pairs], head[pairs], iou_threshold)
        ]
        if pairs.shape[0] == 0:
            continue
        pair_key = pair_frame[pairs] * span + (labels[tail[pairs]] - lo)
        pi, objects = _join(pair_key, obj_key, max(key_range, int(obj_key.max()) + 1))
        pairs = pairs[pi]
        gt_boxes = np.take(obj_boxes_t, objects, axis=1)
        hit = _iou(gt_boxes, np.take(boxes_t, tail[pairs], axis=1)) >= iou_threshold
        found_pair.append(pairs[hit])
        found_obj.append(objects[hit])
        found_backward.append(np.full(int(hit.sum()), bool(backward)))
    if not found_pair:
        return rel_key, empty, empty
    pairs = np.concatenate(found_pair)
    backward = np.concatenate(found_backward)
    objects = np.concatenate(found_obj)
    num_objects = obj_class.shape[0]
    single = np.bincount(objects, minlength=num_objects)[objects] == 1
    # objects matched once: their (pair, backward), read by each of their relations
    match_of_object = np.full(num_objects, -1, np.int64)
    match_of_object[objects[single]] = np.flatnonzero(single)
    match = match_of_object[rel_obj]
    found = np.flatnonzero(match >= 0)
    match, pred = match[found], rel_pred[found]
    # the direction a candidate needs: the relation's (forward) or the other one (backward)
    direction = backward[match] != (_PREDICATE_GROUP[pred] == _REVERSED_BLOCK)
    rel_key[found] = (direction * num_pairs + pairs[match]) * _NP + pred
    several = np.flatnonzero(~single)
    if several.shape[0] == 0:
        return rel_key, empty, empty
    multi = np.zeros(num_objects, bool)
    multi[objects[several]] = True
    rels = np.flatnonzero(multi[rel_obj])  # the relations of those objects only
    mi, ri = _join(objects[several], rel_obj[rels], num_objects)
    mi, ri = several[mi], rels[ri]
    pred = rel_pred[ri]
    direction = backward[mi] != (_PREDICATE_GROUP[pred] == _REVERSED_BLOCK)
    return rel_key, ri, (direction * num_pairs + pairs[mi]) * _NP + pred


# --------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------


def _group_slots(group: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Position of each element among its group's elements (in element order), group sizes."""
    counts = np.bincount(group, minlength=num_groups)
    starts = np.cumsum(counts) - counts
    if group.shape[0] < 2 or (group[1:] >= group[:-1]).all():  # the usual frame-ordered pairs
        return np.arange(group.shape[0]) - starts[group], counts
    narrow = group.astype(np.uint16) if num_groups <= 1 << 16 else group
    order = np.argsort(narrow, kind="stable")  # a radix sort for 16-bit keys
    slot = np.empty(group.shape[0], np.int64)
    slot[order] = np.arange(group.shape[0]) - starts[group[order]]
    return slot, counts


def _argsort_rows(table: np.ndarray, counts: np.ndarray, *tiebreaks: np.ndarray) -> np.ndarray:
    """Row-wise argsort, ascending; columns ``>= counts`` are padding (keys that sort last).

    Equal keys are ordered by the ``tiebreaks`` tables (same shape, first one first), else by
    column. Rows are sorted with the fast unstable sort, then the rows where equal keys meet
    (among their real entries) are sorted again with a stable one.
    """
    order = np.argsort(table, axis=1)
    width = table.shape[1]
    if width > 1:
        ordered = np.take_along_axis(table, order, axis=1)
        tie = ordered[:, 1:] == ordered[:, :-1]
        tie &= np.arange(1, width)[None, :] <= counts[:, None]  # a real key equal to the padding
        if tie.any():
            rows = np.flatnonzero(tie.any(axis=1))
            if tiebreaks:
                keys = (*(t[rows] for t in reversed(tiebreaks)), table[rows])
                order[rows] = np.lexsort(keys, axis=1)
            else:
                order[rows] = np.argsort(table[rows], axis=1, kind="stable")
    return order


def _segment_ranks(
    group: np.ndarray,
    key: np.ndarray,
    num_groups: int,
    slots: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Rank of each element within its group by ``key`` ascending, ties in element order.

    Groups are the rows of a padded table, sorted row-wise. When group sizes vary a lot, groups
    of each size class (a power of two) get their own table, so padding at most doubles it.
    ``slots`` is :func:`_group_slots` of ``group`` (or slots in another tie order), if known.
    """
    n = group.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    slot, counts = _group_slots(group, num_groups) if slots is None else slots
    if num_groups * int(counts.max()) <= 4 * n + 4096:
        return _ranks_in_table(group, slot, counts, key)
    size_class = np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)
    rank = np.empty(n, np.int64)
    element_class = size_class[group]
    for size in np.unique(size_class[counts > 0]):
        groups = np.flatnonzero(size_class == size)
        row_of = np.zeros(num_groups, np.int64)
        row_of[groups] = np.arange(groups.shape[0])
        mine = np.flatnonzero(element_class == size)
        rank[mine] = _ranks_in_table(row_of[group[mine]], slot[mine], counts[groups], key[mine])
    return rank


def _ranks_in_table(
    row: np.ndarray, slot: np.ndarray, counts: np.ndarray, key: np.ndarray
) -> np.ndarray:
    width = int(counts.max())
    table = np.full((counts.shape[0], width), np.inf)
    table[row, slot] = key
    order = _argsort_rows(table, counts)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(width)[None, :], axis=1)
    return rank[row, slot]


# --------------------------------------------------------------------------------------------
# Constraint-specific candidates
# --------------------------------------------------------------------------------------------


def _with_ranks(batch: _Batch) -> tuple[np.ndarray, np.ndarray]:
    """``with``: one candidate per row (block, pair); match keys and ranks within their frames.

    A frame with ``n`` pairs has ``3n`` candidates; candidate ``(block, pair)`` takes slot
    ``block * n + (pair's slot)``, which is the reference's row order.
    """
    num_pairs, num_frames = batch.num_pairs, batch.num_frames
    pairs = np.arange(num_pairs)
    pair_slot, counts = batch.pair_slots()
    keys, scores = [], []
    for block in range(3):
        column, best = batch.row_argmax(block)
        keys.append(_key(np.int64(block), pairs, column, num_pairs))
        scores.append(-(batch.pair_score * best))  # minus the triplet score
    most = num_pairs // num_frames
    if most and num_pairs == num_frames * most and np.array_equal(pair_slot, pairs % most):
        # every frame has ``most`` pairs, in frame order: the table is a reshape
        width = 3 * most
        table = np.stack(scores).reshape(3, num_frames, most).transpose(1, 0, 2)
        order = _argsort_rows(table.reshape(num_frames, width), np.full(num_frames, width))
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(width)[None, :], axis=1)
        rank = rank.reshape(num_frames, 3, most).transpose(1, 0, 2).ravel()
    else:
        frame_pairs = counts[batch.pair_frame]
        slots = [pair_slot + block * frame_pairs for block in range(3)]
        rank = _segment_ranks(
            np.tile(batch.pair_frame, 3),
            np.concatenate(scores),
            num_frames,
            (np.concatenate(slots), 3 * counts),
        )
    return np.concatenate(keys), rank


def _semi_candidates(batch: _Batch, semi_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """``semi`` candidates: cell ids (ascending) and predicate scores."""
    num_pairs = batch.num_pairs
    ids, scores = [], []
    for block in range(3):
        values = batch.blocks[block]
        routed = values[:, 0] + values[:, 1] > 0  # the reference's routing of a row
        if block == 0:
            column, best = batch.row_argmax(block)
            keep = np.flatnonzero(routed)
            ids.append((block * num_pairs + keep) * _NP + column[keep])
            scores.append(best[keep])
        else:
            q, k = np.nonzero((values > semi_threshold) & routed[:, None])
            ids.append((block * num_pairs + q) * _NP + _OFFSETS[block] + k)
            scores.append(values[q, k])
    return np.concatenate(ids), np.concatenate(scores)


def _top_group_cells(
    batch: _Batch, frames: np.ndarray, slot: np.ndarray, most: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``no`` cut of ``frames`` (with at most ``most`` pairs each) among group cells.

    Returns the frames with at least 100 positive group cells (only those can ignore the zero
    cells outside the groups), and for them ``(pair, column)`` of their 100 kept cells, shaped
    ``(len(full), 100)`` and in cell order: the cells above the 100th largest cut score, then
    the cells equal to it in cell order until there are 100.
    """
    row_of = np.full(batch.num_frames, -1, np.int64)
    row_of[frames] = np.arange(frames.shape[0])
    row = row_of[batch.pair_frame]
    every = frames.shape[0] == batch.num_frames  # one size class: every pair
    pairs = np.arange(batch.num_pairs) if every else np.flatnonzero(row >= 0)
    if not every:
        row, slot = row[pairs], slot[pairs]
    num_rows = frames.shape[0]
    pair_at = np.zeros((num_rows, most), np.int64)
    pair_at[row, slot] = pairs
    # a frame's group cells (cut scores), padded, in cell order: block, then pair, then column
    width = most * _NP
    # usually the pairs fill the table row by row: then the cut scores are written in place
    dense = num_rows * most == pairs.shape[0] and bool((pair_at.ravel() == pairs).all())
    shape = (num_rows, width)
    workspace = batch.workspace
    table = (
        workspace.empty("cut", shape, np.float64)
        if dense
        else workspace.full("cut", shape, -np.inf, np.float64)
    )
    pair_cut = batch.pair_score32 if every else batch.pair_score32[pairs]
    for values, offset, size in zip(batch.blocks, _OFFSETS, _WIDTHS, strict=True):
        region = table[:, offset * most : (offset + size) * most].reshape(num_rows, most, size)
        values = values if every else values[pairs]
        if dense:
            np.multiply(
                pair_cut.reshape(num_rows, most, 1), values.reshape(region.shape), out=region
            )
        else:
            region[row, slot] = pair_cut[:, None] * values
    kth = width - NO_CONSTRAINT_TOP
    partitioned = workspace.empty("partitioned", shape, np.float64)
    np.copyto(partitioned, table)
    partitioned.partition(kth, axis=1)
    threshold = partitioned[:, kth].copy()  # each frame's 100th largest cut
    full = np.flatnonzero(threshold > 0)  # at least 100 positive cells
    if full.shape[0] < num_rows:
        table, threshold = table[full], threshold[full]
    above = np.greater_equal(
        table, threshold[:, None], out=workspace.empty("above", table.shape, np.bool_)
    )
    index = np.flatnonzero(above)  # row by row, each in cell order
    if index.shape[0] > NO_CONSTRAINT_TOP * full.shape[0]:  # cells equal to the 100th straddle
        count = np.count_nonzero(above, axis=1)
        row = index // width
        equal = table.ravel()[index] == threshold[row]
        before = np.cumsum(equal) - equal  # equal cells before each one, over all rows
        row_start = np.cumsum(count) - count
        room = NO_CONSTRAINT_TOP - (count - np.add.reduceat(equal, row_start))
        index = index[~equal | (before - before[row_start][row] < room[row])]
    index = index.reshape(-1, NO_CONSTRAINT_TOP)
    position = index - (np.arange(index.shape[0]) * width)[:, None]  # position in the row
    slot_of, column_of = _table_layout(most)
    pair = pair_at.ravel()[slot_of[position] + (full * most)[:, None]]
    return frames[full], pair, column_of[position]


@functools.cache
def _table_layout(most: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair slot and column of each position of a ``no`` cut table row with ``most`` pairs."""
    slot, column = [], []
    for offset, size in zip(_OFFSETS, _WIDTHS, strict=True):
        slot.append(np.repeat(np.arange(most), size))
        column.append(np.tile(np.arange(offset, offset + size), most))
    return np.concatenate(slot), np.concatenate(column)


def _key(block: np.ndarray, pair: np.ndarray, column: np.ndarray, num_pairs: int) -> np.ndarray:
    """Match keys of candidates: direction (the spatial block is reversed), pair and column."""
    return ((block == _REVERSED_BLOCK) * num_pairs + pair) * _NP + column


def _no_constraint_ranks(batch: _Batch) -> tuple[np.ndarray, np.ndarray]:
    """``no``: the kept cells (keys) and their final ranks within their frames.

    The reference keeps each frame's first 100 cells by (cut score desc, cell order), then ranks
    them by triplet score with a sort that keeps the cut's order among equal scores; together:
    by (triplet desc, cut desc, cell order).
    """
    num_pairs, num_frames = batch.num_pairs, batch.num_frames
    slot, counts = batch.pair_slots()
    top = NO_CONSTRAINT_TOP
    chosen: list[tuple[np.ndarray, ...]] = []  # (frame, slot, pair, column, value)
    full_frame = np.zeros(num_frames, bool)
    # Frames with enough group cells, by size class (padding at most doubles a class's table).
    # Their kept cells come in cell order, so their slots (0..99) are in cell order.
    size_class = np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)
    size_class[counts * _NP < top] = -1
    for size in np.flatnonzero(np.bincount(size_class[size_class >= 0])):
        frames = np.flatnonzero(size_class == size)
        full, pair, column = _top_group_cells(batch, frames, slot, int(counts[frames].max()))
        full_frame[full] = True
        chosen.append((full, None, pair.ravel(), column.ravel()))
    # Other frames: every cell of their rows, zeros outside the row's group included, in cell
    # order (block, pair, column), cut to the first 100 by (cut score desc, cell order).
    rows = np.flatnonzero(~full_frame[batch.pair_frame])
    if rows.shape[0]:
        shape = (3, rows.shape[0], _NP)
        block = np.broadcast_to(np.arange(3)[:, None, None], shape).ravel()
        pair = np.broadcast_to(rows[None, :, None], shape).ravel()
        column = np.broadcast_to(np.arange(_NP)[None, None, :], shape).ravel()
        inside = _PREDICATE_GROUP[None, None, :] == np.arange(3)[:, None, None]
        value = np.where(inside, batch.values[rows][None, :, :], 0.0).ravel()
        frame = batch.pair_frame[pair]
        rank = _segment_ranks(frame, -(batch.pair_score32[pair] * value), num_frames)
        kept = np.flatnonzero(rank < top)
        if not (frame[1:] >= frame[:-1]).all():  # cell order within each frame
            kept = kept[np.argsort(frame[kept], kind="stable")]
        frame, pair, block, column = (a[kept] for a in (frame, pair, block, column))
        chosen.append((frame, _group_slots(frame, num_frames)[0], pair, column, block, value[kept]))
    if len(chosen) == 1 and chosen[0][1] is None and chosen[0][0].shape[0] == num_frames:
        # the usual case: every frame keeps 100 group cells, rows of (frames, 100) tables
        _, _, pair, column = chosen[0]
        block, value = _PREDICATE_GROUP[column], batch.values[pair, column]
        triplet = -(batch.pair_score[pair] * value).reshape(num_frames, top)
        cut_key = -(batch.pair_score32[pair] * value).reshape(num_frames, top)
        order = _argsort_rows(triplet, np.full(num_frames, top), cut_key)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(top)[None, :], axis=1)
        return _key(block, pair, column, num_pairs), rank.ravel()
    parts = []
    for part in chosen:
        if part[1] is None:  # full frames: (frame, slot) of their (frames, 100) table
            full, _, pair, column = part
            part = (np.repeat(full, top), np.tile(np.arange(top), full.shape[0]), pair, column)
            part += (_PREDICATE_GROUP[column], batch.values[pair, column])
        parts.append(part)
    frame, slot, pair, column, block, value = (
        np.concatenate(c) if len(parts) > 1 else c[0] for c in zip(*parts, strict=True)
    )
    # final ranking: by triplet score desc, then cut score desc, then slot (= cell order)
    counts = np.bincount(frame, minlength=num_frames)
    shape = (num_frames, min(int(counts.max()), top))
    triplet, cut_key = np.full(shape, np.inf), np.full(shape, np.inf)
    triplet[frame, slot] = -(batch.pair_score[pair] * value)
    cut_key[frame, slot] = -(batch.pair_score32[pair] * value)
    order = _argsort_rows(triplet, counts, cut_key)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(shape[1])[None, :], axis=1)
    return _key(block, pair, column, num_pairs), rank[frame, slot]


def _first_ranks(batch: _Batch, constraint: str, semi_threshold: float) -> np.ndarray:
    """Best (lowest) rank, within its frame, of a prediction recalling each GT relation."""
    num_pairs = batch.num_pairs
    if num_pairs == 0:
        return np.full(batch.rel_pred.shape[0], _NO_RANK, np.int32)
    if constraint == "no":
        key, rank = _no_constraint_ranks(batch)
    elif constraint == "with":
        key, rank = _with_ranks(batch)
    else:
        cell, predicate_score = _semi_candidates(batch, semi_threshold)
        block, rest = np.divmod(cell, num_pairs * _NP)
        pair, column = np.divmod(rest, _NP)
        triplet = batch.pair_score[pair] * predicate_score
        rank = _segment_ranks(batch.pair_frame[pair], -triplet, batch.num_frames)
        key = _key(block, pair, column, num_pairs)
    size = 2 * num_pairs * _NP + 1  # the last entry stands for "no key"
    rank_of_key = batch.workspace.table("rank_of_key", size, _NO_RANK, np.int32)
    try:
        np.minimum.at(rank_of_key, key, rank.astype(np.int32))
        best = rank_of_key[batch.rel_key]  # key -1 reads the last entry
        if batch.match_rel.shape[0]:
            np.minimum.at(best, batch.match_rel, rank_of_key[batch.match_key])
    finally:
        rank_of_key[key] = _NO_RANK  # cheaper than refilling the table for the next batch
    return best


# --------------------------------------------------------------------------------------------
# Per-video rows and their reduction
# --------------------------------------------------------------------------------------------


class _Layout:
    """Columns of one constraint's block in a video's row (all float64)."""

    def __init__(self, ks: tuple[int, ...]) -> None:
        n = len(ks)
        self.frames = 0  # frames with GT relations
        self.frames_without_gt = 1
        self.recall_sum = slice(2, 2 + n)  # sum over frames of the frame's R@K
        self.counts = slice(2 + n, 2 + n + _NP)  # GT relations per predicate
        self.hits = slice(2 + n + _NP, 2 + n + _NP + n * _NP)  # (K, 26) recalled per predicate
        self.width = 2 + n + _NP + n * _NP
        self._ks = np.asarray(ks)
        # ranks 0..ks[-1] -> index of the first K above the rank (ks[-1] and beyond: len(ks))
        self._first_k = (
            np.searchsorted(self._ks, np.arange(ks[-1] + 1), side="right")
            if ks[-1] <= 1 << 16
            else None
        )

    def first_k_index(self, best_rank: np.ndarray) -> np.ndarray:
        """Index of the first K that recalls each best rank; ``len(ks)`` if none does."""
        if self._first_k is not None:  # a table lookup instead of a binary search
            return self._first_k[np.minimum(best_rank, self._first_k.shape[0] - 1)]
        first = np.searchsorted(self._ks, best_rank, side="right")
        first[best_rank == _NO_RANK] = len(self._ks)  # never recalled, however large K
        return first


def _rows(batch: _Batch, best_rank: np.ndarray, ks: tuple[int, ...], layout: _Layout) -> np.ndarray:
    """``(videos, layout.width)`` statistics of one constraint."""
    num_videos, num_frames, num_ks = batch.num_videos, batch.num_frames, len(ks)
    out = np.zeros((num_videos, layout.width), np.float64)
    per_frame = np.bincount(batch.rel_frame, minlength=num_frames)
    evaluated = per_frame > 0
    frames = np.bincount(batch.frame_video, minlength=num_videos)
    out[:, layout.frames] = np.bincount(batch.frame_video, weights=evaluated, minlength=num_videos)
    out[:, layout.frames_without_gt] = frames - out[:, layout.frames]
    video_pred = batch.frame_video[batch.rel_frame] * _NP + batch.rel_pred
    out[:, layout.counts] = np.bincount(video_pred, minlength=num_videos * _NP).reshape(-1, _NP)
    # first K index recalling each relation (len(ks): none); counted once, then cumulated over K
    first = layout.first_k_index(best_rank)
    width = num_ks + 1
    frame_hits = np.cumsum(
        np.bincount(batch.rel_frame * width + first, minlength=num_frames * width).reshape(
            num_frames, width
        )[:, :num_ks],
        axis=1,
    )
    recall = np.zeros((num_frames, num_ks), np.float64)
    np.divide(frame_hits, per_frame[:, None], out=recall, where=evaluated[:, None])
    # bincount adds in input order (frame order): a video's sum does not depend on its batch
    k_index = np.arange(num_ks)[None, :]
    recall_sum = np.bincount(
        (batch.frame_video[:, None] * num_ks + k_index).ravel(),
        recall.ravel(),
        num_videos * num_ks,
    )
    out[:, layout.recall_sum] = recall_sum.reshape(num_videos, num_ks)
    hits = np.bincount(video_pred * width + first, minlength=num_videos * _NP * width)
    hits = np.cumsum(hits.reshape(num_videos, _NP, width)[:, :, :num_ks], axis=2)
    out[:, layout.hits] = hits.transpose(0, 2, 1).reshape(num_videos, -1)
    return out


def _summary(rows: np.ndarray, ks: tuple[int, ...], layout: _Layout) -> dict[str, Any]:
    """Reduce per-video rows (already deduplicated) of one constraint to the reported values."""
    frames = int(rows[:, layout.frames].sum())
    counts = rows[:, layout.counts].sum(axis=0)  # integers: exact in any order
    hits = rows[:, layout.hits].sum(axis=0).reshape(len(ks), _NP)
    result: dict[str, Any] = {}
    for j, k in enumerate(ks):
        # fsum is exact: the result does not depend on the order ranks deliver the videos in
        result[f"R@{k}"] = math.fsum(rows[:, layout.recall_sum.start + j].tolist()) / frames
    per_predicate: dict[int, list[float]] = {}
    for j, k in enumerate(ks):
        recall = hits[j] / (counts + _EPS)
        per_predicate[k] = recall.tolist()
        result[f"mR@{k}"] = float(np.sum(recall) / _NP)
    result["per_predicate"] = per_predicate
    result["frames"] = frames
    result["frames_without_gt"] = int(rows[:, layout.frames_without_gt].sum())
    return result


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_ks(ks: Any) -> tuple[int, ...]:
    if isinstance(ks, str | bytes) or not isinstance(ks, Sequence) or len(ks) == 0:
        raise ConfigError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    for k in ks:
        if not _is_int(k) or k < 1:
            raise ConfigError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    if any(b <= a for a, b in itertools.pairwise(ks)):
        raise ConfigError(f"ks must be sorted ascending without repeats, got {list(ks)}")
    return tuple(int(k) for k in ks)


def _check_fraction(name: str, value: Any) -> float:
    if not isinstance(value, Real) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class _ActionGenomeRecallBase(SampleStatsMetric):
    """The shared implementation: one row per video holding every constraint's statistics."""

    required_output_keys = ("gt", "pred")

    def __init__(
        self,
        mode: str,
        constraints: Sequence[str],
        semi_threshold: float,
        iou_threshold: float,
        ks: Sequence[int],
        per_video: bool,
        output_transform: Callable[[Any], Any],
        device: str | torch.device,
    ) -> None:
        if mode not in AG_MODES:
            raise ConfigError(f"mode must be one of 'predcls', 'sgcls', 'sgdet', got {mode!r}")
        for constraint in constraints:
            if constraint not in AG_CONSTRAINTS:
                raise ConfigError(
                    f"constraint must be one of 'with', 'semi', 'no', got {constraint!r}"
                )
        if len(set(constraints)) != len(constraints):
            raise ConfigError(f"constraints must not repeat a value, got {list(constraints)}")
        if not isinstance(per_video, bool):
            raise ConfigError(f"per_video must be a bool, got {per_video!r}")
        self.mode = mode
        self.constraints = tuple(constraints)
        self.semi_threshold = _check_fraction("semi_threshold", semi_threshold)
        self.iou_threshold = _check_fraction("iou_threshold", iou_threshold)
        self.ks = _check_ks(ks)
        self.per_video = per_video
        self._layout = _Layout(self.ks)
        self.row_width = self._layout.width * len(self.constraints)
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    def reset(self) -> None:
        super().reset()
        self._updates = 0
        # scratch memory is kept from one evaluation to the next (only the videos are dropped)
        if "_pending" not in self.__dict__:  # (ignite's Metric answers any getattr)
            self._pending, self._workspace = _Pending(), _Workspace()
        self._pending.clear()

    def update(self, output: Sequence[Any]) -> None:
        """Take one video ``(gt, pred)``.

        - ``gt``: a :class:`~m3sgg.data.structures.VideoGT`, or the STTran list of frames
          ``[{"person_bbox": (1,4) xyxy, "frame": key}, obj, ...]`` (objects with ``"class"``,
          ``"bbox"`` xyxy and the ``attention_relationship``, ``spatial_relationship``,
          ``contacting_relationship`` lists of group-local indices). The sample id is the video
          id (``VideoGT.video_id``, or the frame keys' part before ``/``). A video seen twice
          (the same id and the same ground truth), also on two ranks, counts once: that is the
          sample a distributed sampler pads with. Another video under an id already seen counts
          as its own sample, as the reference counts it (``per_video`` names it ``"id (2)"``).
          A video without an id gets a unique one.
        - ``pred``: a mapping of tensors (any device) or arrays: ``boxes`` [B,5] ``(frame, x1,
          y1, x2, y2)``; ``labels`` and ``scores`` [B] (predcls) or ``pred_labels`` and
          ``pred_scores`` (sgcls, sgdet); ``im_idx`` [P]; ``pair_idx`` [P,2] (person box,
          object box); ``attention_distribution`` [P,3] **logits**; ``spatial_distribution``
          [P,6] and ``contacting_distribution`` [P,17] probabilities. Nothing is modified.

        The input is checked and copied here; the evaluation runs on batches of videos (about
        ``_BATCH_SIZE`` pairs + frames, and the rest at ``compute()``), which gives the numbers
        of evaluating each video alone.
        """
        if not isinstance(output, Sequence) or isinstance(output, str) or len(output) != 2:
            raise TypeError(f"{type(self).__name__}.update expects a pair (gt, pred)")
        gt, pred = output
        if not isinstance(pred, Mapping):
            raise TypeError(f"pred must be a mapping of tensors, got {type(pred).__name__}")
        video_gt, sample_id = self._video_gt(gt)
        self._pending.add(sample_id, video_gt, pred, self.mode)
        self._updates += 1
        if self._pending.size >= _BATCH_SIZE:
            self._flush()

    def _flush(self) -> None:
        """Evaluate the pending videos together and record one row per video."""
        if not self._pending.sample_ids:
            return
        try:
            batch = _make_batch(self._pending, self.iou_threshold, self._workspace)
            rows = np.concatenate(
                [
                    _rows(batch, _first_ranks(batch, c, self.semi_threshold), self.ks, self._layout)
                    for c in self.constraints
                ],
                axis=1,
            )
            sample_ids, keys = list(self._pending.sample_ids), list(self._pending.keys)
        finally:
            self._pending.clear()
        self._record_many(sample_ids, torch.from_numpy(rows), keys)

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._flush()
        return super().gathered()

    def local_samples(self) -> list[tuple[str, torch.Tensor]]:
        self._flush()
        return super().local_samples()

    def _video_gt(self, gt: Any) -> tuple[VideoGT, str]:
        if isinstance(gt, VideoGT):
            video_gt, named = gt, bool(gt.video_id)
        elif isinstance(gt, Sequence) and not isinstance(gt, str | bytes):
            video_gt = VideoGT.from_sttran(gt)
            named = bool(len(gt)) and "frame" in gt[0][0] and bool(video_gt.video_id)
        else:
            raise TypeError(f"gt must be a VideoGT or the STTran list of frames, got {type(gt)}")
        # without an id, a video gets a unique one (so it is never merged with another)
        sample_id = video_gt.video_id if named else f"#{idist.get_rank()}:{self._updates}"
        return video_gt, sample_id

    def _summaries(self) -> dict[str, dict[str, Any]]:
        ids, rows = self.gathered()
        rows_np = rows.numpy()
        width = self._layout.width
        frames = rows_np[:, self._layout.frames].sum() if rows_np.shape[0] else 0
        if frames == 0:
            raise NotComputableError(
                f"{type(self).__name__} needs at least one frame with a GT relation, got "
                f"{rows_np.shape[0]} videos without one"
            )
        names = self.all_names() if self.per_video else {}
        out: dict[str, dict[str, Any]] = {}
        for c, constraint in enumerate(self.constraints):
            block = rows_np[:, c * width : (c + 1) * width]
            result = _summary(block, self.ks, self._layout)
            if self.per_video:
                result["per_video"] = self._per_video(ids.tolist(), block, names)
            out[constraint] = result
        return out

    def _per_video(
        self, ids: list[int], rows: np.ndarray, names: dict[int, str]
    ) -> dict[str, dict[str, float | int]]:
        layout = self._layout
        videos: dict[str, dict[str, float | int]] = {}
        for sample, row in zip(ids, rows, strict=True):
            frames = int(row[layout.frames])
            if frames == 0:
                continue
            entry: dict[str, float | int] = {
                f"R@{k}": float(row[layout.recall_sum.start + j] / frames)
                for j, k in enumerate(self.ks)
            }
            entry["frames"] = frames
            entry["frames_without_gt"] = int(row[layout.frames_without_gt])
            videos[names[sample]] = entry
        return videos


class ActionGenomeRecall(_ActionGenomeRecallBase):
    """R@K, mR@K and per-predicate recall on Action Genome for one mode and constraint.

    ``update((gt, pred))`` takes one video (see :meth:`update` for the accepted forms);
    ``compute()`` returns fractions (papers print ×100)::

        {"R@10": …, "R@20": …, …, "mR@10": …, …, "per_predicate": {10: [26 floats], …},
         "frames": evaluated_frames, "frames_without_gt": skipped_frames}

    ``per_predicate[K]`` follows the order of :data:`m3sgg.vocab.AG_PREDICATES`.

    Args:
        mode: ``"predcls"``, ``"sgcls"`` or ``"sgdet"`` (which labels and scores are read).
        constraint: ``"with"``, ``"semi"`` or ``"no"``.
        semi_threshold: the ``semi`` constraint's strict threshold on spatial/contacting values.
        iou_threshold: subject and object IoU needed for a match (``>=``).
        ks: the K of ``R@K`` and ``mR@K``, ascending.
        per_video: also return ``"per_video"``: ``{video_id: {"R@K": …, "frames": n,
            "frames_without_gt": m}}`` for every video with an evaluated frame.
        output_transform: maps the engine output to ``(gt, pred)``; a mapping output is read
            as ``(output["gt"], output["pred"])``.
        device: ignite's metric device (the evaluation itself runs on the CPU).

    Example:
        >>> import torch
        >>> gt = [[{"person_bbox": torch.tensor([[0.0, 0, 10, 10]]), "frame": "v.mp4/000001.png"},
        ...        {"class": 5, "bbox": [20.0, 0, 30, 10], "attention_relationship": [0],
        ...         "spatial_relationship": [], "contacting_relationship": [8]}]]
        >>> pred = {"boxes": torch.tensor([[0.0, 0, 0, 10, 10], [0.0, 20, 0, 30, 10]]),
        ...         "labels": torch.tensor([1, 5]), "scores": torch.ones(2),
        ...         "im_idx": torch.zeros(1), "pair_idx": torch.tensor([[0, 1]]),
        ...         "attention_distribution": torch.tensor([[5.0, 0, 0]]),
        ...         "spatial_distribution": torch.full((1, 6), 0.1),
        ...         "contacting_distribution": torch.full((1, 17), 0.2)}
        >>> metric = ActionGenomeRecall("predcls", "with")
        >>> metric.update((gt, pred))
        >>> metric.compute()["R@10"]  # looking_at recalled; not_contacting predicted 'carrying'
        0.5
    """

    def __init__(
        self,
        mode: str = "predcls",
        constraint: str = "with",
        semi_threshold: float = 0.9,
        iou_threshold: float = 0.5,
        ks: Sequence[int] = (10, 20, 50, 100),
        per_video: bool = False,
        output_transform: Callable[[Any], Any] = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        if not isinstance(constraint, str):
            raise ConfigError(f"constraint must be one of 'with', 'semi', 'no', got {constraint!r}")
        super().__init__(
            mode,
            (constraint,),
            semi_threshold,
            iou_threshold,
            ks,
            per_video,
            output_transform,
            device,
        )
        self.constraint = constraint

    def compute(self) -> dict[str, Any]:
        """``R@K``, ``mR@K``, ``per_predicate``, ``frames``, ``frames_without_gt`` (and
        ``per_video`` if asked)."""
        return self._summaries()[self.constraint]


class ActionGenomeRecallSuite(_ActionGenomeRecallBase):
    """Several constraints in one pass: the shared work (softmax, IoUs, matches) is done once.

    ``compute()`` returns the values of :class:`ActionGenomeRecall` for every constraint, keyed
    ``"<constraint>/<key>"``: ``"with/R@20"``, ``"no/mR@50"``, ``"semi/per_predicate"``,
    ``"with/frames"``, … Attached to an evaluator, ignite puts each key in
    ``engine.state.metrics``. The numbers are exactly those of one :class:`ActionGenomeRecall`
    per constraint.

    Args:
        mode: ``"predcls"``, ``"sgcls"`` or ``"sgdet"``.
        constraints: the constraints to evaluate, any of ``"with"``, ``"semi"``, ``"no"``.
        semi_threshold, iou_threshold, ks, per_video, output_transform, device: as for
            :class:`ActionGenomeRecall`.

    Example:
        >>> suite = ActionGenomeRecallSuite("sgdet", ks=(20, 50))
        >>> # evaluator.attach(suite, "ag")  ->  state.metrics["with/R@20"], ["no/mR@50"], ...
    """

    def __init__(
        self,
        mode: str = "predcls",
        constraints: Sequence[str] = AG_CONSTRAINTS,
        semi_threshold: float = 0.9,
        iou_threshold: float = 0.5,
        ks: Sequence[int] = (10, 20, 50, 100),
        per_video: bool = False,
        output_transform: Callable[[Any], Any] = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        if isinstance(constraints, str) or not isinstance(constraints, Sequence) or not constraints:
            raise ConfigError(
                f"constraints must be a non-empty sequence of 'with', 'semi', 'no', got "
                f"{constraints!r}"
            )
        super().__init__(
            mode,
            tuple(constraints),
            semi_threshold,
            iou_threshold,
            ks,
            per_video,
            output_transform,
            device,
        )

    def compute(self) -> dict[str, Any]:
        """Every constraint's results, keys prefixed by ``"<constraint>/"``."""
        return {
            f"{constraint}/{key}": value
            for constraint, result in self._summaries().items()
            for key, value in result.items()
        }

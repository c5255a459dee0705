"""A batch of pending videos: the constraint-independent work (renumbered tables, box IoUs,
person matches, and the (direction, pair, predicate) keys that recall each GT relation)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from m3sgg.metrics.action_genome.tables import (
    _NP,
    _OFFSETS,
    _PERSON,
    _PREDICATE_GROUP,
    _REVERSED_BLOCK,
    _WIDTHS,
    _Pending,
)


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

"""Ranking the candidates of each constraint within their frames, and reducing the best ranks
of the GT relations to per-video rows and the R@K / mR@K summary."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from m3sgg.metrics.action_genome.batch import _Batch, _group_slots
from m3sgg.metrics.action_genome.tables import (
    _EPS,
    _NO_RANK,
    _NP,
    _OFFSETS,
    _PREDICATE_GROUP,
    _REVERSED_BLOCK,
    _WIDTHS,
    NO_CONSTRAINT_TOP,
)

# --------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------


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

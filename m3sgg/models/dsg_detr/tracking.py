"""DSG-DETR's object sequences: which boxes of a video are one object across frames.

DSG-DETR (Feng et al., WACV 2023; ``lib/track.py``) relates the boxes of one object over time
with an encoder, so it first partitions each video's boxes into *sequences*. The rule depends on
the mode:

- **predcls**: boxes with the same ground-truth label form one sequence (over the whole video;
  two objects of one class in a frame share it) — :func:`group_by_key` on the labels;
- **sgdet**: the same by the detector's arg-max class — :func:`group_by_key` on it;
- **sgcls**: an online tracker over the annotated frames in order (:func:`track_video`):

  1. each frame's boxes are matched one-to-one to the live tracks by a
     :class:`~m3sgg.models.matching.HungarianMatcher` (default cost 0.5 class + 1 feature +
     1 L1 box + 0.5 (-GIoU)) on the boxes as ``(x, y, w, h)`` divided by the image size, the
     one-hot arg-max class of the detector's distribution, and the box features; a track brings
     its last box and the *mean* one-hot class and feature of the boxes it took so far;
  2. a matched box joins the track when its class cost *or* its feature cost is below
     ``accept`` (0.5); a box not matched, or matched but refused, opens a new sequence and a
     new track;
  3. a box outside the image (``x1 < 0``, ``y1 < 0``, ``x2 > W`` or ``y2 > H``) never starts a
     track and never updates one: alone it stays a one-box sequence, and a match accepted for it
     still puts it in that track's sequence but leaves the track as it was;
  4. a track not updated in a frame dies when the frame number (from the frame key,
     ``"video.mp4/000123.png"`` → 123) is ``expiry`` (50) or more past its last update. Expiry is
     checked only on frames where the track goes unmatched, so a track matched again after a
     long gap with no annotated frame in between lives on.

Faithful quirks of the original, kept on purpose: the normalisation divides x and widths by the
image *height* and y and heights by the *width* (``w, h = shape`` unpacked from ``(H, W)``; the
out-of-image test is not affected); the column order of the cost matrix is the tracks' creation
order with dead ones removed (it breaks ties in the assignment). One original bug is *not* kept:
it offsets box indices by the box counts of non-empty frames only, so a frame with no boxes
shifts every later index; here indices are always the true ones (equal whenever every frame has
a box, as with ground-truth boxes, where the person is in every frame).

All functions return one sequence id per box (ids ``0..S-1`` in order of creation) and are
deterministic. :func:`sequence_positions` gives each box its position in its sequence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from m3sgg.models.matching import (
    HungarianMatcher,
    Match,
    MatchTerms,
    box_xyxy_to_xywh,
    unit_rows,
)

__all__ = [
    "ACCEPT_COST",
    "EXPIRY_FRAMES",
    "frame_number",
    "group_by_key",
    "sequence_positions",
    "track_batch",
    "track_video",
]

#: A matched box joins its track when its class or feature cost is below this (``track.py:197``).
ACCEPT_COST = 0.5
#: A track unmatched this many frame numbers after its last update ends (``track.py:55``).
EXPIRY_FRAMES = 50

_FRAME_NUMBER = re.compile(r"(\d+)(?:\.[A-Za-z0-9]+)?$")


def frame_number(key: str) -> int:
    """The frame number of a frame key: ``"50N4E.mp4/000682.png"`` → 682.

    Raises:
        ValueError: the key does not end in a number (with an optional extension).
    """
    match = _FRAME_NUMBER.search(key.rsplit("/", 1)[-1])
    if match is None:
        raise ValueError(f"frame key {key!r} does not end in a frame number")
    return int(match.group(1))


def group_by_key(*keys: Tensor) -> Tensor:
    """One sequence per distinct tuple of ``keys`` (e.g. video and label): int64 ids ``[N]``.

    Ids follow the ascending order of the key tuples (first key most significant), which for
    one video and the labels is the original's ``labels.unique()`` order.
    """
    if not keys:
        raise ValueError("group_by_key needs at least one key")
    stacked = torch.stack([k.long() for k in keys], dim=1)
    if stacked.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=stacked.device)
    _, inverse = torch.unique(stacked, dim=0, return_inverse=True)
    return inverse


def sequence_positions(sequence: Tensor, rank_key: Tensor | None = None) -> Tensor:
    """Position of each element in its sequence (elements in index order within a sequence).

    Args:
        sequence: int64 ``[N]`` sequence id of each element.
        rank_key: None: the position is the element's rank among its sequence's elements (0, 1,
            2, ...). Otherwise int64 ``[N]`` (e.g. the frame): the position is the dense rank of
            its key among the sequence's distinct keys (equal keys share a position), as the
            original's sgdet positions by frame.

    Returns:
        int64 ``[N]``.
    """
    n = sequence.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=sequence.device)
    index = torch.arange(n, device=sequence.device)
    key = torch.zeros_like(index) if rank_key is None else rank_key.long()
    span = int(key.max()) + 1
    order = torch.argsort((sequence * span + key) * n + index)
    seq_sorted, key_sorted = sequence[order], key[order]
    new_seq = torch.ones(n, dtype=torch.bool, device=sequence.device)
    new_seq[1:] = seq_sorted[1:] != seq_sorted[:-1]
    steps = torch.ones(n, dtype=torch.int64, device=sequence.device)
    if rank_key is not None:
        steps[1:] = (key_sorted[1:] != key_sorted[:-1]).long()
    steps[new_seq] = 0
    # cumulative steps, restarted at each sequence's first element
    total = torch.cumsum(steps, 0)
    start = torch.cummax(torch.where(new_seq, total, torch.zeros_like(total)), 0).values
    positions = torch.empty_like(total)
    positions[order] = total - start
    return positions


def _outside(xywh: Tensor, height: float, width: float) -> Tensor:
    """Boxes reaching out of a ``height x width`` image (the original's test, on xywh boxes)."""
    x, y, w, h = xywh.unbind(-1)
    return (x + w > width) | (y + h > height) | (x < 0) | (y < 0)


class _Tracks:
    """The tracker's state, one row per track ever created (at most one per box), in numpy:
    sequence id, last box (index into the video's boxes), time of the last update, running sums
    of the one-hot classes and features (float64, as the original's means) and box counts."""

    def __init__(self, feats: np.ndarray, onehot: np.ndarray) -> None:
        n = len(feats)
        self.feats, self.onehot = feats, onehot  # float32 [n, D], [n, C]; summed in float64
        self.seq = np.zeros(n, dtype=np.int64)
        self.last = np.zeros(n, dtype=np.int64)
        self.time = np.zeros(n, dtype=np.int64)
        self.feat_sum = np.zeros(feats.shape, dtype=np.float64)
        self.dist_sum = np.zeros(onehot.shape, dtype=np.float64)
        self.count = np.zeros(n, dtype=np.float64)
        self.size = 0
        #: tracks whose sums changed since :meth:`take_changed`
        self.changed: list[np.ndarray] = []

    def update(self, tracks: np.ndarray, boxes: np.ndarray, now: int) -> None:
        """Tracks ``tracks`` (distinct) take boxes ``boxes`` at frame number ``now``."""
        self.last[tracks] = boxes
        self.time[tracks] = now
        self.feat_sum[tracks] += self.feats[boxes]
        self.dist_sum[tracks] += self.onehot[boxes]
        self.count[tracks] += 1
        self.changed.append(tracks)

    def open(self, boxes: np.ndarray, seq: np.ndarray, now: int) -> np.ndarray:
        """New tracks started by ``boxes`` in sequences ``seq``; returns their rows."""
        new = self.size + np.arange(len(boxes))
        self.seq[new] = seq
        self.last[new] = boxes
        self.time[new] = now
        self.feat_sum[new] = self.feats[boxes]
        self.dist_sum[new] = self.onehot[boxes]
        self.count[new] = 1
        self.size += len(boxes)
        self.changed.append(new)
        return new

    def means(self, tracks: np.ndarray) -> tuple[Tensor, Tensor]:
        """Mean feature and mean one-hot class of ``tracks``, float32."""
        count = self.count[tracks][:, None]
        return (
            torch.from_numpy(self.feat_sum[tracks] / count).float(),
            torch.from_numpy(self.dist_sum[tracks] / count).float(),
        )

    def take_changed(self) -> np.ndarray:
        """The tracks changed since the last call (possibly repeated)."""
        changed = np.concatenate(self.changed) if self.changed else np.zeros(0, np.int64)
        self.changed = []
        return changed


#: ``assign(lo, hi, live)``: the matched rows of the frame's boxes ``lo:hi``, the positions in
#: ``live`` of their tracks, and whether each match is accepted.
_Assign = Callable[[int, int, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _accepted(match: Match, accept: float) -> np.ndarray:
    return ((match.class_cost < accept) | (match.feature_cost < accept)).numpy()


def _call_matcher(
    matcher: HungarianMatcher,
    tracks: _Tracks,
    norm: Tensor,
    xywh: Tensor,
    scale: Tensor,
    feats: Tensor,
    onehot: Tensor,
    accept: float,
) -> _Assign:
    """Calls ``matcher`` on each frame's boxes and the live tracks (any matcher)."""

    def assign(lo: int, hi: int, live: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tracks.take_changed()
        mean_feat, mean_dist = tracks.means(live)
        match = matcher(
            {"boxes": norm[lo:hi], "features": feats[lo:hi], "dists": onehot[lo:hi]},
            {
                "boxes": xywh[torch.from_numpy(tracks.last[live])] / scale,
                "features": mean_feat,
                "dists": mean_dist,
            },
        )
        return match.rows.numpy(), match.cols.numpy(), _accepted(match, accept)

    return assign


def _prepared(
    matcher: HungarianMatcher,
    tracks: _Tracks,
    norm: Tensor,
    feats: Tensor,
    onehot: Tensor,
    accept: float,
) -> _Assign:
    """The same assignment for a :class:`HungarianMatcher` whose ``forward`` and
    ``cost_matrix`` are its own, with fewer operations per frame: the boxes' cost terms
    (``(cx, cy, w, h)``, ``xyxy``, unit-norm one-hot and features) are prepared once per video;
    a track's box terms are those of its last box (picked by index), and its unit-norm means
    are recomputed only when it changed. Every cost is the value the per-frame call computes:
    these terms are row-wise, so a row does not depend on the rows computed with it."""
    boxes = matcher.terms({"boxes": norm, "features": feats, "dists": onehot})
    unit_feat = torch.empty_like(feats)  # a track's row is written when it is created
    unit_dist = torch.empty_like(onehot)

    def assign(lo: int, hi: int, live: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        changed = tracks.take_changed()
        if len(changed):
            mean_feat, mean_dist = tracks.means(changed)
            index = torch.from_numpy(changed)
            unit_feat[index] = unit_rows(mean_feat)
            unit_dist[index] = unit_rows(mean_dist)
        rows = torch.from_numpy(live)
        last = torch.from_numpy(tracks.last[live])
        targets = MatchTerms(
            boxes.cxcywh[last], boxes.xyxy[last], boxes.area[last], unit_dist[rows], unit_feat[rows]
        )
        frame = boxes.rows(slice(lo, hi))
        costs = matcher.appearance_costs(frame, targets) + matcher.box_costs(frame, targets)
        match = matcher.match_costs(*costs)
        return match.rows.numpy(), match.cols.numpy(), _accepted(match, accept)

    return assign


def _own_costs(matcher: HungarianMatcher) -> bool:
    """The matcher computes DSG-DETR's cost as :class:`HungarianMatcher` does."""
    kind = type(matcher)
    return (
        isinstance(matcher, HungarianMatcher)
        and kind.forward is HungarianMatcher.forward
        and kind.cost_matrix is HungarianMatcher.cost_matrix
    )


@torch.no_grad()
def track_video(
    boxes: Tensor,
    frame: Tensor,
    class_dists: Tensor,
    features: Tensor,
    frame_numbers: Sequence[int],
    image_size: tuple[float, float],
    matcher: HungarianMatcher | None = None,
    accept: float = ACCEPT_COST,
    expiry: int = EXPIRY_FRAMES,
) -> Tensor:
    """Online Hungarian tracking of one video's boxes (sgcls), as described in the module.

    Args:
        boxes: ``[n, 4]`` xyxy in pixels, ordered by frame.
        frame: int64 ``[n]`` video-local frame index of each box (non-decreasing).
        class_dists: ``[n, C]`` class scores (only the arg-max per box is used).
        features: ``[n, D]`` box features.
        frame_numbers: ``F`` frame numbers (timestamps in the video) of the frames.
        image_size: ``(height, width)`` of the video's images, in the boxes' pixels.
        matcher: the assignment (default ``HungarianMatcher()``, DSG-DETR's weights; it gets
            ``(x, y, w, h)`` boxes). A :class:`~m3sgg.models.matching.HungarianMatcher` that
            keeps its own ``forward`` and ``cost_matrix`` runs on cost terms prepared once per
            video (the same costs, fewer operations); any other is called once per frame.
        accept: a match is accepted when its class or feature cost is below this.
        expiry: frame-number gap after which an unmatched track ends.

    Returns:
        int64 ``[n]`` sequence id of each box (on ``boxes.device``), ids in order of creation.
    """
    matcher = matcher if matcher is not None else HungarianMatcher()
    device = boxes.device
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    frame = frame.detach().cpu().long()
    if bool((frame[1:] < frame[:-1]).any()):
        raise ValueError("track_video: boxes must be ordered by frame")
    xywh = box_xyxy_to_xywh(boxes.detach().cpu().float())
    height, width = float(image_size[0]), float(image_size[1])
    scale = torch.tensor([[height, width, height, width]])  # the original's (w, h) = (H, W)
    norm = xywh / scale
    outside = _outside(xywh, height, width).numpy()
    dists = class_dists.detach().cpu().float()
    onehot = F.one_hot(dists.argmax(1), dists.shape[1]).float()
    feats = features.detach().cpu().float()
    starts = torch.searchsorted(frame, torch.arange(len(frame_numbers) + 1)).tolist()
    tracks = _Tracks(feats.numpy(), onehot.numpy())
    if _own_costs(matcher):
        assign = _prepared(matcher, tracks, norm, feats, onehot, accept)
    else:
        assign = _call_matcher(matcher, tracks, norm, xywh, scale, feats, onehot, accept)

    sequence = np.full(n, -1, dtype=np.int64)
    live = np.zeros(0, dtype=np.int64)  # live tracks in creation order
    none = np.zeros(0, dtype=np.int64)
    num_seqs = 0
    for f, now in enumerate(frame_numbers):
        lo, hi = starts[f], starts[f + 1]
        matched_rows, refused_rows, updated = none, none, none
        if len(live) and hi > lo:
            rows, cols, ok = assign(lo, hi, live)
            r, t = rows[ok], live[cols[ok]]
            sequence[lo + r] = tracks.seq[t]
            inside = ~outside[lo + r]
            r, updated = r[inside], t[inside]
            tracks.update(updated, lo + r, now)
            matched_rows, refused_rows = rows, rows[~ok]
        unmatched = np.ones(hi - lo, dtype=bool)
        unmatched[matched_rows] = False
        opened = np.concatenate([refused_rows, np.flatnonzero(unmatched)])  # the original's order
        sequence[lo + opened] = num_seqs + np.arange(len(opened))
        starters = opened[~outside[lo + opened]]
        new = tracks.open(lo + starters, sequence[lo + starters], now)
        num_seqs += len(opened)
        fresh = np.zeros(tracks.size, dtype=bool)
        fresh[updated] = True
        keep = (now - tracks.time[live] < expiry) | fresh[live]
        live = np.concatenate([live[keep], new])
    if bool((sequence < 0).any()):
        raise ValueError("track_video: some boxes lie outside the given frames")
    return torch.from_numpy(sequence).to(device)


def track_batch(
    boxes: Tensor,
    box_offsets: Sequence[int],
    frame_offsets: Sequence[int],
    class_dists: Tensor,
    features: Tensor,
    frame_numbers: Sequence[Sequence[int]],
    image_sizes: Sequence[tuple[float, float]],
    matcher: HungarianMatcher | None = None,
    accept: float = ACCEPT_COST,
    expiry: int = EXPIRY_FRAMES,
) -> Tensor:
    """:func:`track_video` on every video of a batch; sequence ids made batch-wide.

    Args:
        boxes: ``[N, 5]``: batch-level frame index, then xyxy.
        box_offsets, frame_offsets: ``V + 1`` offsets of each video's boxes and frames.
        class_dists, features: ``[N, C]``, ``[N, D]``.
        frame_numbers: per video, its frames' numbers.
        image_sizes: per video, ``(height, width)``.

    Returns:
        int64 ``[N]`` sequence ids, video 0's first.
    """
    parts, base = [], 0
    for v in range(len(box_offsets) - 1):
        lo, hi = box_offsets[v], box_offsets[v + 1]
        ids = track_video(
            boxes[lo:hi, 1:],
            boxes[lo:hi, 0].long() - frame_offsets[v],
            class_dists[lo:hi],
            features[lo:hi],
            frame_numbers[v],
            image_sizes[v],
            matcher,
            accept,
            expiry,
        )
        parts.append(ids + base)
        base += int(ids.max()) + 1 if len(ids) else 0
    if not parts:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    return torch.cat(parts)

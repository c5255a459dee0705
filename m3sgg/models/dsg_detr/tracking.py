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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from m3sgg.models.matching import HungarianMatcher, box_xyxy_to_xywh

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
            ``(x, y, w, h)`` boxes).
        accept: a match is accepted when its class or feature cost is below this.
        expiry: frame-number gap after which an unmatched track ends.

    Returns:
        int64 ``[n]`` sequence id of each box (on ``boxes.device``), ids in order of creation.
    """
    matcher = matcher if matcher is not None else HungarianMatcher()
    device = boxes.device
    n = boxes.shape[0]
    sequence = torch.full((n,), -1, dtype=torch.int64)
    if n == 0:
        return sequence.to(device)
    frame = frame.detach().cpu().long()
    if bool((frame[1:] < frame[:-1]).any()):
        raise ValueError("track_video: boxes must be ordered by frame")
    xywh = box_xyxy_to_xywh(boxes.detach().cpu().float())
    height, width = float(image_size[0]), float(image_size[1])
    scale = torch.tensor([[height, width, height, width]])  # the original's (w, h) = (H, W)
    norm = xywh / scale
    outside = _outside(xywh, height, width)
    dists = class_dists.detach().cpu().float()
    onehot = F.one_hot(dists.argmax(1), dists.shape[1]).float()
    feats = features.detach().cpu().float()
    starts = torch.searchsorted(frame, torch.arange(len(frame_numbers) + 1)).tolist()

    # track state, one row per track ever created (at most one per box)
    track_seq = torch.zeros(n, dtype=torch.int64)
    track_box = torch.zeros(n, 4)
    track_time = torch.zeros(n, dtype=torch.int64)
    feat_sum = torch.zeros(n, feats.shape[1], dtype=torch.float64)
    dist_sum = torch.zeros(n, onehot.shape[1], dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    live = torch.zeros(0, dtype=torch.int64)  # live tracks in creation order
    num_tracks = num_seqs = 0

    for f, now in enumerate(frame_numbers):
        lo, hi = starts[f], starts[f + 1]
        rows = torch.arange(hi - lo)
        matched_rows = torch.zeros(0, dtype=torch.int64)
        refused_rows = torch.zeros(0, dtype=torch.int64)
        updated = torch.zeros(0, dtype=torch.int64)
        if len(live) and hi > lo:
            mean = count[live].unsqueeze(1)
            match = matcher(
                {"boxes": norm[lo:hi], "features": feats[lo:hi], "dists": onehot[lo:hi]},
                {
                    "boxes": track_box[live] / scale,
                    "features": (feat_sum[live] / mean).float(),
                    "dists": (dist_sum[live] / mean).float(),
                },
            )
            ok = (match.class_cost < accept) | (match.feature_cost < accept)
            r, t = match.rows[ok], live[match.cols[ok]]
            sequence[lo + r] = track_seq[t]
            inside = ~outside[lo + r]
            r, updated = r[inside], t[inside]
            track_box[updated] = xywh[lo + r]
            track_time[updated] = now
            feat_sum[updated] += feats[lo + r].double()
            dist_sum[updated] += onehot[lo + r].double()
            count[updated] += 1
            matched_rows, refused_rows = match.rows, match.rows[~ok]
        unmatched = torch.ones(hi - lo, dtype=torch.bool)
        unmatched[matched_rows] = False
        opened = torch.cat([refused_rows, rows[unmatched]])  # the original's order
        sequence[lo + opened] = num_seqs + torch.arange(len(opened))
        starters = opened[~outside[lo + opened]]
        new = num_tracks + torch.arange(len(starters))
        track_seq[new] = sequence[lo + starters]
        track_box[new] = xywh[lo + starters]
        track_time[new] = now
        feat_sum[new] = feats[lo + starters].double()
        dist_sum[new] = onehot[lo + starters].double()
        count[new] = 1
        num_seqs += len(opened)
        num_tracks += len(starters)
        keep = now - track_time[live] < expiry
        keep[torch.isin(live, updated)] = True
        live = torch.cat([live[keep], new])
    if bool((sequence < 0).any()):
        raise ValueError("track_video: some boxes lie outside the given frames")
    return sequence.to(device)


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

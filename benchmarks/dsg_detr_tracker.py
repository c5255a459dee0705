"""Speed of DSG-DETR's sgcls tracker (``m3sgg.models.dsg_detr.tracking.track_video``) against the
implementation it replaced, measured side by side in one run, with the same tracks.

Before (commit 92b7f40, kept below as ``track_video_before``): torch bookkeeping, and the
matcher called on each frame's boxes and the live tracks, so every frame recomputed the boxes'
cost terms (box conversions, areas, unit-norm features) and the mean features of every live
track. Now: numpy bookkeeping; for the stock ``HungarianMatcher`` the boxes' terms are prepared
once per video (``HungarianMatcher.terms``), a track's box terms are picked by the index of its
last box, and its unit-norm means are recomputed only when it changed. The cost of each pair is
the same number, so the tracks are identical (checked here on the timed videos and on random
videos with exact ties, boxes outside the image and expiring tracks).

The timed videos are Action-Genome-like: ``--frames`` annotated frames (default 100), up to
``--objects`` objects (6) each present in 85% of the frames, 2048-d features, 36 classes, frame
numbers spread over the video. Old and new alternate on each repetition (so a busy machine
slows both alike); the medians and their ratio old/new are printed.

Run: ``python benchmarks/dsg_detr_tracker.py [--frames 100] [--objects 6] [--dim 2048]
[--videos 4] [--repeats 7] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from m3sgg.models.dsg_detr.tracking import ACCEPT_COST, EXPIRY_FRAMES, track_video
from m3sgg.models.matching import HungarianMatcher, box_xyxy_to_xywh


@torch.no_grad()
def track_video_before(
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
    """``track_video`` as of commit 92b7f40 (the reference of this benchmark)."""
    matcher = matcher if matcher is not None else HungarianMatcher()
    n = boxes.shape[0]
    sequence = torch.full((n,), -1, dtype=torch.int64)
    if n == 0:
        return sequence
    frame = frame.detach().cpu().long()
    xywh = box_xyxy_to_xywh(boxes.detach().cpu().float())
    height, width = float(image_size[0]), float(image_size[1])
    scale = torch.tensor([[height, width, height, width]])
    norm = xywh / scale
    x, y, w, h = xywh.unbind(-1)
    outside = (x + w > width) | (y + h > height) | (x < 0) | (y < 0)
    dists = class_dists.detach().cpu().float()
    onehot = F.one_hot(dists.argmax(1), dists.shape[1]).float()
    feats = features.detach().cpu().float()
    starts = torch.searchsorted(frame, torch.arange(len(frame_numbers) + 1)).tolist()
    track_seq = torch.zeros(n, dtype=torch.int64)
    track_box = torch.zeros(n, 4)
    track_time = torch.zeros(n, dtype=torch.int64)
    feat_sum = torch.zeros(n, feats.shape[1], dtype=torch.float64)
    dist_sum = torch.zeros(n, onehot.shape[1], dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    live = torch.zeros(0, dtype=torch.int64)
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
        opened = torch.cat([refused_rows, rows[unmatched]])
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
    return sequence


def ag_like_video(frames: int, objects: int, dim: int, seed: int) -> tuple:
    """Objects drifting across frames with noisy features and mostly stable classes."""
    g = torch.Generator().manual_seed(seed)
    origin = torch.rand(objects, 2, generator=g) * 300
    size = torch.rand(objects, 2, generator=g) * 100 + 20
    codes = torch.randn(objects, dim, generator=g)
    classes = torch.randint(0, 36, (objects,), generator=g)
    boxes, frame, feats, dists = [], [], [], []
    for f in range(frames):
        present = torch.rand(objects, generator=g) < 0.85
        present[0] = True  # the person
        for o in torch.nonzero(present).view(-1).tolist():
            xy = origin[o] + torch.randn(2, generator=g) * 5 + f * 0.5
            boxes.append(torch.cat([xy, xy + size[o]]))
            frame.append(f)
            feats.append(codes[o] + 0.5 * torch.randn(dim, generator=g))
            dist = torch.rand(36, generator=g) * 0.1
            swap = torch.rand(1, generator=g) < 0.1
            dist[torch.randint(0, 36, (1,), generator=g) if swap else classes[o]] = 1.0
            dists.append(dist / dist.sum())
    numbers = sorted(torch.randperm(frames * 10, generator=g)[:frames].tolist())
    return (
        torch.stack(boxes),
        torch.tensor(frame),
        torch.stack(dists),
        torch.stack(feats),
        numbers,
        (480.0, 640.0),
    )


def random_video(g: torch.Generator) -> tuple:
    """Small adversarial videos: exact duplicate boxes and features, boxes outside the image,
    frame-number gaps around the expiry."""
    frames = int(torch.randint(1, 40, (1,), generator=g))
    counts = torch.randint(0, 6, (frames,), generator=g)
    frame = torch.repeat_interleave(torch.arange(frames), counts)
    n = len(frame)
    xy = torch.rand(n, 2, generator=g) * 120 - 10
    boxes = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 60], 1)
    dup = torch.rand(n, generator=g) < 0.3
    boxes[1:][dup[1:]] = boxes[:-1][dup[1:]]
    dists = F.one_hot(torch.randint(0, 5, (n,), generator=g), 8).float()
    dists += torch.rand(n, 8, generator=g) * 0.1
    feats = torch.randn(n, 16, generator=g)
    feats[1:][dup[1:]] = feats[:-1][dup[1:]]
    numbers = torch.cumsum(torch.randint(1, 40, (frames,), generator=g), 0).tolist()
    return boxes, frame, dists, feats, numbers, (100.0, 110.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--random-videos", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    checked = sum(
        torch.equal(track_video_before(*v), track_video(*v))
        for v in (random_video(g) for _ in range(args.random_videos))
    )
    videos = [ag_like_video(args.frames, args.objects, args.dim, s) for s in range(args.videos)]
    boxes = sum(len(v[0]) for v in videos)
    same = all(torch.equal(track_video_before(*v), track_video(*v)) for v in videos)
    print(
        f"identical tracks: {checked}/{args.random_videos} random videos, "
        f"{'all' if same else 'NOT all'} {args.videos} timed videos"
    )
    old, new = [], []
    for _ in range(args.repeats):
        for fn, times in ((track_video_before, old), (track_video, new)):
            start = time.perf_counter()
            for v in videos:
                fn(*v)
            times.append((time.perf_counter() - start) / len(videos))
    before, now = statistics.median(old), statistics.median(new)
    print(
        f"{args.videos} videos of {args.frames} frames ({boxes / args.videos:.0f} boxes, "
        f"{args.dim}-d features), {args.threads} thread(s), median of {args.repeats}:"
    )
    print(f"  before {before * 1e3:7.1f} ms per video")
    print(f"  now    {now * 1e3:7.1f} ms per video")
    print(f"  ratio old/new {before / now:.2f}")
    if checked != args.random_videos or not same:
        raise SystemExit("the tracks differ")


if __name__ == "__main__":
    main()

"""Speed of the Action Genome recall metric against a per-frame version of the same algorithm.

Builds a seeded synthetic predcls evaluation (100 videos × 20 frames × 20 objects = 2,000 frames,
about 80 GT relations per frame), then times, per constraint (``with``, ``semi``, ``no``):

* ``reference``: a straightforward implementation in the style of the reference evaluators,
  written below: it takes the STTran lists, loops over frames and, per frame, builds the GT
  triplets and the 26-column score rows, argsorts, and matches with an IoU matrix (``semi`` also
  loops over rows, as the reference does);
* ``metric``: :class:`m3sgg.metrics.action_genome.ActionGenomeRecall`, vectorized over frames;

and :class:`~m3sgg.metrics.action_genome.ActionGenomeRecallSuite` (all three constraints in one
pass) against three separate metrics and against the three references. Both implementations rank
with stable sorts, so they must give the same hits; the script checks that first (R@K and mR@K,
and the per-predicate recall bit for bit), then prints the medians of a few alternating repeats
and the speed ratios. ``torch`` runs single-threaded on both sides.

It also times the suite fed the STTran lists (each converted by ``VideoGT.from_sttran`` in
``update()``) against the suite fed ``VideoGT``, and the conversion alone.

Run: ``python benchmarks/metrics_speed.py [--repeats 3] [--videos 100]`` (about a minute).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from m3sgg.data.structures import VideoGT
from m3sgg.metrics.action_genome import ActionGenomeRecall, ActionGenomeRecallSuite

KS = (10, 20, 50, 100)
CONSTRAINTS = ("with", "semi", "no")
NUM_PREDICATES = 26


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 500, size=(n, 2))
    wh = rng.uniform(20, 200, size=(n, 2))
    return np.round(np.concatenate([xy, xy + wh], axis=1), 2)


def make_video(
    rng: np.random.Generator, name: str, num_frames: int, num_objects: int
) -> tuple[VideoGT, dict[str, np.ndarray]]:
    """One predcls video: GT and the prediction dict (person box + GT boxes per frame)."""
    person = _random_boxes(rng, num_frames).astype(np.float32)
    obj_frame = np.repeat(np.arange(num_frames), num_objects)
    num_obj = obj_frame.shape[0]
    obj_class = rng.integers(2, 37, size=num_obj)
    obj_boxes = _random_boxes(rng, num_obj)
    rel_obj: list[np.ndarray] = []
    rel_pred: list[np.ndarray] = []
    attention = rng.integers(0, 3, size=num_obj)
    for o in range(num_obj):
        spatial = rng.choice(6, size=rng.integers(0, 4), replace=False) + 3
        contacting = rng.choice(17, size=rng.integers(0, 4), replace=False) + 9
        labels = np.concatenate([[attention[o]], np.sort(spatial), np.sort(contacting)])
        rel_obj.append(np.full(labels.shape[0], o))
        rel_pred.append(labels)
    gt = VideoGT(
        video_id=name,
        frame_keys=tuple(f"{name}/{f:06d}.png" for f in range(num_frames)),
        person_boxes=person,
        obj_frame=obj_frame.astype(np.int64),
        obj_class=obj_class.astype(np.int64),
        obj_boxes=obj_boxes,
        rel_obj=np.concatenate(rel_obj).astype(np.int64),
        rel_pred=np.concatenate(rel_pred).astype(np.int64),
    )
    # boxes: per frame the person, then its objects; pairs (person, object)
    per_frame = num_objects + 1
    box_frame = np.repeat(np.arange(num_frames), per_frame)
    coords = np.empty((num_frames, per_frame, 4), np.float32)
    coords[:, 0] = person
    coords[:, 1:] = obj_boxes.reshape(num_frames, num_objects, 4).astype(np.float32)
    labels = np.concatenate(
        [np.ones((num_frames, 1), np.int64), obj_class.reshape(num_frames, num_objects)], axis=1
    ).ravel()
    sub = np.repeat(np.arange(num_frames) * per_frame, num_objects)
    obj = sub + np.tile(np.arange(1, per_frame), num_frames)
    att_logits = rng.normal(0, 1.5, size=(num_obj, 3)).astype(np.float32)
    att_logits[np.arange(num_obj), attention] += 1.5
    spatial = rng.uniform(0, 0.7, size=(num_obj, 6)).astype(np.float32)
    contacting = rng.uniform(0, 0.7, size=(num_obj, 17)).astype(np.float32)
    for o, p in zip(np.concatenate(rel_obj), np.concatenate(rel_pred), strict=True):
        if 3 <= p < 9:
            spatial[o, p - 3] = rng.uniform(0.3, 1.0)
        elif p >= 9:
            contacting[o, p - 9] = rng.uniform(0.3, 1.0)
    pred = {
        "boxes": np.concatenate([box_frame[:, None], coords.reshape(-1, 4)], axis=1).astype(
            np.float32
        ),
        "labels": labels,
        "scores": np.ones(labels.shape[0], np.float32),
        "pred_labels": labels,
        "pred_scores": np.ones(labels.shape[0], np.float32),
        "im_idx": obj_frame.astype(np.float32),
        "pair_idx": np.stack([sub, obj], axis=1).astype(np.int64),
        "attention_distribution": att_logits,
        "spatial_distribution": spatial,
        "contacting_distribution": contacting,
    }
    return gt, pred


def make_dataset(
    num_videos: int = 100, num_frames: int = 20, num_objects: int = 20, seed: int = 0
) -> list[tuple[VideoGT, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    return [
        make_video(rng, f"bench_{v:04d}.mp4", num_frames, num_objects) for v in range(num_videos)
    ]


# --------------------------------------------------------------------------------------------
# Per-frame reference implementation (the reference evaluators' structure, stable sorts)
# --------------------------------------------------------------------------------------------


def _iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``(G, N)`` IoU of float64 xyxy boxes, "+1 pixel" convention."""
    iw = np.minimum(gt[:, None, 2], pred[None, :, 2]) - np.maximum(gt[:, None, 0], pred[None, :, 0])
    ih = np.minimum(gt[:, None, 3], pred[None, :, 3]) - np.maximum(gt[:, None, 1], pred[None, :, 1])
    iw, ih = iw + 1, ih + 1
    gt_area = ((gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1))[:, None]
    pred_area = ((pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1))[None, :]
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((iw > 0) & (ih > 0), inter / (gt_area + pred_area - inter), 0.0)


def reference_video(
    gt: Sequence[Sequence[Mapping[str, Any]]],
    pred: Mapping[str, Any],
    mode: str,
    constraint: str,
    ks: Sequence[int] = KS,
    semi_threshold: float = 0.9,
    iou_threshold: float = 0.5,
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per frame: ``None`` (no GT relation) or (GT predicates, recalled ``(len(ks), R)``).

    ``gt`` is the STTran list of frames (``VideoGT.to_sttran()``), which the reference
    evaluators consume.
    """

    def array(key: str, dtype: Any, width: int | None = None) -> np.ndarray:
        value = pred[key]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        out = np.asarray(value, dtype=dtype)
        return out.reshape(-1) if width is None else out.reshape(-1, width)

    logits = torch.as_tensor(array("attention_distribution", np.float32, 3))
    attention = torch.softmax(logits, dim=1).numpy()
    spatial = array("spatial_distribution", np.float64, 6)
    contacting = array("contacting_distribution", np.float64, 17)
    boxes = array("boxes", np.float32, 5)[:, 1:].astype(np.float64)
    label_key, score_key = (
        ("labels", "scores") if mode == "predcls" else ("pred_labels", "pred_scores")
    )
    labels = array(label_key, np.int64)
    obj_scores = array(score_key, np.float32)
    im_idx = array("im_idx", np.float64)
    pair_idx = array("pair_idx", np.int64, 2)
    frames: list[tuple[np.ndarray, np.ndarray] | None] = []
    for f, frame in enumerate(gt):
        gt_boxes = np.zeros((len(frame), 4))
        gt_classes = np.zeros(len(frame), np.int64)
        gt_boxes[0] = frame[0]["person_bbox"]
        gt_classes[0] = 1
        rels = []
        for m, obj in enumerate(frame[1:], start=1):
            gt_boxes[m] = obj["bbox"]
            gt_classes[m] = obj["class"]
            for a in obj["attention_relationship"]:
                rels.append((0, m, a))
            for sp in obj["spatial_relationship"]:
                rels.append((m, 0, 3 + sp))
            for c in obj["contacting_relationship"]:
                rels.append((0, m, 9 + c))
        if not rels:
            frames.append(None)
            continue
        gt_rels = np.asarray(rels, np.int64)
        recalled = np.zeros((len(ks), gt_rels.shape[0]), bool)
        in_frame = im_idx == f
        pairs = pair_idx[in_frame]
        n = pairs.shape[0]
        if n:
            rel_inds = np.concatenate([pairs, pairs[:, ::-1], pairs])
            rows = np.zeros((3 * n, NUM_PREDICATES))
            rows[:n, :3] = attention[in_frame]
            rows[n : 2 * n, 3:9] = spatial[in_frame]
            rows[2 * n :, 9:] = contacting[in_frame]
            if constraint == "with":
                pred_rels = np.column_stack([rel_inds, rows.argmax(1)])
                pred_scores = rows.max(1)
            elif constraint == "semi":
                rel_list, score_list = [], []
                for i in range(3 * n):
                    if rows[i, 0] + rows[i, 1] > 0:
                        rel_list.append([*rel_inds[i], rows[i].argmax()])
                        score_list.append(rows[i].max())
                    elif rows[i, 3] + rows[i, 4] > 0 or rows[i, 9] + rows[i, 10] > 0:
                        for k in np.where(rows[i] > semi_threshold)[0]:
                            rel_list.append([*rel_inds[i], k])
                            score_list.append(rows[i, k])
                pred_rels = np.asarray(rel_list, np.int64).reshape(-1, 3)
                pred_scores = np.asarray(score_list, np.float64)
            else:
                overall = obj_scores[rel_inds].prod(1)[:, None] * rows
                top = np.argsort(-overall.ravel(), kind="stable")[:100]
                row, column = np.unravel_index(top, overall.shape)
                pred_rels = np.column_stack([rel_inds[row], column])
                pred_scores = rows[row, column]
            if pred_rels.shape[0]:
                triplet_scores = np.column_stack(
                    [obj_scores[pred_rels[:, 0]], obj_scores[pred_rels[:, 1]], pred_scores]
                ).prod(1)
                pred_rels = pred_rels[np.argsort(-triplet_scores, kind="stable")]
                gt_triplets = np.column_stack(
                    [gt_classes[gt_rels[:, 0]], gt_rels[:, 2], gt_classes[gt_rels[:, 1]]]
                )
                pred_triplets = np.column_stack(
                    [labels[pred_rels[:, 0]], pred_rels[:, 2], labels[pred_rels[:, 1]]]
                )
                same = (gt_triplets[:, None, :] == pred_triplets[None, :, :]).all(2)
                sub_iou = _iou_matrix(gt_boxes[gt_rels[:, 0]], boxes[pred_rels[:, 0]])
                obj_iou = _iou_matrix(gt_boxes[gt_rels[:, 1]], boxes[pred_rels[:, 1]])
                match = same & (sub_iou >= iou_threshold) & (obj_iou >= iou_threshold)
                for j, k in enumerate(ks):
                    recalled[j] = match[:, :k].any(1)
        frames.append((gt_rels[:, 2], recalled))
    return frames


def reference_evaluate(
    videos: Sequence[tuple[VideoGT, Mapping[str, Any]]],
    mode: str,
    constraint: str,
    ks: Sequence[int] = KS,
) -> dict[str, Any]:
    """R@K, mR@K, per-predicate hits and counts over ``videos`` with :func:`reference_video`.

    ``videos`` holds ``(gt, pred)``; ``gt`` is the STTran list or a ``VideoGT`` (converted here).
    """
    recalls: list[list[float]] = [[] for _ in ks]
    hits = np.zeros((len(ks), NUM_PREDICATES))
    counts = np.zeros(NUM_PREDICATES)
    for gt, pred in videos:
        for frame in reference_video(
            gt.to_sttran() if isinstance(gt, VideoGT) else gt, pred, mode, constraint, ks
        ):
            if frame is None:
                continue
            predicates, recalled = frame
            np.add.at(counts, predicates, 1)
            for j in range(len(ks)):
                recalls[j].append(recalled[j].sum() / predicates.shape[0])
                np.add.at(hits[j], predicates[recalled[j]], 1)
    result: dict[str, Any] = {}
    for j, k in enumerate(ks):
        result[f"R@{k}"] = math.fsum(recalls[j]) / len(recalls[j])
        result[f"mR@{k}"] = float(np.sum(hits[j] / (counts + 1e-10)) / NUM_PREDICATES)
    result["hits"], result["counts"] = hits, counts
    return result


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def run_metric(metric: Any, videos: Sequence[tuple[VideoGT, Mapping[str, Any]]]) -> dict:
    metric.reset()
    for video in videos:
        metric.update(video)
    return metric.compute()


def check_equal(
    videos: Sequence[tuple[VideoGT, Mapping[str, Any]]], mode: str = "predcls"
) -> dict[str, dict[str, Any]]:
    """Assert metric == reference (hits and counts exactly, R/mR to 1e-12) for every constraint."""
    references = {}
    suite = run_metric(ActionGenomeRecallSuite(mode, ks=KS), videos)
    for constraint in CONSTRAINTS:
        ref = reference_evaluate(videos, mode, constraint)
        ours = run_metric(ActionGenomeRecall(mode, constraint, ks=KS), videos)
        for j, k in enumerate(KS):
            want = ref["hits"][j] / (ref["counts"] + 1e-10)
            if not np.array_equal(np.asarray(ours["per_predicate"][k]), want):
                raise AssertionError(f"{constraint} per-predicate recall @{k} differs")
            for key in (f"R@{k}", f"mR@{k}"):
                if abs(ours[key] - ref[key]) > 1e-12:
                    raise AssertionError(f"{constraint} {key}: {ours[key]} != {ref[key]}")
        for key, value in ours.items():
            if suite[f"{constraint}/{key}"] != value:
                raise AssertionError(f"suite {constraint}/{key} differs from the single metric")
        references[constraint] = ref
    return references


def median_times(runs: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each run; the runs alternate, so load changes hit all of them."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # both sides call torch.softmax; threads only add noise here
    videos = make_dataset(args.videos, args.frames, args.objects)
    print(f"predcls, {args.videos} videos x {args.frames} frames x {args.objects} objects")
    refs = check_equal(videos)
    print("check: metric == per-frame reference on every constraint (and the suite)")
    for constraint in CONSTRAINTS:
        r = refs[constraint]
        print(
            f"  {constraint:>4}: R@20 {r['R@20']:.4f}  R@50 {r['R@50']:.4f}  mR@50 {r['mR@50']:.4f}"
        )
    # each side gets its natural input: the reference the STTran lists, the metric VideoGT
    sttran = [(gt.to_sttran(), pred) for gt, pred in videos]
    runs: dict[str, Callable[[], Any]] = {}
    for constraint in CONSTRAINTS:
        runs[f"reference {constraint}"] = lambda c=constraint: reference_evaluate(
            sttran, "predcls", c
        )
        metric = ActionGenomeRecall("predcls", constraint)
        runs[f"metric {constraint}"] = lambda m=metric: run_metric(m, videos)
    suite = ActionGenomeRecallSuite("predcls")
    runs["suite"] = lambda: run_metric(suite, videos)
    # the same suite fed the STTran lists: VideoGT.from_sttran converts each video in update()
    runs["suite on STTran lists"] = lambda: run_metric(suite, sttran)
    runs["from_sttran"] = lambda: [VideoGT.from_sttran(gt) for gt, _ in sttran]
    t = median_times(runs, args.repeats)
    print(f"{'':>22}{'reference s':>12}{'metric s':>10}{'ratio':>8}  (median of {args.repeats})")

    def line(label: str, slow: float, fast: float) -> None:
        print(f"{label:>22}{slow:>12.3f}{fast:>10.4f}{slow / fast:>7.1f}x")

    for constraint in CONSTRAINTS:
        line(constraint, t[f"reference {constraint}"], t[f"metric {constraint}"])
    separate = sum(t[f"metric {c}"] for c in CONSTRAINTS)
    print(f"{'':>22}{'3 metrics s':>12}{'suite s':>10}")
    line("suite vs 3 metrics", separate, t["suite"])
    line("suite vs 3 references", sum(t[f"reference {c}"] for c in CONSTRAINTS), t["suite"])
    frames = args.videos * args.frames
    print(f"suite throughput: {frames / t['suite']:,.0f} frames/s (all three constraints)")
    on_lists = t["suite on STTran lists"]
    print(
        f"suite on the STTran lists: {on_lists:.4f} s, {on_lists / t['suite']:.2f}x the time on "
        f"VideoGT; VideoGT.from_sttran: {1000 * t['from_sttran'] * 100 / args.videos:.1f} ms "
        f"per 100 videos"
    )


if __name__ == "__main__":
    main()

"""How fast does the Action Genome reader index a full-size dataset, and with how much memory?

Writes an annotation set shaped like the real release (about 9.8k videos, 288k frames, 2.5 visible
objects per frame plus some invisible ones, real name spellings, person pickle with keypoints, so
both pickles are on the order of 100 MB), then, in a fresh subprocess (so the generator's memory
does not count), times ``ActionGenome(root, "train")`` followed by ``ActionGenome(root, "test")``
and reads the peak resident set size (``ru_maxrss``). Targets: 20 s and 3 GB for both together.

Usage::

    python benchmarks/data_loading.py                 # full scale, temporary folder
    python benchmarks/data_loading.py --scale 0.1     # a tenth, for a quick run
    python benchmarks/data_loading.py --out /data/ag_synthetic   # keep (and reuse) the files
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from m3sgg.vocab import (
    AG_ATTENTION,
    AG_CONTACTING,
    AG_OBJECT_CLASSES,
    AG_PREDICATES,
    AG_SPATIAL,
    squash,
)

TARGET_SECONDS = 20.0
TARGET_BYTES = 3 * 1024**3
FULL_VIDEOS = 9800
FULL_FRAMES = 288_000

_MEASURE = """
import json, resource, sys, time
from m3sgg.data.action_genome import ActionGenome, clear_annotation_cache
root = sys.argv[1]
t0 = time.perf_counter()
train = ActionGenome(root, "train")
t1 = time.perf_counter()
test = ActionGenome(root, "test")
t2 = time.perf_counter()
clear_annotation_cache()
t3 = time.perf_counter()
ActionGenome(root, "test")
t4 = time.perf_counter()
sample = train[len(train) // 2]
t5 = time.perf_counter()
for i in range(len(test)):
    test.video_gt(i)
t6 = time.perf_counter()
print(json.dumps({
    "train_s": t1 - t0, "test_cached_s": t2 - t1, "test_cold_s": t4 - t3,
    "getitem_ms": (t5 - t4) * 1e3, "all_test_videos_s": t6 - t5,
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime
    + resource.getrusage(resource.RUSAGE_SELF).ru_stime,
    "train": {k: train.stats()[k] for k in ("videos", "frames", "objects")},
    "test": {k: test.stats()[k] for k in ("videos", "frames", "objects")},
}))
"""


def generate(out: Path, scale: float = 1.0, seed: int = 0) -> dict[str, int]:
    """Write ``annotations/`` of a synthetic AG-sized dataset under ``out``; returns counts."""
    rng = np.random.default_rng(seed)
    n_videos = max(3, round(FULL_VIDEOS * scale))
    n_frames_target = max(9, round(FULL_FRAMES * scale))
    per_video = rng.poisson(n_frames_target / n_videos - 1, size=n_videos) + 1
    n_frames = int(per_video.sum())
    ann = out / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "object_classes.txt").write_text(
        "".join(squash(c) + "\n" for c in AG_OBJECT_CLASSES[1:])
    )
    (ann / "relationship_classes.txt").write_text("".join(squash(p) + "\n" for p in AG_PREDICATES))

    classes = list(AG_OBJECT_CLASSES[2:])
    spatial, contacting = list(AG_SPATIAL), list(AG_CONTACTING)
    # Per-frame and per-object random numbers drawn in bulk.
    n_visible = rng.poisson(2.3, size=n_frames).clip(0, 8) + (rng.random(n_frames) < 0.9)
    n_hidden = rng.poisson(0.4, size=n_frames)
    n_objects = int((n_visible + n_hidden).sum())
    obj_class = rng.integers(len(classes), size=n_objects)
    xy = rng.uniform(0, 300, size=(n_objects, 2)).round(1)
    wh = rng.uniform(5, 180, size=(n_objects, 2)).round(1)
    att = rng.integers(3, size=n_objects)
    n_spa = rng.choice(3, p=[0.1, 0.75, 0.15], size=n_objects)
    n_con = rng.choice(3, p=[0.15, 0.6, 0.25], size=n_objects)
    spa = rng.integers(len(spatial), size=(n_objects, 2))
    con = rng.integers(len(contacting), size=(n_objects, 2))
    has_person = rng.random(n_frames) < 0.95
    person = rng.uniform(0, 200, size=(n_frames, 1, 4)).astype(np.float32)
    person[:, :, 2:] += person[:, :, :2] + 40  # xyxy
    keypoints = rng.uniform(0, 270, size=(n_frames, 1, 17, 3)).astype(np.float32)

    vids = [f"{i:05X}.mp4" for i in range(n_videos)]
    test_video = rng.random(n_videos) < 0.23
    objects: dict[str, list] = {}
    persons: dict[str, dict] = {}
    empty_box = np.zeros((0, 4), np.float32)
    f = o = 0
    for v, vid in enumerate(vids):
        split = "test" if test_video[v] else "train"
        numbers = np.sort(rng.choice(20000, size=int(per_video[v]), replace=False)).tolist()
        for number in numbers:
            key = f"{vid}/{number:06d}.png"
            meta = {"tag": key, "set": split}
            objs = []
            for _ in range(int(n_visible[f])):
                objs.append(
                    {
                        "class": classes[obj_class[o]],
                        "bbox": (
                            float(xy[o, 0]),
                            float(xy[o, 1]),
                            float(wh[o, 0]),
                            float(wh[o, 1]),
                        ),
                        "attention_relationship": [AG_ATTENTION[att[o]]],
                        "spatial_relationship": [spatial[s] for s in spa[o, : n_spa[o]]],
                        "contacting_relationship": [contacting[c] for c in con[o, : n_con[o]]],
                        "metadata": meta,
                        "visible": True,
                    }
                )
                o += 1
            for _ in range(int(n_hidden[f])):
                objs.append(
                    {
                        "class": classes[obj_class[o]],
                        "bbox": None,
                        "attention_relationship": None,
                        "spatial_relationship": None,
                        "contacting_relationship": None,
                        "metadata": meta,
                        "visible": False,
                    }
                )
                o += 1
            objects[key] = objs
            persons[key] = {
                "bbox": person[f] if has_person[f] else empty_box,
                "bbox_score": np.ones(1 if has_person[f] else 0, np.float32),
                "bbox_size": (480, 270),
                "bbox_mode": "xyxy",
                "keypoints": keypoints[f] if has_person[f] else None,
                "keypoints_logits": keypoints[f, :, :, 2] if has_person[f] else None,
            }
            f += 1
    for name, data in (("person_bbox.pkl", persons), ("object_bbox_and_relationship.pkl", objects)):
        with open(ann / name, "wb") as fh:
            pickle.dump(data, fh, protocol=4)
    (ann / "frame_list.txt").write_text("".join(k + "\n" for k in objects))
    return {
        "videos": n_videos,
        "frames": n_frames,
        "objects": n_objects,
        "visible_objects": int(n_visible.sum()),
    }


def measure(root: Path) -> dict:
    """Index both splits in a fresh interpreter; times and peak RSS from there."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(root)], capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"measurement failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of full AG (1.0)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the dataset here and keep it (reused when it exists)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="m3sgg_ag_bench_") as tmp:
        root = args.out or Path(tmp)
        if (root / "annotations" / "object_bbox_and_relationship.pkl").is_file():
            print(f"reusing {root}")
        else:
            t = time.perf_counter()
            counts = generate(root, args.scale, args.seed)
            print(f"generated {counts} in {time.perf_counter() - t:.1f} s at {root}")
        sizes = {p.name: p.stat().st_size / 1e6 for p in (root / "annotations").glob("*.pkl")}
        print("pickles: " + ", ".join(f"{k} {v:.0f} MB" for k, v in sizes.items()))
        r = measure(root)

    total = r["train_s"] + r["test_cached_s"]
    rss = r["peak_rss_bytes"]
    target_s, target_b = TARGET_SECONDS * args.scale, TARGET_BYTES
    print(f"train split: {r['train']}; test split: {r['test']}")
    print(
        f"index train: {r['train_s']:.2f} s; then test: {r['test_cached_s']:.2f} s (pickles "
        f"cached); test alone, cold: {r['test_cold_s']:.2f} s"
    )
    print(
        f"one video sample: {r['getitem_ms']:.2f} ms; every test video's GT: "
        f"{r['all_test_videos_s']:.2f} s"
    )
    print(
        f"train + test: {total:.2f} s = {total / TARGET_SECONDS:.2f} x the {TARGET_SECONDS:.0f} s "
        f"target"
        + (f" (target scaled to {args.scale}: {target_s:.1f} s)" if args.scale != 1 else "")
    )
    print(
        f"CPU time of the whole measurement (3 readers, imports included): {r['cpu_s']:.2f} s "
        "(less sensitive than wall time to other load on the machine)"
    )
    print(f"peak RSS: {rss / 1024**3:.2f} GB = {rss / target_b:.2f} x the 3 GB target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

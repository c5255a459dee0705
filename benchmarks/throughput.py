"""Training throughput of STTran through the Trainer: the classic style against m3sgg's defaults.

Both styles read the same synthetic Action-Genome-shaped data from a feature store (30 frames per
video, a person and 3 objects per frame, so 3 person-object pairs; 2048-d object and union
features) through the same code path as a real run: ``ActionGenome`` reader, feature store,
``build_loaders`` (resumable sampler, pinned memory on CUDA), collate, ``Trainer`` with its default
handlers (sampler position, NaN guard, loss tracker, console logging every 10 iterations, ...).
They differ only in what the issue calls the classic style:

    classic   one video per step, fp32, no autocast
    m3sgg     --videos-per-batch videos per step (default 32 on CUDA, 8 on CPU), AMP on
              ("auto": bf16 autocast on CUDA; on CPU "auto" means none, so --small keeps fp32)

Full size (the default on CUDA) is STTran as published: d_model 1936, 1 spatial + 3 temporal
layers, 8 heads, feed-forward 2048. ``--small`` (the default on CPU) shrinks the model widths and
the step counts so the whole script runs in about a minute on two cores; the data keep their AG
shape. Measurement: each repeat runs the two styles one after the other (side by side, so a
noisy machine slows both); a run is a fresh one-epoch engine run of ``warmup`` untimed
iterations and then the timed ones (``steps`` for m3sgg, ``steps x videos-per-batch`` for the
classic style, so both train the same videos), timed from the end of iteration ``warmup`` to the
end of the last one (CUDA synchronised at both ends only). Throughput is videos trained per
second; the medians over the repeats and their ratio are printed. No run folder is given, so
nothing is written to disk (checkpoints and metrics.jsonl need a run folder); evaluation is off
(it happens between epochs, outside the timed window anyway).

Usage::

    python benchmarks/throughput.py                  # CPU: --small; CUDA: full size
    python benchmarks/throughput.py --small          # quick, on any device
    python benchmarks/throughput.py --videos-per-batch 64 --num-workers 8 --compile
    python benchmarks/throughput.py --json           # one JSON line, for docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m3sgg.data.features import FeatureStoreWriter, FrameFeatures
from m3sgg.vocab import (
    AG_ATTENTION,
    AG_CONTACTING,
    AG_OBJECT_CLASSES,
    AG_PREDICATES,
    AG_SPATIAL,
    squash,
)

#: STTran as published, and the small widths used with --small
FULL_MODEL = {"d_model": 1936, "heads": 8, "ff_dim": 2048, "enc_layers": 1, "dec_layers": 3}
SMALL_MODEL = {
    "d_model": 128,
    "heads": 4,
    "ff_dim": 256,
    "enc_layers": 1,
    "dec_layers": 3,
    "proj_dim": 64,
    "embed_dim": 32,
    "mask_channels": 16,
}
FRAMES, OBJECTS, FEATURE_DIM = 30, 3, 2048
TARGETS = {"videos_per_s": 1000.0, "ratio": 10.0}  # issue 8, on one H100


# ----------------------------------------------------------------------------- synthetic data


def write_dataset(
    root: Path, train_videos: int, test_videos: int, *, dtype: str = "float32", seed: int = 0
) -> Path:
    """Action Genome annotations and a feature store: every video 30 frames, each frame a person
    and 3 visible objects with attention, spatial and contacting relations."""
    rng = np.random.default_rng(seed)
    ann = root / "annotations"
    ann.mkdir(parents=True)
    classes = "".join(squash(c) + "\n" for c in AG_OBJECT_CLASSES[1:])
    (ann / "object_classes.txt").write_text(classes)
    (ann / "relationship_classes.txt").write_text("".join(squash(p) + "\n" for p in AG_PREDICATES))
    persons: dict[str, dict[str, Any]] = {}
    objects: dict[str, list[dict[str, Any]]] = {}
    frames: list[tuple[str, np.ndarray]] = []
    for v in range(train_videos + test_videos):
        vid = f"{v:05X}.mp4"
        split = "train" if v < train_videos else "test"
        classes = 2 + rng.choice(len(AG_OBJECT_CLASSES) - 2, size=OBJECTS, replace=False)
        for f in range(FRAMES):
            key = f"{vid}/{10 * f + 1:06d}.png"
            person = np.array([[20.0, 20.0, 220.0, 260.0]], np.float32) + rng.uniform(-5, 5)
            boxes = [person[0]]
            entries = []
            for cls in classes.tolist():
                x, y = rng.uniform(0, 300, size=2)
                w, h = rng.uniform(30, 150, size=2)
                boxes.append(np.array([x, y, x + w, y + h], np.float32))
                entries.append(
                    {
                        "class": AG_OBJECT_CLASSES[cls],
                        "bbox": (float(x), float(y), float(w), float(h)),
                        "attention_relationship": [AG_ATTENTION[int(rng.integers(3))]],
                        "spatial_relationship": [AG_SPATIAL[int(rng.integers(len(AG_SPATIAL)))]],
                        "contacting_relationship": [
                            AG_CONTACTING[int(rng.integers(len(AG_CONTACTING)))]
                        ],
                        "metadata": {"tag": key, "set": split},
                        "visible": True,
                    }
                )
            persons[key] = {
                "bbox": person,
                "bbox_score": np.ones(1, np.float32),
                "bbox_size": (480, 270),
                "bbox_mode": "xyxy",
                "keypoints": None,
            }
            objects[key] = entries
            frames.append((key, np.stack(boxes)))
    for name, data in (("person_bbox.pkl", persons), ("object_bbox_and_relationship.pkl", objects)):
        with open(ann / name, "wb") as fh:
            pickle.dump(data, fh, protocol=4)
    (ann / "frame_list.txt").write_text("".join(key + "\n" for key in sorted(objects)))

    pairs = np.stack([np.zeros(OBJECTS, np.int64), np.arange(1, OBJECTS + 1)], axis=1)
    with FeatureStoreWriter(
        root / "features", object_dim=FEATURE_DIM, union_dim=FEATURE_DIM, dtype=dtype
    ) as writer:
        for key, boxes in sorted(frames, key=lambda item: item[0]):
            feats = rng.standard_normal((2 * OBJECTS + 1, FEATURE_DIM), dtype=np.float32)
            writer.add_frame(
                key,
                FrameFeatures(
                    boxes=boxes,
                    box_features=feats[: OBJECTS + 1],
                    pairs=pairs,
                    union_features=feats[OBJECTS + 1 :],
                ),
            )
    return root


class Repeated(torch.utils.data.Dataset):
    """``length`` samples cycling over ``dataset`` (a long epoch from a few distinct videos)."""

    def __init__(self, dataset: Any, length: int):
        self.dataset = dataset
        self.length = length
        self.store = dataset.store

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index % len(self.dataset)]


# ----------------------------------------------------------------------------- the two styles


def build_style(
    root: Path, *, videos_per_batch: int, amp: str, steps: int, options: dict[str, Any], args: Any
) -> Any:
    """A Trainer (default handlers, no run folder) over ``steps`` batches of this style."""
    from m3sgg.config import load_config
    from m3sgg.data.registry import get_dataset_spec
    from m3sgg.engine.builders import build_data, build_loaders
    from m3sgg.engine.trainer import Trainer, resolve_device
    from m3sgg.metrics import build_metrics
    from m3sgg.models.registry import build_model

    overrides = [
        f"data.path={root}",
        f"data.videos_per_batch={videos_per_batch}",
        f"data.num_workers={args.num_workers}",
        f"optim.amp={amp}",
        f"run.device={args.device}",
        "train.eval_every_epochs=0",
        "train.epochs=1",
        f"train.compile={'true' if args.compile else 'false'}",
    ]
    config = load_config(None, overrides)
    spec = get_dataset_spec("action_genome")
    _, train, test = build_data(config)
    device = resolve_device(config.run.device)
    torch.manual_seed(config.run.seed)
    model = build_model(
        "sttran",
        "action_genome",
        "predcls",
        object_dim=train.store.object_dim,
        union_dim=train.store.union_dim,
        **options,
    ).to(device)
    if args.compile:
        model = torch.compile(model)
    train_loader, test_loader = build_loaders(
        config, Repeated(train, steps * videos_per_batch), test, spec.collate(model), device
    )
    return Trainer(
        model,
        config,
        train_loader,
        test_loader,
        metrics=build_metrics("action_genome", "predcls", config.eval),
        split=spec.split,
        device=device,
    )


def timed_run(trainer: Any, warmup: int, steps: int) -> float:
    """A fresh one-epoch run of ``warmup + steps`` iterations; videos/s over the last ``steps``."""
    from ignite.engine import Events

    from m3sgg.engine.handlers.base import FunctionHandler

    marks: dict[str, float] = {}
    videos = [0]
    cuda = trainer.device.type == "cuda"

    def mark(engine: Any) -> None:
        i = engine.state.iteration
        if i > warmup:
            videos[0] += len(engine.state.batch)
        if i in (warmup, warmup + steps):
            if cuda:
                torch.cuda.synchronize(trainer.device)
            marks["start" if i == warmup else "end"] = time.perf_counter()

    name = "throughput_timer"
    if name in trainer.handlers:
        trainer.handlers.remove(name)
    trainer.handlers.add(FunctionHandler(mark, [Events.ITERATION_COMPLETED], name, priority=10_000))
    trainer.engine.run(trainer.dataloader_train, max_epochs=1)
    return videos[0] / (marks["end"] - marks["start"])


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", default=None, help="small widths, few steps")
    size.add_argument("--full", dest="small", action="store_false", help="STTran at full width")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--videos-per-batch",
        type=int,
        default=None,
        help="m3sgg style videos per step (default 32 on CUDA, 8 on CPU)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per run")
    parser.add_argument("--repeats", type=int, default=None, help="runs per style (median)")
    parser.add_argument("--videos", type=int, default=None, help="distinct training videos")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="DataLoader workers (default: 4 on CUDA, 0 on CPU)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default on CPU: 1, stable on a shared machine; CUDA: torch's)",
    )
    parser.add_argument("--store-dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="write the synthetic dataset here and keep it (reused if present)",
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)

    from m3sgg.engine.trainer import resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    small = (not cuda) if args.small is None else args.small
    threads = args.threads or (None if cuda else 1)
    if threads:
        torch.set_num_threads(threads)
    vpb = args.videos_per_batch or (32 if cuda else 8)
    args.num_workers = args.num_workers if args.num_workers is not None else (4 if cuda else 0)
    steps = args.steps or (8 if small else 30)
    warmup = args.warmup or (2 if small else 5)
    repeats = args.repeats or 5
    options = dict(SMALL_MODEL if small else FULL_MODEL)
    n_videos = args.videos or (32 if small else 256)
    classic_steps = steps * vpb  # both styles train the same videos in a timed window

    with tempfile.TemporaryDirectory(prefix="m3sgg-throughput-") as tmp:
        root = args.data or Path(tmp) / "ag"
        if not (root / "features" / "manifest.json").is_file():
            t = time.perf_counter()
            write_dataset(root, n_videos, 4, dtype=args.store_dtype)
            print(f"wrote {n_videos} synthetic videos to {root} in {time.perf_counter() - t:.1f} s")
        styles = {
            "classic": build_style(
                root,
                videos_per_batch=1,
                amp="none",
                steps=warmup + classic_steps,
                options=options,
                args=args,
            ),
            "m3sgg": build_style(
                root,
                videos_per_batch=vpb,
                amp="auto",
                steps=warmup + steps,
                options=options,
                args=args,
            ),
        }
        rates: dict[str, list[float]] = {name: [] for name in styles}
        for _ in range(repeats):
            for name, trainer in styles.items():
                n = classic_steps if name == "classic" else steps
                rates[name].append(timed_run(trainer, warmup, n))
        amp_dtype = styles["m3sgg"].amp_dtype

    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratio = medians["m3sgg"] / medians["classic"]
    card = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    width = "small widths" if small else "full width (d=1936, 1+3 layers, 8 heads, ff 2048)"
    print(
        f"STTran {width}; {FRAMES} frames x {OBJECTS} pairs per video, {FEATURE_DIM}-d "
        f"features ({args.store_dtype} store); device {device} ({card}); "
        f"torch {torch.__version__}"
    )
    print(
        f"  {warmup} warm-up steps, then {steps * vpb} timed videos per run, {repeats} repeats, "
        f"median; "
        f"{args.num_workers} loader workers, {torch.get_num_threads()} torch threads"
        f"{', torch.compile' if args.compile else ''}"
    )
    amp_name = str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "fp32"
    for name, label in (
        ("classic", "classic (1 video/step, fp32)"),
        ("m3sgg", f"m3sgg   ({vpb} videos/step, {amp_name})"),
    ):
        values = ", ".join(f"{v:.1f}" for v in rates[name])
        print(
            f"  {label:<34} {medians[name]:9.1f} videos/s "
            f"({1000 / medians[name]:.2f} ms/video; runs: {values})"
        )
    print(f"  ratio m3sgg / classic: {ratio:.2f}x")
    if cuda and not small:
        ok = medians["m3sgg"] >= TARGETS["videos_per_s"] and ratio >= TARGETS["ratio"]
        print(
            f"  targets (H100): >= {TARGETS['videos_per_s']:.0f} videos/s and >= "
            f"{TARGETS['ratio']:.0f}x: {'met' if ok else 'NOT met'}"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "device": str(device),
                    "card": card,
                    "small": small,
                    "videos_per_batch": vpb,
                    "amp": amp_name,
                    "num_workers": args.num_workers,
                    "threads": torch.get_num_threads(),
                    "compile": args.compile,
                    "classic_videos_per_s": medians["classic"],
                    "m3sgg_videos_per_s": medians["m3sgg"],
                    "ratio": ratio,
                    "runs": rates,
                    "torch": torch.__version__,
                    "python": sys.version.split()[0],
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Engine overhead: the Trainer with every default handler vs a hand-written PyTorch loop.

Both do the same work on the same data: ``--epochs`` epochs of STTran training on the toy
Action Genome dataset (forward, loss, backward, clip to norm 5, AdamW step), an evaluation with
the same metric after each epoch and a checkpoint after each epoch. The hand-written loop is what
a researcher would write without an engine; the Trainer adds ignite's event dispatch and m3sgg's
handlers (sampler position, nan guard, loss tracker, console, evaluation, LR plateau, best and last
checkpoints with fsync, metrics file). Runs alternate (plain, trainer, plain, ...) and the medians
are compared, so machine noise hits both alike.

    python benchmarks/engine_overhead.py [--repeats 5] [--epochs 2] [--videos 480]

Target: ratio (trainer / plain) <= 1.05.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--videos", type=int, default=480, help="toy videos (both splits)")
    args = parser.parse_args()
    logging.getLogger("ignite").setLevel(logging.WARNING)
    logging.getLogger("m3sgg").setLevel(logging.WARNING)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["M3SGG_CACHE"] = str(Path(tmp) / "cache")
        from m3sgg.config import load_config
        from m3sgg.engine.trainer import Trainer

        overrides = [
            f"data.toy_videos={args.videos}",
            f"train.epochs={args.epochs}",
            f"run.output={tmp}/runs",
            "log.every_iters=1000000",
        ]
        plain_times, trainer_times, steps = [], [], 0
        warm = load_config(None, [*overrides, "run.name=warmup"])  # page cache, thread pools
        plain_loop(Trainer.from_config(warm), 1)
        for repeat in range(args.repeats):
            config = load_config(None, [*overrides, f"run.name=plain{repeat}"])
            plain_times.append(plain_loop(Trainer.from_config(config), args.epochs))
            config = load_config(None, [*overrides, f"run.name=trainer{repeat}"])
            trainer = Trainer.from_config(config)
            start = time.perf_counter()
            state = trainer.train_loop()
            trainer_times.append(time.perf_counter() - start)
            steps = state.iteration
            print(
                f"repeat {repeat + 1}: plain {plain_times[-1]:.3f} s, "
                f"trainer {trainer_times[-1]:.3f} s",
                file=sys.stderr,
            )

    plain, ours = statistics.median(plain_times), statistics.median(trainer_times)
    paired = statistics.median(t / p for t, p in zip(trainer_times, plain_times, strict=True))
    print(f"steps per run: {steps} ({args.epochs} epochs, evaluation + checkpoint each epoch)")
    print(f"plain PyTorch loop: median {plain:.3f} s over {args.repeats} runs")
    print(f"m3sgg Trainer:      median {ours:.3f} s over {args.repeats} runs")
    print(f"ratio of medians trainer / plain: {ours / plain:.3f} (target <= 1.05)")
    print(f"median of paired ratios (each trainer run / the plain run before it): {paired:.3f}")


def plain_loop(built, epochs: int) -> float:
    """The same training written by hand, reusing only the built model, loaders and metric."""
    model, optimizer = built.model, built.optimizer
    evaluator = built.evaluator
    metrics = evaluator.metrics_runner.metrics
    split = evaluator.split
    sampler = built.sampler
    folder = Path(built.run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for epoch in range(epochs):
        sampler.set_position(epoch)
        model.train()
        for batch in built.dataloader_train:
            predictions = model(batch)
            losses = model.loss(predictions, batch)
            total = torch.stack(list(losses.values())).sum()
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        for metric in metrics.values():
            metric.reset()
        with torch.no_grad():
            for batch in built.dataloader_test:
                for sample in split(batch, model(batch)):
                    for metric in metrics.values():
                        metric.update(sample)
        for metric in metrics.values():
            metric.compute()
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, folder / "last.pt"
        )
    return time.perf_counter() - start


if __name__ == "__main__":
    main()

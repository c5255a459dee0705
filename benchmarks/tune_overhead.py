"""Per-trial overhead of ``m3sgg tune``: a study's trials vs the same runs trained directly.

A study of ``--trials`` trials over a space of one value (so every trial trains the same config)
runs through :func:`m3sgg.tune.tune` with an SQLite study database and no pruner; the same number
of runs is trained directly (``Trainer.from_config`` + ``train_loop``, one run folder each). The
difference per trial is what the study adds: the trial lock, ``ask``/``tell`` and the per-evaluation
reports in the database, the trial's config, the report handler, and the ``gc.collect()`` between
trials. Blocks alternate (direct, study, direct, ...) and the medians are compared.

    python benchmarks/tune_overhead.py [--trials 10] [--repeats 3] [--videos 8]

The toy trials are tiny on purpose (one epoch of a few videos), so the overhead is not lost in
training time.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--videos", type=int, default=8, help="toy videos (both splits)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["M3SGG_CACHE"] = str(Path(tmp) / "cache")
        import optuna

        from m3sgg.config import config_to_dict, load_config
        from m3sgg.engine.trainer import Trainer
        from m3sgg.tune import TuneSettings, tune

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space = Path(tmp) / "space.yaml"
        space.write_text("optim.lr: {choice: [0.001]}\n")
        overrides = [f"data.toy_videos={args.videos}", "train.epochs=1", "log.every_iters=1000000"]

        def direct(block: str) -> float:
            start = time.perf_counter()
            for i in range(args.trials):
                name = f"run.name=trial-{i:04d}"
                config = load_config(None, [*overrides, f"run.output={tmp}/{block}", name])
                trainer = Trainer.from_config(config)
                trainer.train_loop()
                del trainer
            return time.perf_counter() - start

        def study(block: str) -> float:
            base = load_config(None, [*overrides, f"run.output={tmp}/{block}"])
            settings = TuneSettings(
                study="overhead",
                space=str(space),
                base=config_to_dict(base),
                n_trials=args.trials,
                pruner="none",
                sampler="random",
                seed=0,
            )
            stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115 (restored below)
            try:
                start = time.perf_counter()
                summary = tune(settings)
                elapsed = time.perf_counter() - start
            finally:
                sys.stdout.close()
                sys.stdout = stdout
            assert summary["complete"] == args.trials, summary
            return elapsed

        logging.getLogger("m3sgg").setLevel(logging.WARNING)
        direct("warmup")  # toy data, page cache, thread pools
        gc.collect()
        plain, tuned = [], []
        for repeat in range(args.repeats):
            plain.append(direct(f"direct{repeat}"))
            tuned.append(study(f"study{repeat}"))
            logging.getLogger("m3sgg").setLevel(logging.WARNING)
        per_direct = statistics.median(plain) / args.trials
        per_study = statistics.median(tuned) / args.trials
        print(
            f"trials per block: {args.trials}, repeats: {args.repeats}, toy videos: {args.videos}"
        )
        print(f"direct runs: {', '.join(f'{t:.2f}' for t in plain)} s")
        print(f"study:       {', '.join(f'{t:.2f}' for t in tuned)} s")
        print(
            f"per trial: direct {per_direct:.3f} s, study {per_study:.3f} s, "
            f"overhead {per_study - per_direct:.3f} s/trial"
        )


if __name__ == "__main__":
    main()

"""Per-trial overhead of ``m3sgg tune``: what a study adds around each trial's training.

A study of ``--trials`` tiny toy trials runs through :func:`m3sgg.tune.tune` (SQLite study
database, no pruner). The time of each trial's ``Trainer.from_config`` and ``train_loop`` is
measured in place and subtracted from the study's wall time, and the time of the report handler
(inside ``train_loop``) is added back. What remains, per trial, is the study's own work: the
trial lock and dead-trial check, ``ask``/``tell`` and attributes in the database, the trial's
config, the per-evaluation reports, the progress line, and ``gc.collect()`` between trials.
Measured inside one process around the training itself, the figure does not depend on how fast
the training ran (which varies a lot on a shared machine), only on the study's own steps.

    python benchmarks/tune_overhead.py [--trials 10] [--repeats 3] [--videos 8]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
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
        from m3sgg.tune.trial import TrialReport

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space = Path(tmp) / "space.yaml"
        space.write_text("optim.lr: {log_float: [1e-4, 1e-2]}\n")
        overrides = [f"data.toy_videos={args.videos}", "train.epochs=1", "log.every_iters=1000000"]
        spent = {"training": 0.0, "reports": 0.0}

        def timed(fn, key):
            def wrapper(*a, **kw):
                start = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    spent[key] += time.perf_counter() - start

            return wrapper

        Trainer.from_config = classmethod(timed(Trainer.from_config.__func__, "training"))
        Trainer.train_loop = timed(Trainer.train_loop, "training")
        TrialReport.__call__ = timed(TrialReport.__call__, "reports")

        per_trial, reports = [], []
        for repeat in range(args.repeats + 1):  # the first is a warmup (toy data, caches)
            base = load_config(None, [*overrides, f"run.output={tmp}/study{repeat}"])
            settings = TuneSettings(
                study="overhead",
                space=str(space),
                base=config_to_dict(base),
                n_trials=args.trials,
                pruner="none",
                sampler="tpe",
                seed=0,
            )
            spent.update(training=0.0, reports=0.0)
            with contextlib.redirect_stdout(io.StringIO()):  # the per-trial lines
                start = time.perf_counter()
                summary = tune(settings)
                wall = time.perf_counter() - start
            logging.getLogger("m3sgg").setLevel(logging.WARNING)
            assert summary["complete"] == args.trials, summary
            if repeat:
                overhead = wall - spent["training"] + spent["reports"]
                per_trial.append(overhead / args.trials)
                reports.append(spent["reports"] / args.trials)
                print(
                    f"repeat {repeat}: study {wall:.2f} s, training {spent['training']:.2f} s, "
                    f"overhead {per_trial[-1]:.3f} s/trial (reports {reports[-1]:.4f} s/trial)"
                )
        print(
            f"{args.trials} trials x {args.repeats} repeats, toy videos {args.videos}: median "
            f"overhead {statistics.median(per_trial):.3f} s/trial "
            f"(reports {statistics.median(reports):.4f} s/trial)"
        )


if __name__ == "__main__":
    main()

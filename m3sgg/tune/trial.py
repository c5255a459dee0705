"""One trial: an ordinary m3sgg run in its own folder, reporting to Optuna at every evaluation.

The run is built by :meth:`Trainer.from_config <m3sgg.engine.trainer.Trainer.from_config>` from
the study's base config with the trial's parameters set, in ``<output>/<study>/trial-0007/``
(config.yaml, metrics.jsonl, checkpoints), so it can be evaluated or resumed like any run.
:class:`TrialReport` is a handler on the engine's ``EVALUATION_COMPLETED`` event: it reports the
watched metric to the trial (step k = the run's k-th evaluation), keeps the best value, and stops
the run when the pruner says so. Its counter and best value are in every checkpoint, so a trial
resumed from its last checkpoint goes on reporting at the right step.
"""

from __future__ import annotations

import difflib
import gc
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ignite.engine import Engine

from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import Handler
from m3sgg.errors import ConfigError

__all__ = ["TrialOutcome", "TrialReport", "copy_run_folder", "run_trial", "trial_folder"]


def trial_folder(study_dir: Path, number: int) -> Path:
    """``<study>/trial-0007``."""
    return study_dir / f"trial-{number:04d}"


class TrialReport(Handler):
    """At EVALUATION_COMPLETED: report ``metric`` to the Optuna trial, prune when told.

    Args:
        trial: an ``optuna.Trial`` (anything with ``report`` and ``should_prune``).
        metric: a key of the evaluation's metrics (``"with/mR@20"``).
        direction: ``"maximize"`` or ``"minimize"``: which value is the best.
    """

    name = "trial_report"
    priority = 300  # after checkpoints, metrics file and console have recorded the evaluation

    def __init__(self, trial: Any, metric: str, direction: str = "maximize"):
        self.trial = trial
        self.metric = metric
        self.direction = direction
        self.evaluations = 0
        self.best: float | None = None
        self.last: float | None = None
        self.pruned = False

    def events(self) -> list[Any]:
        return [M3sggEvents.EVALUATION_COMPLETED]

    def __call__(self, engine: Engine) -> None:
        metrics = engine.state.eval_metrics
        if self.metric not in metrics:
            names = [k for k, v in metrics.items() if isinstance(v, int | float)]
            close = difflib.get_close_matches(self.metric, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"--metric {self.metric!r}: not an evaluation metric{hint}")
        value = float(metrics[self.metric])
        self.evaluations += 1
        self.last = value
        if math.isfinite(value) and (
            self.best is None
            or (value > self.best if self.direction == "maximize" else value < self.best)
        ):
            self.best = value
        self.trial.report(value, self.evaluations)
        if self.trial.should_prune():
            self.pruned = True
            engine.state.stop_reason = (
                f"pruned at evaluation {self.evaluations}: {self.metric} {value:.4f}"
            )
            engine.terminate()

    def state_dict(self) -> dict[str, Any]:
        return {"evaluations": self.evaluations, "best": self.best, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.evaluations = int(state["evaluations"])
        self.best = state["best"]
        self.last = state["last"]


@dataclass
class TrialOutcome:
    """What a trial ended with."""

    value: float | None  # the best reported value (None: no evaluation)
    pruned: bool
    evaluations: int
    stop_reason: str | None  # why training stopped early (pruned, signal, NaN guard), or None
    signal: int | None  # the signal that stopped it (SIGINT/SIGTERM), or None
    resumed_from: Path | None


def copy_run_folder(source: Path, target: Path) -> None:
    """Copy a killed trial's folder for its retry: checkpoints are hard-linked when possible
    (they are only ever replaced, never written in place), everything else copied."""

    def link_or_copy(src: str, dst: str) -> None:
        if src.endswith(".pt"):
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
        shutil.copy2(src, dst)

    shutil.copytree(
        source, target, copy_function=link_or_copy, ignore=shutil.ignore_patterns("*.tmp*")
    )


def run_trial(
    trial: Any,
    config: Any,
    run_dir: Path,
    metric: str,
    direction: str,
    *,
    resume_from: Path | None = None,
    earlier_values: dict[int, float] | None = None,
) -> TrialOutcome:
    """Train one trial's run to its end (or until pruned or stopped by a signal).

    Args:
        trial: the Optuna trial that receives the reports.
        config: the trial's resolved :class:`~m3sgg.config.Config`.
        run_dir: the trial's run folder.
        resume_from: a checkpoint to continue from (a retried trial's copied ``last.pt``).
        earlier_values: the killed trial's reports, re-reported for the evaluations the
            checkpoint already holds (so the pruner compares the retry at every step).
    """
    import torch

    from m3sgg.engine.checkpoint import load_checkpoint
    from m3sgg.engine.handlers.graceful_stop import GracefulStop
    from m3sgg.engine.trainer import Trainer

    resumed = resume_from if resume_from is not None and resume_from.is_file() else None
    # from_config resumes the engine, model and its own handlers; the report handler joins
    # afterwards and takes its count and best value from the same checkpoint
    trainer = Trainer.from_config(config, run_dir=run_dir, resume=resumed)
    report = TrialReport(trial, metric, direction)
    trainer.handlers.add(report)
    stop = GracefulStop(trainer.save_checkpoint)
    trainer.handlers.add(stop)
    if resumed is not None:
        saved = load_checkpoint(resumed).get("handlers", {})
        if report.name in saved:
            report.load_state_dict(saved[report.name])
        for step, value in sorted((earlier_values or {}).items()):
            if step <= report.evaluations:
                trial.report(value, step)
    try:
        stop.install()
        if trainer.engine.state.epoch < config.train.epochs:  # a finished checkpoint: done
            trainer.train_loop()
    finally:
        stop.uninstall()
    outcome = TrialOutcome(
        value=report.best,
        pruned=report.pruned,
        evaluations=report.evaluations,
        stop_reason=getattr(trainer.engine.state, "stop_reason", None),
        signal=stop.signal,
        resumed_from=resumed,
    )
    device = trainer.device
    del trainer, report, stop
    gc.collect()  # models, optimizer states and loaders of this trial go before the next one
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return outcome

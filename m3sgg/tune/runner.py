"""Running a study: worker processes taking trials until the study has ``n_trials`` of them.

:func:`tune` is what ``m3sgg tune`` calls. With ``workers`` = 1 the trials run in this process;
with more, that many processes are spawned, each running :func:`worker_loop` on the shared study
(a journal file by default, see :mod:`m3sgg.tune.study`). Each finished trial prints one line:
its number, parameters, value, whether it was pruned, and the best so far.

Example::

    from m3sgg.config import load_config
    from m3sgg.tune import TuneSettings, tune

    settings = TuneSettings(study="lr", space="space.yaml", n_trials=6, seed=0,
                            base=config_to_dict(load_config(None, ["train.epochs=3"])))
    summary = tune(settings)
    print(summary["best_value"], summary["best_params"])
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3sgg.errors import ConfigError, M3sggError

__all__ = ["TuneSettings", "trial_config", "tune", "worker_loop"]


@dataclass
class TuneSettings:
    """Everything a worker needs (plain values: it is sent to spawned processes)."""

    study: str
    space: str
    base: dict[str, Any]  # the base config (config_to_dict of the resolved config)
    n_trials: int
    metric: str | None = None  # None: the first of checkpoint.best_metrics (AG: with/mR@20)
    direction: str = "maximize"
    storage: str | None = None  # None: default_storage(study folder, workers)
    timeout: float | None = None  # seconds after which no new trial starts
    pruner: str = "median"
    sampler: str = "tpe"
    seed: int | None = None
    workers: int = 1
    visdom: str | None = None
    verbose: bool = False
    deadline: float | None = field(default=None, repr=False)  # set by tune() from timeout

    @property
    def study_dir(self) -> Path:
        return Path(self.base["run"]["output"]) / self.study


def _base_config(settings: TuneSettings) -> Any:
    from m3sgg.config import config_from_dict

    return config_from_dict(settings.base)


def trial_config(base: dict[str, Any], params: dict[str, Any], run_dir: Path) -> Any:
    """The config of one trial: ``base`` with ``params`` set, writing into ``run_dir``.

    Raises:
        ConfigError: a combination of values the config refuses.
    """
    import copy

    from m3sgg.config import config_from_dict
    from m3sgg.tune.space import set_key

    tree = copy.deepcopy(base)
    for key, value in params.items():
        set_key(tree, key, value)
    tree["run"]["output"], tree["run"]["name"] = str(run_dir.parent), run_dir.name
    return config_from_dict(tree, "trial config")


def _format_params(params: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else json.dumps(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in params.items()) or "(no parameters)"


def _best_line(study: Any) -> str:
    try:
        best = study.best_trial
    except ValueError:
        return "best: none yet"
    return f"best {best.value:.4f} (trial {best.number})"


def _prepare_study(settings: TuneSettings, worker: int = 0) -> tuple[Any, Any, Any]:
    """``(study, space, base config)``, checking the study was started with the same base
    config and metric. Worker w samples with seed + w (the same seed would repeat draws)."""
    import optuna

    from m3sgg.tune.space import load_space
    from m3sgg.tune.study import (
        BASE_CONFIG,
        METRIC,
        default_storage,
        make_pruner,
        make_sampler,
        open_storage,
        open_study,
        study_lock,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = _base_config(settings)
    space = load_space(settings.space, base)
    metric = settings.metric or base.checkpoint.best_metrics[0]
    seed = None if settings.seed is None else settings.seed + worker
    with study_lock(settings.study_dir):  # processes starting together create it once
        storage = open_storage(
            settings.storage or default_storage(settings.study_dir, settings.workers)
        )
        study = open_study(
            settings.study,
            storage,
            direction=settings.direction,
            sampler=make_sampler(settings.sampler, seed, space),
            pruner=make_pruner(settings.pruner),
        )
        saved = study.user_attrs
        if BASE_CONFIG not in saved:
            study.set_user_attr(BASE_CONFIG, settings.base)
            study.set_user_attr(METRIC, metric)
            study.set_user_attr("m3sgg:space", {p.key: p.kind for p in space.params})
            saved = study.user_attrs
    if saved.get(BASE_CONFIG) is not None:
        _same_base(settings.study, saved[BASE_CONFIG], settings.base)
        if saved.get(METRIC) != metric:
            raise ConfigError(
                f"--metric {metric}: study {settings.study!r} optimises {saved.get(METRIC)}; "
                "keep its metric or pick another --study"
            )
    return study, space, base


def _same_base(study: str, saved: dict[str, Any], ours: dict[str, Any], prefix: str = "") -> None:
    for key in sorted(set(saved) | set(ours)):
        a, b = saved.get(key), ours.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "options":
            _same_base(study, a, b, f"{prefix}{key}.")
        elif a != b:
            raise ConfigError(
                f"study {study!r} was started with another base config ({prefix}{key}: "
                f"{json.dumps(a)} then, {json.dumps(b)} now); use the same --config/--set or "
                "another --study"
            )


def _setup_trial_logging(verbose: bool) -> None:
    """Trial runs log their per-epoch lines only with --verbose; the study prints its own."""
    import logging

    logging.getLogger("m3sgg").setLevel(logging.INFO if verbose else logging.WARNING)


def worker_loop(settings: TuneSettings, worker: int = 0) -> dict[str, Any]:
    """Take trials and run them until the study has ``n_trials`` or the deadline passes.

    Returns ``{"ran": trials run here, "signal": the signal that stopped it or None}``.
    """
    from optuna.trial import TrialState

    from m3sgg.tune.study import RETRY_OF, claim_trial, retire_killed, study_lock
    from m3sgg.tune.trial import copy_run_folder, run_trial, trial_folder

    _setup_trial_logging(settings.verbose)
    study, space, _ = _prepare_study(settings, worker)
    metric = study.user_attrs["m3sgg:metric"]
    plot = _open_plot(settings) if worker == 0 else None
    ran = 0
    while settings.deadline is None or time.time() < settings.deadline:
        claimed = claim_trial(study, settings.study_dir, settings.n_trials)
        if claimed is None:
            break
        trial, recovered = claimed
        for number in recovered:
            _say(f"trial {number} was left running by a process that is gone: marked failed")
        run_dir = trial_folder(settings.study_dir, trial.number)
        params = space.suggest(trial)
        resume_from, earlier = None, None
        retry_of = trial.user_attrs.get(RETRY_OF)
        if retry_of is not None:
            killed = next(t for t in study.get_trials(deepcopy=False) if t.number == retry_of)
            earlier = dict(killed.intermediate_values)
            source = trial_folder(settings.study_dir, retry_of)
            # only a folder with a checkpoint is worth continuing (a fresh start would append
            # to the killed run's metrics.jsonl)
            if (source / "checkpoints" / "last.pt").is_file() and not run_dir.exists():
                copy_run_folder(source, run_dir)
            last = run_dir / "checkpoints" / "last.pt"
            resume_from = last if last.is_file() else None
            where = f"from {last}" if resume_from else "from the start (no checkpoint yet)"
            _say(f"trial {trial.number} retries trial {retry_of} {where}")
        try:
            config = trial_config(settings.base, params, run_dir)
            outcome = run_trial(
                trial,
                config,
                run_dir,
                metric,
                study.direction.name.lower(),
                resume_from=resume_from,
                earlier_values=earlier,
            )
        except M3sggError as err:
            study._storage.set_trial_user_attr(trial._trial_id, "m3sgg:error", str(err))
            study.tell(trial, state=TrialState.FAIL)
            _say(f"trial {trial.number} failed: {err} | {_format_params(params)}")
            if isinstance(err, ConfigError) and "--metric" in str(err):
                raise
            ran += 1
            continue
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        ran += 1
        study._storage.set_trial_user_attr(trial._trial_id, "m3sgg:run_dir", str(run_dir))
        study._storage.set_trial_user_attr(trial._trial_id, "evaluations", outcome.evaluations)
        if outcome.signal is not None:  # SIGINT/SIGTERM: checkpoint saved; retried next time
            with study_lock(settings.study_dir):
                retire_killed(study, trial._trial_id, trial.number, params)
            _say(f"trial {trial.number} interrupted: {outcome.stop_reason}; rerun to continue it")
            return {"ran": ran, "signal": outcome.signal}
        if outcome.pruned:
            study.tell(trial, state=TrialState.PRUNED)
            status = f"pruned ({outcome.stop_reason})"
        elif outcome.value is None or (outcome.stop_reason and not outcome.pruned):
            reason = outcome.stop_reason or "no evaluation ran (train.eval_every_epochs: 0?)"
            study._storage.set_trial_user_attr(trial._trial_id, "m3sgg:error", reason)
            study.tell(trial, state=TrialState.FAIL)
            status = f"failed: {reason}"
        else:
            study.tell(trial, outcome.value)
            status = f"complete: {metric} {outcome.value:.4f}"
        _say(f"trial {trial.number} {status} | {_format_params(params)} | {_best_line(study)}")
        if plot is not None:
            plot.update(study)
    return {"ran": ran, "signal": None}


def _say(line: str) -> None:
    print(line, flush=True)


def _open_plot(settings: TuneSettings) -> Any:
    if not settings.visdom:
        return None
    from m3sgg.tune.plot import StudyPlot

    return StudyPlot(settings.visdom, f"{settings.study}-study")


def _spawned_worker(settings: TuneSettings, worker: int, cores: int) -> None:
    import torch

    torch.set_num_threads(max(1, cores // settings.workers))
    try:
        result = worker_loop(settings, worker)
    except M3sggError as err:
        print(f"m3sgg tune: worker {worker}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(err.exit_code) from None
    raise SystemExit(130 if result["signal"] is not None else 0)


def tune(settings: TuneSettings) -> dict[str, Any]:
    """Run (or continue) a study until it has ``n_trials`` trials; returns a summary.

    Returns:
        ``{"study", "storage", "n_trials", "complete", "pruned", "failed", "best_value",
        "best_params", "best_trial", "exit_code"}``.

    Raises:
        ConfigError: a bad space file, study options that differ from the study's, or a
            metric the evaluation does not produce.
    """
    from m3sgg.tune.study import default_storage

    if settings.n_trials < 1:
        raise ConfigError(f"--n-trials must be >= 1, got {settings.n_trials}")
    if settings.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {settings.workers}")
    if settings.timeout is not None:
        settings.deadline = time.time() + settings.timeout
    if settings.storage is None:
        settings.storage = default_storage(settings.study_dir, settings.workers)
    study, _, _ = _prepare_study(settings)  # validate once, create the study
    exit_code = 0
    if settings.workers == 1:
        exit_code = 130 if worker_loop(settings)["signal"] is not None else 0
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(target=_spawned_worker, args=(settings, w, cores), daemon=False)
            for w in range(settings.workers)
        ]
        for process in processes:
            process.start()
        with _forward_signals(processes):
            for process in processes:
                process.join()
        codes = [p.exitcode for p in processes]
        exit_code = next((c for c in codes if c), 0)
        if exit_code < 0:
            exit_code = 128 - exit_code
    return {**summarise(study), "exit_code": exit_code, "storage": settings.storage}


@contextlib.contextmanager
def _forward_signals(processes: list[Any]) -> Any:
    """SIGINT/SIGTERM to this process reach the workers, which stop their trials cleanly."""

    def forward(signum: int, frame: Any) -> None:
        for process in processes:
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def summarise(study: Any) -> dict[str, Any]:
    """Counts by state and the best trial of a study."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    try:
        best = study.best_trial
    except ValueError:
        best = None
    return {
        "study": study.study_name,
        "n_trials": len(trials),
        "complete": count[TrialState.COMPLETE],
        "pruned": count[TrialState.PRUNED],
        "failed": count[TrialState.FAIL],
        "best_trial": best.number if best else None,
        "best_value": best.value if best else None,
        "best_params": dict(best.params) if best else None,
    }

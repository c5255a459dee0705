"""The study database: where it lives, who runs which trial, and recovering killed trials.

Storage: an SQLAlchemy URL (``sqlite:///runs/NAME/study.db`` by default), or a path to an Optuna
journal file (``runs/NAME/study.journal``, the default when ``--workers`` > 1 starts a new study:
each process appends to the file under a lock, so several processes on one machine never meet
SQLite's "database is locked").

Every trial m3sgg starts carries an owner mark (host, process id, process start time). Workers
take trials one at a time under a lock file in the study folder; while holding it, any RUNNING
trial whose owner process is gone on this host is marked FAIL (``m3sgg:killed``) and enqueued
again with the same parameters (``m3sgg:retry_of``), so that the next worker resumes it from the
killed trial's last checkpoint. A study therefore ends with exactly ``n_trials`` trials that
counted: complete, pruned, or failed by their own error (never a killed one).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from m3sgg.errors import ConfigError

__all__ = [
    "KILLED",
    "OWNER",
    "RETRY_OF",
    "claim_trial",
    "counted",
    "default_storage",
    "load_existing",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "open_study",
    "recover_dead_trials",
    "retire_killed",
    "study_lock",
]

#: system attribute: ``{"host", "pid", "start"}`` of the process running the trial
OWNER = "m3sgg:owner"
#: user attribute of a trial whose process was killed (it does not count; it is retried)
KILLED = "m3sgg:killed"
#: user attribute of a retry: the number of the killed trial it continues
RETRY_OF = "m3sgg:retry_of"
#: study user attributes
BASE_CONFIG = "m3sgg:base_config"
METRIC = "m3sgg:metric"


def default_storage(study_dir: Path, workers: int) -> str:
    """The study's database when ``--storage`` is not given: the one already there, else a
    journal file for several workers, else SQLite."""
    journal, sqlite = study_dir / "study.journal", study_dir / "study.db"
    if journal.exists():
        return str(journal)
    if sqlite.exists() or workers <= 1:
        return f"sqlite:///{sqlite}"
    return str(journal)


def open_storage(storage: str) -> Any:
    """An Optuna storage: an SQLAlchemy URL (``scheme://...``) or a journal file path."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if "://" in storage:
        if storage.startswith("sqlite:///"):
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            # wait for another writer instead of failing with "database is locked"
            return optuna.storages.RDBStorage(
                storage, engine_kwargs={"connect_args": {"timeout": 120}}
            )
        return optuna.storages.RDBStorage(storage)
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(storage))


def load_existing(name: str, storage: Any) -> Any:
    """An existing study (for ``--show`` and ``--export-best``).

    Raises:
        ConfigError: no study of that name in the storage (the message lists the ones there).
    """
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        listing = ", ".join(names) or "none"
        raise ConfigError(
            f"--study: no study {name!r} in this storage (it has: {listing})"
        ) from None


def make_sampler(name: str, seed: int | None, space: Any = None) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":

        class Grid(optuna.samplers.GridSampler):
            """Optuna's grid sampler without its ``study.stop()`` once the grid is covered:
            that only works inside ``study.optimize``; the study stops at ``n_trials``."""

            def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                pass

        return Grid(space.grid(), seed=seed)
    raise ConfigError(f"--sampler: must be one of 'tpe', 'random', 'grid', got {name!r}")


def make_pruner(name: str) -> Any:
    """``median``: stop a trial whose value at an evaluation is below the median of earlier
    trials at that evaluation (from the third trial on); ``hyperband``: Optuna's Hyperband over
    evaluations; ``none``: never."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner: must be one of 'median', 'hyperband', 'none', got {name!r}")


def open_study(
    name: str,
    storage: Any,
    *,
    direction: str = "maximize",
    sampler: Any = None,
    pruner: Any = None,
) -> Any:
    """Load the study ``name``, creating it when new; its direction must match."""
    import optuna

    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"--direction: must be 'maximize' or 'minimize', got {direction!r}")
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"--direction {direction}: study {name!r} was created to "
            f"{study.direction.name.lower()}; keep its direction or pick another --study"
        )
    return study


@contextlib.contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """An exclusive lock (``<study>/.tune.lock``) over taking trials and recovering dead ones."""
    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / ".tune.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_mark() -> dict[str, Any]:
    """This process, as recorded on the trials it runs."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def owner_alive(owner: dict[str, Any] | None) -> bool:
    """Whether the process of an owner mark still runs; an owner on another host counts as
    alive (it cannot be checked from here)."""
    if owner is None:
        return False
    if owner.get("host") != socket.gethostname():
        return True
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return owner.get("start") is None or _start_time(pid) == owner["start"]


def counted(trial: Any) -> bool:
    """Whether a trial counts toward ``n_trials``: complete, pruned, running, or failed by its
    own error; a killed trial (retried elsewhere) and a waiting one do not."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(KILLED)


def recover_dead_trials(study: Any) -> list[int]:
    """Mark the RUNNING trials of dead processes FAIL (killed) and enqueue a retry of each.

    Call it holding :func:`study_lock`: every m3sgg worker marks the trials it takes under that
    lock, so a RUNNING trial without an owner mark seen then was left by a process that died
    while taking it. Returns the numbers of the recovered trials.
    """
    from optuna.trial import TrialState

    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if owner_alive(trial.system_attrs.get(OWNER)):
            continue
        retire_killed(study, trial._trial_id, trial.number, dict(trial.params))
        recovered.append(trial.number)
    return recovered


def retire_killed(study: Any, trial_id: int, number: int, params: dict[str, Any]) -> None:
    """Mark a RUNNING trial FAIL as killed (it stops counting) and enqueue its retry: the same
    parameters, ``m3sgg:retry_of`` naming it, resumed from its folder's ``last.pt``."""
    from optuna.trial import TrialState

    study._storage.set_trial_user_attr(trial_id, KILLED, True)
    study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
    study.enqueue_trial(params, user_attrs={RETRY_OF: number}, skip_if_exists=False)


def claim_trial(study: Any, study_dir: Path, n_trials: int) -> tuple[Any, list[int]] | None:
    """Under the lock: recover dead trials, then ask for a new trial (an enqueued retry first)
    when fewer than ``n_trials`` count. Returns ``(trial, recovered numbers)``, or None when the
    study has its trials."""
    with study_lock(study_dir):
        recovered = recover_dead_trials(study)
        if sum(counted(t) for t in study.get_trials(deepcopy=False)) >= n_trials:
            return None
        trial = study.ask()
        study._storage.set_trial_system_attr(trial._trial_id, OWNER, owner_mark())
    return trial, recovered

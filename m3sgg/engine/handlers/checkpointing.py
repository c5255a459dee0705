"""Checkpoint handlers: ``last_checkpoint`` (resumable, periodic) and ``best_checkpoint``.

Both call ``save(filename) -> Path`` (``Trainer.save_checkpoint``), which writes the full
resumable state atomically and durably. ``best_checkpoint`` keeps the top ``keep`` files of each
watched metric (default ``with/mR@20`` and ``with/R@20``) and deletes a displaced file only after
its replacement is on disk.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events

from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import Handler, watched_metric

__all__ = ["BestCheckpoint", "LastCheckpoint"]

Saver = Callable[[str], Path]


class LastCheckpoint(Handler):
    """At EPOCH_COMPLETED (and every ``every_iters`` iterations), write ``last.pt``.

    ``m3sgg train --resume auto`` continues from it. Runs last so the saved state includes what
    the epoch's other handlers did.
    """

    name = "last_checkpoint"
    priority = 200
    filename = "last.pt"

    def __init__(self, save: Saver, every_iters: int = 0):
        self.save = save
        self.every_iters = every_iters

    def events(self) -> list[Any]:
        events: list[Any] = [Events.EPOCH_COMPLETED]
        if self.every_iters:
            events.append(Events.ITERATION_COMPLETED(every=self.every_iters))
        return events

    def __call__(self, engine: Engine) -> None:
        self.save(self.filename)


def metric_slug(metric: str) -> str:
    """``"with/mR@20"`` → ``"with-mR@20"`` (safe in a file name)."""
    return re.sub(r"[^A-Za-z0-9@._-]+", "-", metric)


class BestCheckpoint(Handler):
    """At EVALUATION_COMPLETED, keep the ``keep`` best checkpoints of each metric (mode max).

    Files: ``best_<metric>_e<epoch>_i<iteration>_<score>.pt``. When one evaluation improves
    several metrics, the state is written once and hard-linked under the other names. State: the
    kept (score, file) lists, so a resumed run continues the same ranking. Ties keep the earlier
    file. A displaced file is deleted only after its replacement is on disk.
    """

    name = "best_checkpoint"
    priority = 130

    def __init__(self, save: Saver, folder: str | Path, metrics: list[str], keep: int = 1):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.save = save
        self.folder = Path(folder)
        self.metrics = list(metrics)
        self.keep = keep
        self.kept: dict[str, list[tuple[float, str]]] = {m: [] for m in self.metrics}

    def events(self) -> list[Any]:
        return [M3sggEvents.EVALUATION_COMPLETED]

    def __call__(self, engine: Engine) -> None:
        results = engine.state.eval_metrics
        improved: list[str] = []
        for metric in self.metrics:
            score = watched_metric(results, metric, self.name)
            kept = self.kept[metric]
            if len(kept) >= self.keep and score <= kept[-1][0]:
                continue
            name = (
                f"best_{metric_slug(metric)}_e{engine.state.epoch}_i{engine.state.iteration}"
                f"_{score:.4f}.pt"
            )
            kept.append((score, name))
            kept.sort(key=lambda item: -item[0])  # stable: earlier files win ties
            improved.append(name)
        if not improved:
            return
        # the rankings are final before the save, so the file holds this handler's new state
        displaced = {m: self.kept[m][self.keep :] for m in self.metrics}
        for metric in self.metrics:
            del self.kept[metric][self.keep :]
        first = self.save(improved[0])
        for name in improved[1:]:  # the same state under another metric's name: a hard link
            self._link_or_save(first, name)
        for old in (name for items in displaced.values() for _, name in items):
            with contextlib.suppress(FileNotFoundError):
                (self.folder / old).unlink()

    def adopt(self, folder: str | Path) -> list[Path]:
        """After resuming from a checkpoint of another run folder (``--resume FILE --name NEW``):
        bring the kept best files from ``folder`` into this run's folder (hard links, else
        copies), so the paths this handler reports exist. Returns the files brought in."""
        folder = Path(folder)
        brought = []
        for name in {name for items in self.kept.values() for _, name in items}:
            if (folder / name).is_file() and not (self.folder / name).exists():
                self.folder.mkdir(parents=True, exist_ok=True)
                self._link_or_save(folder / name, name)
                brought.append(self.folder / name)
        return brought

    def _link_or_save(self, source: Path, name: str) -> None:
        """Rank 0 only (no collective here): a hard link, else a durable copy of ``source``."""
        if idist.get_rank() != 0:
            return
        target = self.folder / name
        try:
            os.link(source, target)
        except OSError:  # a filesystem without hard links: copy, then rename into place
            tmp = target.with_name(f".tmp-{name}")
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)

    def best(self, metric: str) -> Path | None:
        """Path of the best checkpoint for ``metric`` so far (None before the first evaluation)."""
        kept = self.kept.get(metric)
        return self.folder / kept[0][1] if kept else None

    def state_dict(self) -> dict[str, Any]:
        return {"kept": {m: [list(item) for item in v] for m, v in self.kept.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for metric, items in state["kept"].items():
            self.kept[metric] = [(float(s), str(n)) for s, n in items]

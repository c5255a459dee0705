"""``metrics_file``: one JSON line per evaluation in ``<run>/metrics.jsonl``."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine

from m3sgg.engine.checkpoint import atomic_write
from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import Handler
from m3sgg.errors import WriteError

__all__ = ["MetricsFile", "evaluation_record", "jsonable", "read_metrics_file"]


def jsonable(value: Any) -> Any:
    """Metrics → JSON values: tensors to numbers/lists, dict keys to strings, NaN to null."""
    if torch.is_tensor(value):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluation_record(engine: Engine, optimizer: Any = None) -> dict[str, Any]:
    """One evaluation as JSON values: ``{"epoch", "iteration", "lr", "losses", "metrics"}``
    (a line of ``metrics.jsonl``, and what the visdom plotter sends)."""
    state = engine.state
    lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
    return {
        "epoch": state.epoch,
        "iteration": state.iteration,
        "lr": lr,
        "losses": jsonable(getattr(state, "train_losses", {}) or {}),
        "metrics": jsonable(getattr(state, "eval_metrics", {}) or {}),
    }


class MetricsFile(Handler):
    """At EVALUATION_COMPLETED, append ``{"epoch", "iteration", "lr", "losses", "metrics"}``.

    Each line is flushed and fsynced. State: the number of lines written; on resume the file is
    cut back to that many lines, so lines written after the checkpoint by a run that was then
    killed are not duplicated: the file ends identical to an uninterrupted run's. A write that
    fails (disk full) is undone, so no partial line is left, and raises
    :class:`~m3sgg.errors.WriteError`.
    """

    name = "metrics_file"
    priority = 800

    def __init__(self, path: str | Path, optimizer: Any = None):
        self.path = Path(path)
        self.optimizer = optimizer
        self.lines = 0

    def events(self) -> list[Any]:
        return [M3sggEvents.EVALUATION_COMPLETED]

    def record(self, engine: Engine) -> dict[str, Any]:
        return evaluation_record(engine, self.optimizer)

    def __call__(self, engine: Engine) -> None:
        line = (json.dumps(self.record(engine), sort_keys=True) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise _write_error(self.path, err) from None
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as err:
                with contextlib.suppress(OSError):  # no partial line: cut back to what was there
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                raise _write_error(self.path, err) from None
        finally:
            os.close(fd)
        self.lines += 1

    def state_dict(self) -> dict[str, Any]:
        return {"lines": self.lines}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lines = int(state["lines"])
        if self.path.exists():
            kept = self.path.read_text().splitlines(keepends=True)[: self.lines]
            atomic_write(self.path, "".join(kept).encode(), _WHAT, intact=_INTACT)


_WHAT, _INTACT = "the metrics file", "; it still holds every line written before"


def _write_error(path: Path, err: OSError) -> WriteError:
    reason = "disk full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    return WriteError(f"{path}: could not write {_WHAT} ({reason}){_INTACT}")


def read_metrics_file(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a trailing partial line, from a crash, is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records

"""Test hooks for ``m3sgg train`` subprocesses, loaded as plugins (never part of m3sgg itself).

``--plugin tests.reliability.hooks:trace`` (or ``plugins: [...]`` in a config file) makes a run
report its progress to the file ``$M3SGG_TRACE``, one line per event (each prefixed with the
child's ``time.monotonic()``), so the test driving it knows when to signal or SIGKILL it::

    started <iteration>         the engine started (after a resume: the iteration it resumes at)
    iteration <i>               ITERATION_STARTED of iteration i
    evaluating <n> / evaluated <n>   the n-th evaluation of this process began / ended
    save-begin <n> <file>       the n-th checkpoint save of this process began (torch.save called)
    save-half <n> <file>        (slow save only) half of the bytes are in the temp file
    save-written <n> <file>     (slow save only) all bytes written and fsynced, not yet renamed
    saved <file> <iteration>    CHECKPOINT_SAVED: the file is durably in place
    completed <iteration>       the run finished

Environment knobs (all optional; without ``M3SGG_TRACE`` the plugin does nothing):

- ``M3SGG_SLOW_SAVE=n:half`` or ``n:written``: the n-th save writes half of its bytes (``half``)
  or all of them, fsynced, but not yet renamed by ``atomic_save`` (``written``), reports it, and
  waits there (up to ``M3SGG_WAIT`` seconds, default 60) for the SIGKILL the test sends.
- ``M3SGG_PAUSE_AT=i``: at the start of iteration i (after reporting it), wait (up to
  ``M3SGG_WAIT`` seconds) until a SIGINT or SIGTERM arrives, then let the iteration run, so the
  signal certainly arrives during iteration i however slow the machine is.

``disk_full`` (``--plugin tests.reliability.hooks:disk_full``) makes every checkpoint write from
the ``M3SGG_FULL_AT``-th on fail like a full disk: half the bytes reach the temp file, then the
write raises ``OSError(ENOSPC)``. It injects the error below m3sgg (in ``torch.save``, which
``m3sgg.engine.checkpoint.atomic_save`` calls), so m3sgg's own handling runs unchanged.

``fill_disk`` (``--plugin tests.reliability.hooks:fill_disk``) fills a real (small tmpfs) disk
to the last byte at an evaluation, right before the metrics line is appended.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events

from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import FunctionHandler

__all__ = ["disk_full", "fill_disk", "trace"]

_original_save = torch.save


def _target_name(f: Any) -> str:
    """``last.pt`` for the temp file ``.tmp-last.pt.XXXX`` that ``atomic_save`` writes."""
    try:  # atomic_save passes an os.fdopen() file, whose .name is the descriptor
        name = Path(os.readlink(f"/proc/self/fd/{f.fileno()}")).name
    except (AttributeError, OSError, io.UnsupportedOperation):
        return "?"
    return name.removeprefix(".tmp-").rsplit(".", 1)[0] if name.startswith(".tmp-") else name


def trace(trainer: Any) -> None:
    """Report progress to ``$M3SGG_TRACE``; optional slow save and pause (see the module doc)."""
    path = os.environ.get("M3SGG_TRACE")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    slow_save, _, slow_stage = os.environ.get("M3SGG_SLOW_SAVE", "0:").partition(":")
    pause_at = int(os.environ.get("M3SGG_PAUSE_AT", "0"))
    wait = float(os.environ.get("M3SGG_WAIT", "60"))
    counts = {"saves": 0, "evaluations": 0}

    def emit(text: str) -> None:
        os.write(fd, f"{time.monotonic():.6f} {text}\n".encode())

    def traced_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        counts["saves"] += 1
        n, name = counts["saves"], _target_name(f)
        emit(f"save-begin {n} {name}")
        if n != int(slow_save) or not hasattr(f, "write"):
            _original_save(obj, f, *args, **kwargs)
            return
        buffer = io.BytesIO()
        _original_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        for stage, part in (("half", data[: len(data) // 2]), ("written", data[len(data) // 2 :])):
            f.write(part)
            f.flush()
            os.fsync(f.fileno())
            emit(f"save-{stage} {n} {name}")
            if stage == slow_stage:
                time.sleep(wait)  # the test SIGKILLs the process during this sleep

    torch.save = traced_save

    def on_started(engine: Any) -> None:
        emit(f"started {engine.state.iteration}")

    def on_iteration(engine: Any) -> None:
        emit(f"iteration {engine.state.iteration}")
        if engine.state.iteration == pause_at:
            _wait_for_a_signal(wait)

    def on_saved(engine: Any) -> None:
        emit(f"saved {Path(engine.state.last_checkpoint).name} {engine.state.iteration}")

    def on_completed(engine: Any) -> None:
        emit(f"completed {engine.state.iteration}")

    def on_eval_started(engine: Any) -> None:
        counts["evaluations"] += 1
        emit(f"evaluating {counts['evaluations']}")

    def on_eval_completed(engine: Any) -> None:
        emit(f"evaluated {counts['evaluations']}")

    add = trainer.handlers.add
    add(FunctionHandler(on_started, [Events.STARTED], "trace_started", priority=1000))
    add(FunctionHandler(on_iteration, [Events.ITERATION_STARTED], "trace_iteration", priority=-20))
    add(FunctionHandler(on_saved, [M3sggEvents.CHECKPOINT_SAVED], "trace_saved", priority=1000))
    add(FunctionHandler(on_completed, [Events.COMPLETED], "trace_completed", priority=1000))
    if trainer.evaluator is not None:
        trainer.evaluator.handlers.add(
            FunctionHandler(on_eval_started, [Events.STARTED], "trace_eval_started", priority=-20)
        )
        trainer.evaluator.handlers.add(
            FunctionHandler(
                on_eval_completed, [Events.COMPLETED], "trace_eval_completed", priority=1000
            )
        )


def _wait_for_a_signal(timeout: float) -> None:
    """Sleep until SIGINT or SIGTERM arrives (the installed handlers still run) or ``timeout``."""
    arrived: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def note(signum: int, frame: Any) -> None:
        arrived.append(signum)
        handler = previous[signal.Signals(signum)]
        if callable(handler):
            handler(signum, frame)

    for sig in previous:
        signal.signal(sig, note)
    try:
        deadline = time.monotonic() + timeout
        while not arrived and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def disk_full(trainer: Any) -> None:
    """From the ``$M3SGG_FULL_AT``-th checkpoint write on, fail with ENOSPC half-way through."""
    full_at = int(os.environ["M3SGG_FULL_AT"])
    counts = {"saves": 0}
    inner = torch.save  # the trace plugin's wrapper when both are loaded

    def failing_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        counts["saves"] += 1
        if counts["saves"] < full_at or not hasattr(f, "write"):
            inner(obj, f, *args, **kwargs)
            return
        buffer = io.BytesIO()
        _original_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    torch.save = failing_save


def fill_disk(trainer: Any) -> None:
    """At the ``$M3SGG_FILL_AT_EVAL``-th EVALUATION_COMPLETED, just before ``metrics_file`` runs,
    fill the disk of ``$M3SGG_FILLER`` (another program taking the last free byte)."""
    filler = Path(os.environ["M3SGG_FILLER"])
    at = int(os.environ.get("M3SGG_FILL_AT_EVAL", "1"))
    counts = {"evaluations": 0}

    def fill(engine: Any) -> None:
        counts["evaluations"] += 1
        if counts["evaluations"] != at:
            return
        fd = os.open(filler, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for size in (1 << 20, 1 << 12, 1):
                chunk = b"\0" * size
                try:
                    while True:
                        os.write(fd, chunk)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)

    handler = FunctionHandler(fill, [M3sggEvents.EVALUATION_COMPLETED], "fill_disk")
    trainer.handlers.add(handler, before="metrics_file")

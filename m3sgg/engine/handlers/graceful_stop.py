"""``graceful_stop``: on SIGINT/SIGTERM, finish the step, save ``last.pt`` and stop."""

from __future__ import annotations

import logging
import signal
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from m3sgg.engine.handlers.base import Handler

__all__ = ["GracefulStop"]

logger = logging.getLogger("m3sgg")


class GracefulStop(Handler):
    """Turns SIGINT/SIGTERM into a clean stop at the next ITERATION_COMPLETED.

    The signal handler only sets a flag (nothing unsafe runs inside it); the current training
    step finishes, a resumable ``last.pt`` is written, ``engine.state.stop_reason`` says why and
    how to resume, and the engine terminates. A second signal while stopping is ignored.
    :meth:`install` sets the signal handlers, :meth:`uninstall` restores the previous ones.

    With several processes a signal may reach the ranks at different iterations (or only one of
    them), and a rank stopping alone would leave the others waiting in DDP's all-reduce. So when
    the world size is above 1 the flag is agreed first: one all-reduce (MAX) of the signal number
    per iteration, a single integer, and every rank stops at the same iteration, saving together
    (``save_checkpoint`` is collective; rank 0 writes). The all-reduce runs on a CPU tensor over
    a gloo group of its own, so with nccl it neither waits for the GPU nor joins its stream
    (about 0.1 ms on one node). Attach it on every rank.

    Args:
        save: writes a checkpoint given a file name (``Trainer.save_checkpoint``).
        resume_hint: the command that continues the run, for the message.
    """

    name = "graceful_stop"
    priority = 250

    def __init__(self, save: Callable[[str], Path] | None, resume_hint: str = ""):
        self.save = save
        self.resume_hint = resume_hint
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def events(self) -> list[Any]:
        return [Events.ITERATION_COMPLETED]

    def install(self) -> GracefulStop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum

    def __call__(self, engine: Engine) -> None:
        requested = self.signal  # read once: a signal arriving now counts at the next iteration
        if idist.get_world_size() > 1:
            flag = torch.tensor([requested or 0], dtype=torch.int64)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_flag_group())
            requested = int(flag) or None
        if requested is None or engine.should_terminate:
            return
        if self.signal is None:  # stopped by another rank's signal
            self.signal = requested
        name = signal.Signals(requested).name
        where = f"epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        saved = f"; saved {self.save('last.pt')}" if self.save is not None else ""
        hint = f"; resume with: {self.resume_hint}" if self.resume_hint else ""
        engine.state.stop_reason = f"stopped by {name} at {where}{saved}{hint}"
        if idist.get_rank() == 0:  # every rank stops; one says so
            logger.warning(engine.state.stop_reason)
        engine.terminate()


_FLAG_GROUP: tuple[Any, Any] | None = None  # (the default group it was made for, gloo group)


def _flag_group() -> Any:
    """A gloo process group over every rank, for CPU-side flags (made once per default group;
    every rank reaches the first call at the same iteration, as ``new_group`` requires)."""
    global _FLAG_GROUP
    world = dist.group.WORLD
    if _FLAG_GROUP is None or _FLAG_GROUP[0] is not world:
        _FLAG_GROUP = (world, dist.new_group(backend="gloo"))
    return _FLAG_GROUP[1]

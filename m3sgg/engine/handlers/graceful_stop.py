"""``graceful_stop``: on SIGINT/SIGTERM, finish the step, save ``last.pt`` and stop."""

from __future__ import annotations

import logging
import signal
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
        if self.signal is None or engine.should_terminate:
            return
        name = signal.Signals(self.signal).name
        where = f"epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        saved = f"; saved {self.save('last.pt')}" if self.save is not None else ""
        hint = f"; resume with: {self.resume_hint}" if self.resume_hint else ""
        engine.state.stop_reason = f"stopped by {name} at {where}{saved}{hint}"
        logger.warning(engine.state.stop_reason)
        engine.terminate()

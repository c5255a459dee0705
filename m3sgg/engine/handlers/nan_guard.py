"""``nan_guard``: stop on a non-finite loss, after saving, naming the iteration and the term."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events

from m3sgg.engine.handlers.base import Handler

__all__ = ["NanGuard"]

logger = logging.getLogger("m3sgg")


class NanGuard(Handler):
    """At ITERATION_COMPLETED, check the step's losses; on NaN/Inf save and terminate.

    ``Trainer.train_step`` already skips the backward pass and the optimizer step when the total
    loss is not finite (``output["finite"]`` is False), so the weights saved here are the last
    good ones. The reason is kept in ``engine.state.stop_reason`` for the CLI's exit message.

    Args:
        save: called with a file name to write a resumable checkpoint (``Trainer.save_checkpoint``).
    """

    name = "nan_guard"
    priority = 10

    def __init__(self, save: Callable[[str], Any] | None = None):
        self.save = save

    def events(self) -> list[Any]:
        return [Events.ITERATION_COMPLETED]

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, dict) or output.get("finite", True):
            return
        bad = [k for k, v in output.items() if k != "finite" and not math.isfinite(float(v))]
        terms = ", ".join(f"{k}={float(output[k])}" for k in bad)
        where = f"epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        saved = ""
        if self.save is not None:
            path = self.save("nan_guard.pt")
            saved = f"; the last finite weights were saved to {path}"
        reason = f"non-finite loss at {where}: {terms} (the step was skipped){saved}"
        logger.error(reason)
        engine.state.stop_reason = reason
        engine.terminate()

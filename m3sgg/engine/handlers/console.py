"""``console``: one log line of losses every N iterations and a summary after each evaluation."""

from __future__ import annotations

import logging
from typing import Any

from ignite.engine import Engine, Events
from ignite.engine.events import RemovableEventHandle

from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import Handler

__all__ = ["ConsoleLogger", "extra_values", "headline"]

logger = logging.getLogger("m3sgg")


def headline(metrics: dict[str, Any], k: int = 20) -> str:
    """``with R@20 45.12 mR@20 30.01 | no R@20 …`` in percent, the way papers print them."""
    parts = []
    for constraint in ("with", "semi", "no"):
        r, mr = metrics.get(f"{constraint}/R@{k}"), metrics.get(f"{constraint}/mR@{k}")
        if r is None:
            continue
        text = f"{constraint} R@{k} {100 * r:.2f}"
        if mr is not None:
            text += f" mR@{k} {100 * mr:.2f}"
        parts.append(text)
    return " | ".join(parts)


def extra_values(metrics: dict[str, Any], names: tuple[str, ...]) -> str:
    """``name/key 0.1234 …`` for the scalar results of the metrics ``names`` (register_metric)."""
    parts = []
    for key, value in metrics.items():
        if key.split("/", 1)[0] not in names:
            continue
        if hasattr(value, "numel") and value.numel() == 1:
            value = value.item()
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{key} {value:.4f}")
    return " ".join(parts)


class ConsoleLogger(Handler):
    """Log training losses at ITERATION_COMPLETED(every=N) and headline metrics at
    EVALUATION_COMPLETED, through the ``m3sgg`` logger (the CLI prints it to stdout).

    Reading a loss forces a host sync, which is why it happens only every ``every`` iterations.
    """

    name = "console"
    priority = 900

    def __init__(self, optimizer: Any = None, every: int = 10, extra: tuple[str, ...] = ()):
        self.optimizer = optimizer
        self.every = every
        #: metrics added with register_metric: their scalar results follow the headline
        self.extra = tuple(extra)

    def events(self) -> list[Any]:
        return [Events.ITERATION_COMPLETED(every=self.every), M3sggEvents.EVALUATION_COMPLETED]

    def attach(self, engine: Engine) -> list[RemovableEventHandle]:
        """One method per event: nested events (an evaluation fired inside ITERATION_COMPLETED,
        CHECKPOINT_SAVED inside EVALUATION_COMPLETED) make ``last_event_name`` unreliable."""
        loss_event, eval_event = self.events()
        return [
            engine.add_event_handler(loss_event, self.log_losses),
            engine.add_event_handler(eval_event, self.log_evaluation),
        ]

    def __call__(self, engine: Engine) -> None:
        self.log_losses(engine)

    def log_losses(self, engine: Engine) -> None:
        state = engine.state
        output = state.output if isinstance(state.output, dict) else {}
        losses = " ".join(f"{k} {float(v):.4f}" for k, v in output.items() if k != "finite")
        lr = f" lr {self.optimizer.param_groups[0]['lr']:.2e}" if self.optimizer else ""
        epoch_length = state.epoch_length or 0
        logger.info(
            "epoch %d iteration %d/%d: %s%s",
            state.epoch,
            state.iteration - (state.epoch - 1) * epoch_length,
            epoch_length,
            losses,
            lr,
        )

    def log_evaluation(self, engine: Engine) -> None:
        state = engine.state
        text = headline(state.eval_metrics)
        extra = extra_values(state.eval_metrics, self.extra)
        logger.info(
            "evaluation %d (epoch %d, iteration %d): %s",
            state.eval_count,
            state.epoch,
            state.iteration,
            f"{text} | {extra}" if text and extra else text or extra,
        )

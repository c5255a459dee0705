"""Learning-rate handlers: ``lr_plateau`` (on an evaluation metric) and ``lr_schedule`` (per step).

``lr_plateau`` wraps torch's ``ReduceLROnPlateau`` and steps it at EVALUATION_COMPLETED with the
watched metric (default ``with/R@20``, mode max, patience 1, factor 0.5, min lr 1e-7: the STTran
recipe). ``lr_schedule`` drives one of ignite's parameter schedulers (linear warmup, cosine
annealing) at ITERATION_STARTED. Both are resumable.
"""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers.param_scheduler import (
    CosineAnnealingScheduler,
    ParamScheduler,
    PiecewiseLinear,
    create_lr_scheduler_with_warmup,
)

from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import Handler, watched_metric

__all__ = ["LRPlateau", "LRSchedule", "cosine_schedule", "warmup_schedule"]


class LRPlateau(Handler):
    """At EVALUATION_COMPLETED, ``ReduceLROnPlateau.step(eval_metrics[metric])`` (mode max)."""

    name = "lr_plateau"
    priority = 120

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        metric: str = "with/R@20",
        *,
        patience: int = 1,
        factor: float = 0.5,
        min_lr: float = 1e-7,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
    ):
        self.metric = metric
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max",
            patience=patience,
            factor=factor,
            min_lr=min_lr,
            threshold=threshold,
            threshold_mode=threshold_mode,
        )

    def events(self) -> list[Any]:
        return [M3sggEvents.EVALUATION_COMPLETED]

    def __call__(self, engine: Engine) -> None:
        self.scheduler.step(watched_metric(engine.state.eval_metrics, self.metric, self.name))

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class LRSchedule(Handler):
    """At ITERATION_STARTED, set the lr from an ignite parameter scheduler.

    Args:
        scheduler: an ignite ``ParamScheduler`` (:func:`warmup_schedule`, :func:`cosine_schedule`).
        until: stop calling it after this many iterations (warmup before a plateau schedule);
            None: every iteration.
    """

    name = "lr_schedule"
    priority = 30

    def __init__(self, scheduler: ParamScheduler, until: int | None = None):
        self.scheduler = scheduler
        self.until = until

    def events(self) -> list[Any]:
        return [Events.ITERATION_STARTED]

    def __call__(self, engine: Engine) -> None:
        if self.until is None or engine.state.iteration <= self.until:
            self.scheduler(engine)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def warmup_schedule(optimizer: torch.optim.Optimizer, lr: float, iters: int) -> ParamScheduler:
    """Linear warmup: iteration ``i`` (1-based) of the first ``iters`` gets ``lr * i / iters``."""
    last = max(iters - 1, 1)
    return PiecewiseLinear(optimizer, "lr", milestones_values=[(0, lr / iters), (last, lr)])


def cosine_schedule(
    optimizer: torch.optim.Optimizer, lr: float, min_lr: float, total_iters: int, warmup: int = 0
) -> ParamScheduler:
    """Cosine annealing from ``lr`` to ``min_lr`` over ``total_iters``, after optional warmup."""
    cosine = CosineAnnealingScheduler(
        optimizer, "lr", start_value=lr, end_value=min_lr, cycle_size=max(total_iters - warmup, 2)
    )
    if not warmup:
        return cosine
    return create_lr_scheduler_with_warmup(
        cosine, warmup_start_value=lr / warmup, warmup_end_value=lr, warmup_duration=warmup
    )

"""``early_stopping``: ignite's ``EarlyStopping`` on an evaluation metric."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine
from ignite.handlers import EarlyStopping as IgniteEarlyStopping

from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import Handler, watched_metric

__all__ = ["EarlyStopping"]


class EarlyStopping(Handler):
    """At EVALUATION_COMPLETED, stop training after ``patience`` evaluations without improvement.

    Delegates to :class:`ignite.handlers.EarlyStopping` (mode max) reading
    ``engine.state.eval_metrics[metric]``; its counter and best score are resumable.
    """

    name = "early_stopping"
    priority = 140

    def __init__(
        self,
        trainer_engine: Engine,
        metric: str = "with/mR@20",
        patience: int = 3,
        threshold: float = 0.0,
    ):
        self.metric = metric
        self.stopper = IgniteEarlyStopping(
            patience=patience,
            score_function=lambda engine: watched_metric(
                engine.state.eval_metrics, metric, self.name
            ),
            trainer=trainer_engine,
            threshold=threshold,
        )

    def events(self) -> list[Any]:
        return [M3sggEvents.EVALUATION_COMPLETED]

    def __call__(self, engine: Engine) -> None:
        self.stopper(engine)
        if engine.should_terminate:
            engine.state.stop_reason = (
                f"early stopping: {self.metric} did not improve for {self.stopper.patience} "
                f"evaluations (best {self.stopper.best_score:.4f})"
            )

    def state_dict(self) -> dict[str, Any]:
        return dict(self.stopper.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stopper.load_state_dict(state)

"""``evaluation``: run the evaluator engine, publish its metrics, fire EVALUATION_COMPLETED."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ignite.engine import Engine, Events

from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import Handler

if TYPE_CHECKING:
    from m3sgg.engine.evaluator import Evaluator
    from m3sgg.engine.handlers.loss_tracker import LossTracker

__all__ = ["Evaluation"]


class Evaluation(Handler):
    """Evaluate every ``every_epochs`` epochs and/or every ``every_iters`` iterations.

    After the evaluator finishes, sets on the train engine's state:
    ``eval_metrics`` (the evaluator's metrics), ``eval_count`` (evaluations of the run so far,
    counting on after a resume: the handler's state) and ``train_losses`` (mean losses
    since the previous evaluation, from the loss tracker), then fires
    :attr:`M3sggEvents.EVALUATION_COMPLETED` so the LR scheduler, checkpointing, early stopping
    and loggers run, in their order, on fresh numbers.
    """

    name = "evaluation"
    priority = 100

    def __init__(
        self,
        evaluator: Evaluator,
        *,
        every_epochs: int = 1,
        every_iters: int = 0,
        loss_tracker: LossTracker | None = None,
    ):
        self.evaluator = evaluator
        self.every_epochs = every_epochs
        self.every_iters = every_iters
        self.loss_tracker = loss_tracker
        #: evaluations done in this run (in checkpoints: a resumed run counts on)
        self.count = 0

    def events(self) -> list[Any]:
        events: list[Any] = []
        if self.every_epochs:
            events.append(Events.EPOCH_COMPLETED(every=self.every_epochs))
        if self.every_iters:
            events.append(Events.ITERATION_COMPLETED(every=self.every_iters))
        return events

    def __call__(self, engine: Engine) -> None:
        engine.state.eval_metrics = self.evaluator.eval_loop()
        self.count += 1
        engine.state.eval_count = self.count
        engine.state.train_losses = self.loss_tracker.take() if self.loss_tracker else {}
        engine.fire_event(M3sggEvents.EVALUATION_COMPLETED)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])

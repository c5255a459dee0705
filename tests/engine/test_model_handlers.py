"""Handlers a model contributes: attached by the Trainer, FORWARD_COMPLETED between forward and
backward."""

from __future__ import annotations

from typing import Any

from m3sgg.data.collate import Batch
from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import Handler
from m3sgg.engine.trainer import Trainer


class Probe(Handler):
    name = "probe"
    priority = 50

    def __init__(self, model: Any, forwards: list[int]):
        self.model = model
        self.forwards = forwards
        self.seen: list[tuple[int, int, bool, bool, bool]] = []

    def events(self) -> list[Any]:
        return [M3sggEvents.FORWARD_COMPLETED]

    def __call__(self, engine: Any) -> None:
        batch = engine.state.step_batch
        grads_empty = all(p.grad is None for p in self.model.parameters())
        self.seen.append(
            (
                engine.state.iteration,
                len(self.forwards),
                isinstance(batch, Batch),
                self.model.training,
                grads_empty,
            )
        )


def test_model_handlers_run_after_forward_before_backward(small_config):
    built = Trainer.from_config(small_config("train.epochs=1", "train.eval_every_epochs=0"))
    model = built.model
    forwards: list[int] = []
    original_forward = model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        forwards.append(1)
        return original_forward(*args, **kwargs)

    model.forward = counting
    probe = Probe(model, forwards)
    model.train_handlers = lambda: [probe]
    trainer = Trainer(model=model, config=built.config, dataloader_train=built.dataloader_train)
    assert "probe" in trainer.handlers
    assert "FORWARD_COMPLETED" in trainer.describe()
    trainer.train_loop()
    steps = trainer.engine.state.iteration
    # one call per step, after that step's forward (count = iteration), in training mode, with
    # no gradient yet (backward has not run; the previous step's were cleared)
    assert probe.seen == [(i, i, True, True, True) for i in range(1, steps + 1)]
    assert trainer.engine.state.step_batch is None


def test_models_without_handlers_add_none(small_config):
    trainer = Trainer.from_config(small_config())
    assert not hasattr(trainer.core_model, "train_handlers")
    assert "FORWARD_COMPLETED" not in trainer.describe()

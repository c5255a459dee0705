"""The engine handlers TEMPURA contributes (``TEMPURA.train_handlers()``): its predicate memory.

The original (``train.py``) runs, for every training batch, right after the training forward and
before backward, a second forward of the same batch with the model in eval mode, no gradients and
the training-phase logic (``uncertainty_computation``), and stores that batch's relation features
and uncertainty values; at the end of each epoch, after validation and checkpointing, it rebuilds
the memory from them (``memory_computation``); epoch 0 trains without memory. Here:

- :class:`UncertaintyPass` (``uncertainty_pass``, at ``M3sggEvents.FORWARD_COMPLETED``) does the
  second forward through ``model.memory_inputs(batch)`` and adds the result to a
  :class:`~m3sgg.models.tempura.memory.MemoryAccumulator` (its state: the streaming sums,
  rank-local, in every checkpoint);
- :class:`MemoryRebuild` (``memory_rebuild``, at EPOCH_COMPLETED, priority 150: after the
  ``evaluation`` handler and the best checkpoints it triggers, before ``last_checkpoint``) sums
  the ranks' sums, installs the new memory in the model and clears the sums.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from ignite.engine import Engine, Events

from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import Handler
from m3sgg.models.tempura.memory import MemoryAccumulator

__all__ = ["MemoryRebuild", "UncertaintyPass"]


class MemoryModel(Protocol):
    """What the handlers need from the model."""

    training: bool

    def train(self, mode: bool = True) -> Any: ...

    def memory_inputs(
        self, batch: Any, uncertainty: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]: ...

    def set_memory(self, memory: torch.Tensor) -> None: ...


class UncertaintyPass(Handler):
    """After each training forward: the eval-mode pass whose features feed the next memory.

    Args:
        model: the (unwrapped) model; ``memory_inputs(batch, uncertainty)`` returns relation
            features [P, D], predicate targets [P, M] and, when ``uncertainty``, the aleatoric and
            epistemic values [P, M].
        accumulator: the epoch's streaming sums (its weighting decides whether uncertainty
            values are needed).
    """

    name = "uncertainty_pass"
    priority = 50
    rank_local = True  # each rank sums its own batches until the rebuild reduces them

    def __init__(self, model: MemoryModel, accumulator: MemoryAccumulator):
        self.model = model
        self.accumulator = accumulator

    def events(self) -> list[Any]:
        return [M3sggEvents.FORWARD_COMPLETED]

    def __call__(self, engine: Engine) -> None:
        model = self.model
        was_training = model.training
        model.train(False)
        try:
            with torch.no_grad():
                inputs = model.memory_inputs(
                    engine.state.step_batch, uncertainty=self.accumulator.needs_uncertainty
                )
        finally:
            model.train(was_training)
        self.accumulator.add(*inputs)

    def state_dict(self) -> dict[str, Any]:
        return self.accumulator.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.accumulator.load_state_dict(state)


class MemoryRebuild(Handler):
    """At the end of each epoch: the memory from the epoch's sums, into the model.

    Args:
        model: the (unwrapped) model, with ``set_memory(memory)``.
        accumulator: the sums :class:`UncertaintyPass` fills.
    """

    name = "memory_rebuild"
    priority = 150

    def __init__(self, model: MemoryModel, accumulator: MemoryAccumulator):
        self.model = model
        self.accumulator = accumulator

    def events(self) -> list[Any]:
        return [Events.EPOCH_COMPLETED]

    def __call__(self, engine: Engine) -> None:
        self.accumulator.all_reduce()
        self.model.set_memory(self.accumulator.compute())
        self.accumulator.reset()

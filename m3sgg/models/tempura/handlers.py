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

With an object memory (``object_memory``) both do the same for it alongside: the classifier's
pre-fusion features of the non-background boxes, summed per class.
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

    def object_memory_inputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]: ...

    def set_object_memory(self, memory: torch.Tensor) -> None: ...


class UncertaintyPass(Handler):
    """After each training forward: the eval-mode pass whose features feed the next memory.

    Args:
        model: the (unwrapped) model; ``memory_inputs(batch, uncertainty)`` returns relation
            features [P, D], predicate targets [P, M] and, when ``uncertainty``, the aleatoric and
            epistemic values [P, M]; ``object_memory_inputs(batch)`` object features [B, W] and
            classes [B, C].
        accumulator: the epoch's streaming sums of the predicate memory (its weighting decides
            whether uncertainty values are needed), or ``None`` without one.
        object_accumulator: the same for the object memory, or ``None`` without one.

    State: the predicate sums' state, with the object sums' under ``"object"``.
    """

    name = "uncertainty_pass"
    priority = 50
    rank_local = True  # each rank sums its own batches until the rebuild reduces them

    def __init__(
        self,
        model: MemoryModel,
        accumulator: MemoryAccumulator | None,
        object_accumulator: MemoryAccumulator | None = None,
    ):
        self.model = model
        self.accumulator = accumulator
        self.object_accumulator = object_accumulator

    def events(self) -> list[Any]:
        return [M3sggEvents.FORWARD_COMPLETED]

    def __call__(self, engine: Engine) -> None:
        model = self.model
        batch = engine.state.step_batch
        was_training = model.training
        model.train(False)
        try:
            with torch.no_grad():
                inputs = (
                    model.memory_inputs(batch, uncertainty=self.accumulator.needs_uncertainty)
                    if self.accumulator is not None
                    else None
                )
                objects = (
                    model.object_memory_inputs(batch)
                    if self.object_accumulator is not None
                    else None
                )
        finally:
            model.train(was_training)
        if self.accumulator is not None and inputs is not None:
            self.accumulator.add(*inputs)
        if self.object_accumulator is not None and objects is not None:
            self.object_accumulator.add(*objects)

    def state_dict(self) -> dict[str, Any]:
        state = self.accumulator.state_dict() if self.accumulator is not None else {}
        if self.object_accumulator is not None:
            state["object"] = self.object_accumulator.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.accumulator is not None:
            self.accumulator.load_state_dict(state)
        if self.object_accumulator is not None:
            if "object" not in state:
                raise ValueError("the checkpoint's memory sums have no object memory part")
            self.object_accumulator.load_state_dict(state["object"])


class MemoryRebuild(Handler):
    """At the end of each epoch: the memory from the epoch's sums, into the model.

    Args:
        model: the (unwrapped) model, with ``set_memory(memory)`` (and
            ``set_object_memory(memory)`` with an object memory).
        accumulator: the predicate memory's sums :class:`UncertaintyPass` fills, or ``None``.
        object_accumulator: the object memory's sums, or ``None``.
    """

    name = "memory_rebuild"
    priority = 150

    def __init__(
        self,
        model: MemoryModel,
        accumulator: MemoryAccumulator | None,
        object_accumulator: MemoryAccumulator | None = None,
    ):
        self.model = model
        self.accumulator = accumulator
        self.object_accumulator = object_accumulator

    def events(self) -> list[Any]:
        return [Events.EPOCH_COMPLETED]

    def __call__(self, engine: Engine) -> None:
        if self.accumulator is not None:
            self.accumulator.all_reduce()
            self.model.set_memory(self.accumulator.compute())
            self.accumulator.reset()
        if self.object_accumulator is not None:
            self.object_accumulator.all_reduce()
            self.model.set_object_memory(self.object_accumulator.compute())
            self.object_accumulator.reset()

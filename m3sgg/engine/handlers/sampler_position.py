"""``sampler_position``: point the resumable sampler at the current epoch and offset."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events

from m3sgg.data.samplers import ResumableSampler
from m3sgg.engine.handlers.base import Handler

__all__ = ["SamplerPosition"]


class SamplerPosition(Handler):
    """At EPOCH_STARTED, derive the sampler position from the engine's counters.

    In a fresh epoch the position is ``(epoch - 1, 0)``; in an epoch resumed at iteration ``k``
    it is ``(epoch - 1, k * batch_size)``, so the new data iterator yields exactly the batches the
    interrupted run had not consumed. Stateless: the engine's counters are in the checkpoint.
    """

    name = "sampler_position"
    priority = 0

    def __init__(self, sampler: ResumableSampler, batch_size: int):
        self.sampler = sampler
        self.batch_size = batch_size

    def events(self) -> list[Any]:
        return [Events.EPOCH_STARTED]

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch - 1
        epoch_length = engine.state.epoch_length or 0
        done = engine.state.iteration - epoch * epoch_length
        self.sampler.set_position(epoch, min(done * self.batch_size, self.sampler.per_rank))

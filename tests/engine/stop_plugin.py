"""A test plugin: terminate the run right after a given iteration (simulates an interruption).

``M3SGG_STOP_AT`` names the iteration. The handler runs after ``last_checkpoint``; at an epoch's
last iteration it waits for EPOCH_COMPLETED, so that epoch's evaluation and checkpoint happen.
"""

from __future__ import annotations

import os

from ignite.engine import Events

from m3sgg.engine.handlers.base import FunctionHandler


def stop_at(trainer) -> None:
    at = int(os.environ["M3SGG_STOP_AT"])

    def after_iteration(engine) -> None:
        if engine.state.iteration == at and at % engine.state.epoch_length != 0:
            engine.terminate()

    def after_epoch(engine) -> None:  # at an epoch boundary: after its evaluation and last.pt
        if engine.state.iteration == at:
            engine.terminate()

    trainer.handlers.add(
        FunctionHandler(
            after_iteration, [Events.ITERATION_COMPLETED], "stop_mid_epoch", priority=1000
        )
    )
    trainer.handlers.add(
        FunctionHandler(after_epoch, [Events.EPOCH_COMPLETED], "stop_at_epoch_end", priority=1000)
    )

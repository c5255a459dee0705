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

    def stop(engine) -> None:
        # at an epoch boundary, stop after EPOCH_COMPLETED (its evaluation and last.pt) ran
        boundary = at % engine.state.epoch_length == 0
        at_epoch_end = engine.last_event_name == Events.EPOCH_COMPLETED
        if engine.state.iteration == at and boundary == at_epoch_end:
            engine.terminate()

    trainer.handlers.add(
        FunctionHandler(
            stop, [Events.ITERATION_COMPLETED, Events.EPOCH_COMPLETED], "stop_at", priority=1000
        )
    )

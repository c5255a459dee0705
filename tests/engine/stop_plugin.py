"""A test plugin: terminate the run right after a given iteration (simulates an interruption).

``M3SGG_STOP_AT`` names the iteration; the handler runs after ``last_checkpoint`` so the
checkpoint of that iteration is on disk when the process stops.
"""

from __future__ import annotations

import os

from ignite.engine import Events

from m3sgg.engine.handlers.base import FunctionHandler


def stop_at(trainer) -> None:
    at = int(os.environ["M3SGG_STOP_AT"])

    def stop(engine) -> None:
        if engine.state.iteration == at:
            engine.terminate()

    trainer.handlers.add(
        FunctionHandler(stop, [Events.ITERATION_COMPLETED, Events.EPOCH_COMPLETED], "stop_at",
                        priority=1000)
    )

"""An m3sgg plugin: after each evaluation, log the Action Genome predicates with the lowest recall.

m3sgg finds it through the ``m3sgg.plugins`` entry point declared in ``pyproject.toml`` and calls
:func:`setup` with the trainer, after the trainer is built and before training starts. Importing
this module happens earlier, before the model is built, so a plugin module is also the place to
``register_model`` a model of its own.
"""

from __future__ import annotations

import logging
from typing import Any

from m3sgg import Handler, M3sggEvents
from m3sgg.vocab import AG_PREDICATES

__all__ = ["WeakestPredicates", "setup"]

logger = logging.getLogger("m3sgg")


class WeakestPredicates(Handler):
    """At EVALUATION_COMPLETED, log the ``count`` predicates with the lowest ``with`` recall@K.

    Runs right after ``metrics_file`` (see :func:`setup`); keeps no state.
    """

    name = "weakest_predicates"

    def __init__(self, k: int = 20, count: int = 3):
        self.k = k
        self.count = count

    def events(self) -> list[Any]:
        return [M3sggEvents.EVALUATION_COMPLETED]

    def __call__(self, engine: Any) -> None:
        per_predicate = engine.state.eval_metrics.get("with/per_predicate")
        if not per_predicate:  # EASG reports no per-predicate recall
            return
        recall = per_predicate[self.k]
        weakest = sorted(range(len(recall)), key=lambda p: recall[p])[: self.count]
        listing = ", ".join(f"{AG_PREDICATES[p]} {100 * recall[p]:.1f}" for p in weakest)
        logger.info("weakest predicates (with R@%d): %s", self.k, listing)


def setup(trainer: Any) -> None:
    """The entry point: attach the handler to the train engine, after ``metrics_file``."""
    anchor = {"after": "metrics_file"} if "metrics_file" in trainer.handlers else {}
    trainer.handlers.add(WeakestPredicates(), **anchor)
    logger.info("m3sgg-example-plugin: attached weakest_predicates")

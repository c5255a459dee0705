"""m3sgg: a training engine for video scene graph generation on pytorch-ignite.

Reads Action Genome and EASG as they are on disk, evaluates with metrics that reproduce the
community's reference evaluators exactly, and trains models through an event-driven engine.

Public API (imported lazily, so ``m3sgg --help`` does not pay for torch)::

    from m3sgg import Trainer, Evaluator, load_config, build_model, build_metrics
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Trainer": "m3sgg.engine.trainer",
    "Evaluator": "m3sgg.engine.evaluator",
    "M3sggEvents": "m3sgg.engine.events",
    "Handler": "m3sgg.engine.handlers.base",
    "Config": "m3sgg.config",
    "load_config": "m3sgg.config",
    "build_model": "m3sgg.models",
    "register_model": "m3sgg.models",
    "build_metrics": "m3sgg.metrics",
    "ActionGenomeRecall": "m3sgg.metrics",
    "ActionGenomeRecallSuite": "m3sgg.metrics",
    "EASGRecall": "m3sgg.metrics",
    "evaluate_checkpoint": "m3sgg.engine.builders",
    "M3sggError": "m3sgg.errors",
    "DataError": "m3sgg.errors",
    "ConfigError": "m3sgg.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'm3sgg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

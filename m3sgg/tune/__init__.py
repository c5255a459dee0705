"""Hyperparameter search on Optuna: ``m3sgg tune`` (the optional ``tune`` extra).

- :mod:`m3sgg.tune.space`: search-space files, validated against the configuration reference;
- :mod:`m3sgg.tune.study`: the study database, trial ownership, recovering killed trials;
- :mod:`m3sgg.tune.trial`: one trial as an ordinary run, reporting at every evaluation;
- :mod:`m3sgg.tune.runner`: worker processes taking trials until the study has them all;
- :mod:`m3sgg.tune.report`: ``--show`` and ``--export-best``;
- :mod:`m3sgg.tune.plot`: the study in visdom.

Only :mod:`m3sgg.tune.cli` and :mod:`m3sgg.tune.space` import without Optuna.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SearchSpace", "TuneSettings", "load_space", "tune"]


def __getattr__(name: str) -> Any:
    if name in ("SearchSpace", "load_space"):
        from m3sgg.tune import space

        return getattr(space, name)
    if name in ("TuneSettings", "tune"):
        from m3sgg.tune import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'm3sgg.tune' has no attribute {name!r}")

"""Scene-graph metrics as ignite Metrics, and the per-dataset choice of which ones run.

- :class:`~m3sgg.metrics.action_genome.ActionGenomeRecall` / ``ActionGenomeRecallSuite``:
  R@K, mR@K and per-predicate recall under the with/semi/no constraints (STTran/TEMPURA).
- :class:`~m3sgg.metrics.easg.EASGRecall`: EASG triplet recall (edgecls, sgcls, easgcls).

:func:`build_metrics` is how the evaluator learns what to compute for a dataset; a plugin adds a
dataset's metrics with :func:`register_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.metrics import Metric

from m3sgg.config import EvalConfig
from m3sgg.metrics.action_genome import ActionGenomeRecall, ActionGenomeRecallSuite
from m3sgg.metrics.easg import EASGRecall

__all__ = [
    "ActionGenomeRecall",
    "ActionGenomeRecallSuite",
    "EASGRecall",
    "build_metrics",
    "register_metrics",
]

MetricsFactory = Callable[[str, EvalConfig], dict[str, Metric]]


def _action_genome(mode: str, cfg: EvalConfig) -> dict[str, Metric]:
    # one suite for every constraint: candidate rows and IoUs are computed once per video
    suite = ActionGenomeRecallSuite(
        mode,
        constraints=tuple(cfg.constraints),
        semi_threshold=cfg.semi_threshold,
        iou_threshold=cfg.iou_threshold,
        ks=tuple(cfg.ks),
    )
    return {"recall": suite}


def _easg(mode: str, cfg: EvalConfig) -> dict[str, Metric]:
    return {c: EASGRecall(mode, c, ks=tuple(cfg.easg_ks)) for c in ("with", "no")}


_FACTORIES: dict[str, MetricsFactory] = {"action_genome": _action_genome, "easg": _easg}


def register_metrics(dataset: str, factory: MetricsFactory) -> None:
    """Make ``build_metrics(dataset, ...)`` use ``factory(mode, eval_config)``."""
    _FACTORIES[dataset] = factory


def build_metrics(dataset: str, mode: str, cfg: EvalConfig | None = None) -> dict[str, Any]:
    """The evaluator's metrics for ``dataset`` in ``mode`` (name → ignite Metric).

    Results are published as ``"<constraint>/<key>"`` (``"with/R@20"``, ``"no/mR@50"``).
    """
    if dataset not in _FACTORIES:
        raise KeyError(
            f"no metrics registered for dataset {dataset!r}; known: {sorted(_FACTORIES)}"
        )
    return _FACTORIES[dataset](mode, cfg or EvalConfig())

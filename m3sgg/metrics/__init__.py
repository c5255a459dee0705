"""Scene-graph metrics as ignite Metrics, and the per-dataset choice of which ones run.

- :class:`~m3sgg.metrics.action_genome.ActionGenomeRecall` / ``ActionGenomeRecallSuite``:
  R@K, mR@K and per-predicate recall under the with/semi/no constraints (STTran/TEMPURA).
- :class:`~m3sgg.metrics.easg.EASGRecall`: EASG triplet recall (edgecls, sgcls, easgcls).

:func:`build_metrics` is how the evaluator learns what to compute for a dataset; a plugin adds a
dataset's metrics with :func:`register_metrics`, and one more metric to an existing dataset's
evaluation with :func:`register_metric` (its results are published as ``"<name>/<key>"``, printed
on the console's evaluation line and written to ``metrics.jsonl``).
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
    "extra_metric_names",
    "register_metric",
    "register_metrics",
]

MetricsFactory = Callable[[str, EvalConfig], dict[str, Metric]]
MetricFactory = Callable[[str, EvalConfig], Metric]


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


_EXTRA: dict[str, dict[str, MetricFactory]] = {}


def register_metrics(dataset: str, factory: MetricsFactory) -> None:
    """Make ``build_metrics(dataset, ...)`` use ``factory(mode, eval_config)``."""
    _FACTORIES[dataset] = factory


def register_metric(
    dataset: str, name: str, factory: MetricFactory, *, override: bool = False
) -> None:
    """Add one metric to ``dataset``'s evaluation, beside the ones it already has.

    ``factory(mode, eval_config)`` returns an ignite :class:`~ignite.metrics.Metric` fed the
    same ``(gt, pred)`` pairs as the dataset's own metrics; its ``compute()`` returns a dict whose
    keys are published as ``"<name>/<key>"``. A taken name raises unless ``override``.

    Example::

        register_metric("action_genome", "mean_pairs", lambda mode, cfg: MeanPairs())
    """
    taken = _EXTRA.setdefault(dataset, {})
    if name in taken and not override:
        raise ValueError(f"metric {name!r} of dataset {dataset!r} is already registered")
    if "/" in name or not name:
        raise ValueError(f"metric name {name!r}: must be non-empty and contain no '/'")
    taken[name] = factory


def extra_metric_names(dataset: str) -> list[str]:
    """The names :func:`register_metric` added to ``dataset``, in registration order."""
    return list(_EXTRA.get(dataset, {}))


def build_metrics(dataset: str, mode: str, cfg: EvalConfig | None = None) -> dict[str, Any]:
    """The evaluator's metrics for ``dataset`` in ``mode`` (name → ignite Metric).

    Results are published as ``"<constraint>/<key>"`` (``"with/R@20"``, ``"no/mR@50"``).
    """
    if dataset not in _FACTORIES:
        raise KeyError(
            f"no metrics registered for dataset {dataset!r}; known: {sorted(_FACTORIES)}"
        )
    cfg = cfg or EvalConfig()
    metrics = dict(_FACTORIES[dataset](mode, cfg))
    for name, factory in _EXTRA.get(dataset, {}).items():
        if name in metrics:
            raise ValueError(f"metric {name!r} of dataset {dataset!r} is a built-in one")
        metrics[name] = factory(mode, cfg)
    return metrics

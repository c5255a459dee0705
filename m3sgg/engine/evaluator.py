"""The evaluator: a second ignite Engine that runs the model over the test set and the metrics.

``eval_step`` runs the model on a batch (no grad, eval mode, optional autocast) and splits the
batch-level predictions into one ``(ground truth, prediction)`` pair per sample with the dataset's
``split`` function. The ``metrics`` handler feeds every pair to each metric and, at COMPLETED,
publishes their results in ``engine.state.metrics`` under ``"<name>/<key>"``: the Action Genome
suite is registered under no prefix and reports ``"with/R@20"`` itself; the EASG metrics are
registered per constraint (``"with"``, ``"no"``). Which metrics run is decided by the dataset
(:func:`m3sgg.metrics.build_metrics`), never by the model.

Models with several output heads (STKET: spatial, temporal, ensemble) declare them with
``output_heads`` (names) and ``rank_head`` (the head checkpoints and schedules are ranked by).
Their predictions carry each head's version of a contract key as ``"<head>/<key>"``
(``"temporal/attention_distribution"``). Every head is then split and scored by its own copy of
the metrics and published under ``"<head>/<key>"`` (``"temporal/with/R@20"``); the rank head is
also published under the plain keys (``"with/R@20"``), which the default handlers watch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.engine.events import RemovableEventHandle
from ignite.metrics import Metric

from m3sgg.engine.handlers.base import Handler, HandlerList

__all__ = ["Evaluator", "MetricsRunner", "head_view", "output_heads"]

SplitFn = Callable[[Any, Mapping[str, torch.Tensor]], list[tuple[Any, dict[str, torch.Tensor]]]]


def output_heads(model: torch.nn.Module) -> tuple[tuple[str, ...], str | None]:
    """The model's declared ``(output_heads, rank_head)``; ``((), None)`` for one-head models.

    Raises:
        ValueError: ``rank_head`` is not one of ``output_heads``.
    """
    from m3sgg.engine.trainer import unwrap_model

    inner = unwrap_model(model)
    heads = tuple(getattr(inner, "output_heads", ()) or ())
    if not heads:
        return (), None
    rank = getattr(inner, "rank_head", None) or heads[0]
    if rank not in heads:
        raise ValueError(f"rank_head {rank!r} is not one of the model's output heads {heads}")
    return heads, rank


def head_view(predictions: Mapping[str, Any], head: str) -> dict[str, Any]:
    """The predictions as head ``head`` makes them: ``"<head>/<key>"`` replaces ``<key>``, and
    other heads' keys are left out."""
    prefix = f"{head}/"
    view = {k: v for k, v in predictions.items() if "/" not in k}
    view.update({k[len(prefix) :]: v for k, v in predictions.items() if k.startswith(prefix)})
    return view


class MetricsRunner(Handler):
    """Reset metrics at STARTED, update them per sample at ITERATION_COMPLETED, publish at
    COMPLETED.

    Args:
        metrics: name → ignite Metric. A metric whose result keys already carry a ``"/"`` (the
            AG suite: ``"with/R@20"``) is published as is; others get ``"<name>/"`` in front.
        heads: output heads of a multi-head model: each gets its own copy of ``metrics``, fed
            from ``engine.state.output[head]``, and is published under ``"<head>/<key>"``.
        rank_head: the head also published under the plain keys (default: the first).
    """

    name = "metrics"
    priority = 10

    def __init__(
        self,
        metrics: Mapping[str, Metric],
        *,
        heads: Sequence[str] = (),
        rank_head: str | None = None,
    ):
        self.metrics = dict(metrics)
        self.heads = tuple(heads)
        self.rank_head = rank_head or (self.heads[0] if self.heads else None)
        if self.heads and self.rank_head not in self.heads:
            raise ValueError(f"rank_head {self.rank_head!r} is not one of {self.heads}")
        self.head_metrics = {
            head: {name: copy.deepcopy(metric) for name, metric in self.metrics.items()}
            for head in self.heads
        }

    def events(self) -> list[Any]:
        return [Events.STARTED, Events.ITERATION_COMPLETED, Events.COMPLETED]

    def attach(self, engine: Engine) -> list[RemovableEventHandle]:
        """One method per event (``last_event_name`` is unreliable under nested events)."""
        started, iteration, completed = self.events()
        return [
            engine.add_event_handler(started, self.reset),
            engine.add_event_handler(iteration, self.update),
            engine.add_event_handler(completed, self.publish),
        ]

    def __call__(self, engine: Engine) -> None:
        self.update(engine)

    def _groups(self) -> list[tuple[str | None, dict[str, Metric]]]:
        if self.heads:
            return list(self.head_metrics.items())
        return [(None, self.metrics)]

    def reset(self, engine: Engine) -> None:
        for _, metrics in self._groups():
            for metric in metrics.values():
                metric.reset()

    def update(self, engine: Engine) -> None:
        output = engine.state.output
        for head, metrics in self._groups():
            for sample in output if head is None else output[head]:
                for metric in metrics.values():
                    metric.update(sample)

    def publish(self, engine: Engine) -> None:
        for head, metrics in self._groups():
            for name, metric in metrics.items():
                for key, value in metric.compute().items():
                    plain = key if "/" in key else f"{name}/{key}"
                    if head is not None:
                        engine.state.metrics[f"{head}/{plain}"] = value
                    if head == self.rank_head:
                        engine.state.metrics[plain] = value


class Evaluator:
    """Runs ``model`` over ``dataloader`` with its own ignite engine and returns the metrics.

    Args:
        model: a model following :mod:`m3sgg.models.base`'s protocol.
        dataloader: yields collated batches (with ``.to(device)``).
        metrics: name → metric (see :func:`m3sgg.metrics.build_metrics`).
        split: ``(batch, predictions) -> [(gt, pred), ...]`` for the metrics.
        device: where the model runs.
        amp_dtype: autocast dtype (``torch.bfloat16``/``float16``) or None.
        object_detector: optional frozen module turning a raw batch into model inputs.

    Example::

        evaluator = Evaluator(model, test_loader, build_metrics("action_genome", "predcls"),
                              split_predictions)
        metrics = evaluator.eval_loop()  # {"with/R@20": 0.61, "no/mR@50": ...}
    """

    def __init__(
        self,
        model: torch.nn.Module,
        dataloader: Iterable[Any],
        metrics: Mapping[str, Metric],
        split: SplitFn,
        *,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
        object_detector: torch.nn.Module | None = None,
    ):
        self.model = model
        self.dataloader = dataloader
        self.split = split
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        self.object_detector = object_detector
        self.engine = Engine(self.eval_step)
        self.handlers = HandlerList(self.engine, "eval")
        self.heads, rank_head = output_heads(model)
        self.metrics_runner = MetricsRunner(metrics, heads=self.heads, rank_head=rank_head)
        self.handlers.add(self.metrics_runner)

    def eval_step(self, engine: Engine, batch: Any) -> Any:
        """Predictions for one batch, split per sample (video or graph) for the metrics; for a
        multi-head model, ``{head: samples}`` (each head's view split on its own)."""
        self.model.eval()
        if getattr(batch, "device", None) != self.device:
            batch = batch.to(self.device, non_blocking=True)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else nullcontext()
        )
        with torch.no_grad(), autocast:
            if self.object_detector is not None:
                batch = self.object_detector(batch)
            predictions = self.model(batch)
        predictions = {
            k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in predictions.items()
        }
        if self.heads:
            return {head: self.split(batch, head_view(predictions, head)) for head in self.heads}
        return self.split(batch, predictions)

    def eval_loop(self) -> dict[str, Any]:
        """Evaluate once over the whole dataloader; returns (and leaves in
        ``engine.state.metrics``) the flat metric dict."""
        was_training = self.model.training
        try:
            state = self.engine.run(self.dataloader, max_epochs=1)
        finally:
            self.model.train(was_training)
        return dict(state.metrics)

    def describe(self) -> str:
        return self.handlers.describe()

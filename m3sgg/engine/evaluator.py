"""The evaluator: a second ignite Engine that runs the model over the test set and the metrics.

``eval_step`` runs the model on a batch (no grad, eval mode, optional autocast) and splits the
batch-level predictions into one ``(ground truth, prediction)`` pair per sample with the dataset's
``split`` function. The ``metrics`` handler feeds every pair to each metric and, at COMPLETED,
publishes their results in ``engine.state.metrics`` under ``"<name>/<key>"``: the Action Genome
suite is registered under no prefix and reports ``"with/R@20"`` itself; the EASG metrics are
registered per constraint (``"with"``, ``"no"``). Which metrics run is decided by the dataset
(:func:`m3sgg.metrics.build_metrics`), never by the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.engine.events import RemovableEventHandle
from ignite.metrics import Metric

from m3sgg.engine.handlers.base import Handler, HandlerList

__all__ = ["Evaluator", "MetricsRunner"]

SplitFn = Callable[[Any, Mapping[str, torch.Tensor]], list[tuple[Any, dict[str, torch.Tensor]]]]


class MetricsRunner(Handler):
    """Reset metrics at STARTED, update them per sample at ITERATION_COMPLETED, publish at
    COMPLETED.

    Args:
        metrics: name → ignite Metric. A metric whose result keys already carry a ``"/"`` (the
            AG suite: ``"with/R@20"``) is published as is; others get ``"<name>/"`` in front.
    """

    name = "metrics"
    priority = 10

    def __init__(self, metrics: Mapping[str, Metric]):
        self.metrics = dict(metrics)

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

    def reset(self, engine: Engine) -> None:
        for metric in self.metrics.values():
            metric.reset()

    def update(self, engine: Engine) -> None:
        for sample in engine.state.output:
            for metric in self.metrics.values():
                metric.update(sample)

    def publish(self, engine: Engine) -> None:
        for name, metric in self.metrics.items():
            for key, value in metric.compute().items():
                engine.state.metrics[key if "/" in key else f"{name}/{key}"] = value


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
        self.metrics_runner = MetricsRunner(metrics)
        self.handlers.add(self.metrics_runner)

    def eval_step(self, engine: Engine, batch: Any) -> list[tuple[Any, dict[str, torch.Tensor]]]:
        """Predictions for one batch, split per sample (video or graph) for the metrics."""
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

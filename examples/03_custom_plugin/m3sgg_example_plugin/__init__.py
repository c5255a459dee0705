"""An m3sgg plugin with the four kinds of extension: a model, a metric, a gradient hook and an
evaluation logger, configured by options.

m3sgg imports this module in every run of the environment it is installed in (the
``m3sgg.plugins`` entry point ``example`` in ``pyproject.toml``), before the model is built:
importing registers the model ``pair_probe`` and the Action Genome metric ``relations``. Runs that
name the plugin (``--plugin example``, or ``plugins: [{name: example, options: {...}}]``) also
call :func:`setup` with the trainer, which attaches the two handlers.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from ignite.metrics import Metric
from torch import nn

from m3sgg import Handler, M3sggEvents
from m3sgg.metrics import register_metric
from m3sgg.models import AG_PREDICTION_KEYS, register_model
from m3sgg.vocab import AG_PREDICATES

__all__ = ["GradNormMonitor", "PairProbe", "RelationsPerVideo", "WeakestPredicates", "setup"]

logger = logging.getLogger("m3sgg")


# -- a model: predicates from the subject and object box features -----------------------------


@register_model("pair_probe", datasets={"action_genome"}, modes={"predcls"})
class PairProbe(nn.Module):
    """Predicts each pair's predicates with one linear layer over the subject's and the object's
    box features (see docs/batch.md for the fields it reads)."""

    prediction_keys = AG_PREDICTION_KEYS
    supported_datasets = frozenset({"action_genome"})
    supported_modes = frozenset({"predcls"})
    input_section = "gt"

    def __init__(self, *, object_dim: int, union_channels: int, dataset: str, mode: str):
        super().__init__()
        self.head = nn.Linear(2 * object_dim, 3 + 6 + 17)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        pairs = batch.box_features[batch.pair_idx]  # [P, 2, object_dim]
        logits = self.head(pairs.flatten(1))
        return {
            "boxes": batch.boxes,
            "labels": batch.labels,
            "scores": batch.scores,
            "pred_labels": batch.labels,
            "pred_scores": batch.scores,
            "im_idx": batch.im_idx,
            "pair_idx": batch.pair_idx,
            "attention_distribution": logits[:, :3],
            "spatial_distribution": logits[:, 3:9].sigmoid(),
            "contacting_distribution": logits[:, 9:].sigmoid(),
            "logits": logits,
        }

    def loss(self, predictions: dict[str, torch.Tensor], batch: Any) -> dict[str, torch.Tensor]:
        keep = batch.relation_mask
        logits = predictions["logits"][keep]
        return {
            "attention": F.cross_entropy(logits[:, :3], batch.attention[keep]),
            "spatial": F.binary_cross_entropy_with_logits(logits[:, 3:9], batch.spatial[keep]),
            "contacting": F.binary_cross_entropy_with_logits(logits[:, 9:], batch.contacting[keep]),
        }


# -- a metric: added to Action Genome's evaluation beside the recall suite --------------------


class RelationsPerVideo(Metric):
    """Ground-truth relations per evaluated video (``relations/mean``) and videos seen."""

    def reset(self) -> None:
        self.relations = 0
        self.videos = 0

    def update(self, output: Any) -> None:
        gt, _prediction = output
        self.relations += gt.num_relations
        self.videos += 1

    def compute(self) -> dict[str, float]:
        return {"mean": self.relations / max(self.videos, 1), "videos": float(self.videos)}


register_metric("action_genome", "relations", lambda mode, eval_config: RelationsPerVideo())


# -- a gradient hook ----------------------------------------------------------------------------


class GradNormMonitor(Handler):
    """At BEFORE_OPTIMIZER_STEP: count steps, how many were clipped and the largest pre-clip
    gradient norm; log them every ``every`` steps. Its state is saved in checkpoints."""

    name = "grad_norm_monitor"
    priority = 50

    def __init__(self, clip: float | None, every: int = 50):
        self.clip = clip
        self.every = every
        self.steps = 0
        self.clipped = 0
        self.largest = 0.0

    def events(self) -> list[Any]:
        return [M3sggEvents.BEFORE_OPTIMIZER_STEP]

    def __call__(self, engine: Any) -> None:
        norm = float(engine.state.grad_norm)  # a host sync per step: fine for a toy monitor
        self.steps += 1
        self.largest = max(self.largest, norm)
        if self.clip is not None and norm > self.clip:
            self.clipped += 1
        if self.steps % self.every == 0:
            logger.info(
                "grad norm step %d: %.4f (largest %.4f, clipped %d)",
                self.steps,
                norm,
                self.largest,
                self.clipped,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "clipped": self.clipped, "largest": self.largest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.clipped, self.largest = state["steps"], state["clipped"], state["largest"]


# -- an evaluation logger -----------------------------------------------------------------------


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


def setup(trainer: Any, *, every: int = 50, weakest: int = 3) -> None:
    """The entry point. Options (``plugins: [{name: example, options: {...}}]``):

    Args:
        every: log the gradient norm every this many optimizer steps.
        weakest: how many predicates the evaluation logger lists.
    """
    trainer.handlers.add(GradNormMonitor(trainer.config.optim.grad_clip, every=every))
    anchor = {"after": "metrics_file"} if "metrics_file" in trainer.handlers else {}
    trainer.handlers.add(WeakestPredicates(count=weakest), **anchor)
    logger.info("m3sgg-example-plugin: attached grad_norm_monitor and weakest_predicates")

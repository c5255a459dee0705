"""EASG models: action scene graphs (verb, objects, edges verb → object) from precomputed features.

Both models read an :class:`~m3sgg.data.collate_easg.EASGBatch`: one clip (verb) feature per
graph (SlowFast, 2304 wide in the release) and one RoI feature per object (1024; the mean over
the frame types where the object is grounded). Widths and vocabulary sizes are constructor
arguments; :func:`easg_model_inputs` reads them from a dataset.

- ``"easg_fc"`` (:class:`EASGFC`): the task-specific fully connected baseline of the EASG paper
  (Rodin et al., CVPR 2024), written from its description. Three independent classifiers: the
  verb from the clip feature, each object's class from its RoI feature, and each object's edges
  from the concatenation of a projection of the clip feature and a projection of the object's
  RoI feature. Why: it is the published reference point; every edge decision is made alone.
- ``"sttran_easg"`` (:class:`STTranEASG`): the STTran idea (Cong et al., ICCV 2021) carried over
  to EASG. Each (verb, object) pair of a graph becomes a relation token: the projected object
  feature, the projected verb feature and class embeddings of the object and of the verb. A
  transformer encoder lets the tokens of one graph attend to each other (masked so that graphs of
  a batch never see each other), and a linear head reads the edges from each token. Why: an
  object's edges depend on the other objects of the action (``cut`` a ``tomato`` *with* a
  ``knife``), which the FC baseline cannot see.

  Class embeddings use what the task gives: the ground-truth object classes in ``edgecls`` and
  the predicted class *distribution* otherwise (``softmax(obj_logits) @ embedding``, a soft
  embedding: the ground truth is not available to ``sgcls``/``easgcls`` at test time, so training
  uses the same input it will see then); the ground-truth verb in ``edgecls`` and ``sgcls``, the
  predicted verb distribution in ``easgcls``. The distributions are detached: the class heads
  learn only from their own cross-entropy. ``embed_dim=0`` leaves the embeddings out.

**Heads and losses per mode.** The metric (:class:`~m3sgg.metrics.easg.EASGRecall`) reads
``rel_logits`` in every task, ``obj_logits`` in ``sgcls`` and ``easgcls`` and ``verb_logits`` in
``easgcls``. A model builds, predicts and trains exactly what its mode is scored on:

============  =========================================  ==========================
mode          predictions                                losses
============  =========================================  ==========================
edgecls       ``rel_logits``                             ``edge``
sgcls         ``obj_logits``, ``rel_logits``             ``object``, ``edge``
easgcls       ``verb_logits``, ``obj_logits``,           ``verb``, ``object``,
              ``rel_logits``                             ``edge``
============  =========================================  ==========================

so every parameter of a model receives gradients in its mode. ``all_heads=True`` builds and
trains the three heads in every mode, so that one model can be scored on all three tasks.
Losses: ``verb`` cross-entropy over graphs, ``object`` cross-entropy over objects, ``edge``
binary cross-entropy with logits over the multi-hot edges (mean over objects and edge labels);
each multiplied by ``loss_weights[name]`` (default 1).

Objects grounded in no frame have no RoI feature; both models put a learned vector in its place.

Batching: everything is per graph or per object, and the encoder packs the tokens of each graph
into one row of a ``[G, L, d_model]`` tensor with a block mask, so several graphs per batch give
the same numbers as one at a time (in eval mode).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from m3sgg.data.collate_easg import EASGBatch
from m3sgg.data.easg import easg_model_inputs
from m3sgg.errors import ConfigError
from m3sgg.models.base import SceneGraphModel, resolve_loss_weights
from m3sgg.models.registry import register_model

__all__ = ["EASGFC", "EASG_LOSS_NAMES", "STTranEASG", "easg_model_inputs"]

DATASETS = frozenset({"easg"})
MODES = frozenset({"edgecls", "sgcls", "easgcls"})
#: Names of the losses an EASG model may return.
EASG_LOSS_NAMES: tuple[str, ...] = ("verb", "object", "edge")


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Linear → ReLU → Dropout → Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden_dim, out_dim),
    )


def _positive_ints(model: str, values: Mapping[str, Any], minimum: int = 1) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            kind = "a positive" if minimum == 1 else "a non-negative"
            raise ConfigError(f"{model}: {key} must be {kind} integer, got {value!r}")


def _mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of all elements; 0 (still in the autograd graph) for an empty tensor."""
    return values.sum() / max(values.numel(), 1)


class _EASGModel(SceneGraphModel):
    """What both EASG models share: validation, the heads a mode needs, inputs, losses."""

    supported_datasets: ClassVar[frozenset[str]] = DATASETS
    supported_modes: ClassVar[frozenset[str]] = MODES
    model_name: ClassVar[str] = ""

    def __init__(
        self,
        *,
        dataset: str,
        mode: str,
        object_dim: int,
        verb_dim: int,
        num_verbs: int,
        num_objects: int,
        num_relations: int,
        dropout: float,
        all_heads: bool,
        loss_weights: Mapping[str, float] | None,
    ) -> None:
        name = self.model_name
        if dataset not in DATASETS:
            raise ConfigError(f"{name}: dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
        if mode not in MODES:
            raise ConfigError(f"{name}: mode must be one of {sorted(MODES)}, got {mode!r}")
        super().__init__(mode)
        _positive_ints(
            name,
            {
                "object_dim": object_dim,
                "verb_dim": verb_dim,
                "num_verbs": num_verbs,
                "num_objects": num_objects,
                "num_relations": num_relations,
            },
        )
        if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"{name}: dropout must lie in [0, 1), got {dropout!r}")
        if not isinstance(all_heads, bool):
            raise ConfigError(f"{name}: all_heads must be a bool, got {all_heads!r}")
        self.loss_weights = resolve_loss_weights(name, loss_weights, EASG_LOSS_NAMES)
        self.object_dim = object_dim
        self.verb_dim = verb_dim
        self.num_verbs = num_verbs
        self.num_objects = num_objects
        self.num_relations = num_relations
        self.predicts_verb = all_heads or mode == "easgcls"
        self.predicts_objects = all_heads or mode != "edgecls"
        #: stands in for the RoI feature of an object grounded in no frame
        self.missing_object = nn.Parameter(torch.zeros(object_dim))

    @property
    def prediction_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        """The logits this model's mode produces (see the module docstring)."""
        keys = ("verb_logits",) if self.predicts_verb else ()
        keys += ("obj_logits",) if self.predicts_objects else ()
        return (*keys, "rel_logits")

    def _object_inputs(self, batch: EASGBatch) -> torch.Tensor:
        """``[O, object_dim]`` RoI features, the learned vector for objects without one."""
        feats = batch.obj_features
        if feats.shape[-1] != self.object_dim or batch.verb_features.shape[-1] != self.verb_dim:
            raise ValueError(
                f"{self.model_name}: batch features are {feats.shape[-1]} (object) and "
                f"{batch.verb_features.shape[-1]} (verb) wide, the model expects "
                f"object_dim={self.object_dim} and verb_dim={self.verb_dim}"
            )
        return torch.where(batch.object_mask[:, None], feats, self.missing_object.to(feats.dtype))

    def loss(
        self, predictions: Mapping[str, torch.Tensor], batch: EASGBatch
    ) -> dict[str, torch.Tensor]:
        """Weighted named losses: ``edge``, plus ``object`` and ``verb`` where the mode (or
        ``all_heads``) predicts them."""
        rel_logits = predictions["rel_logits"]
        edge = F.binary_cross_entropy_with_logits(
            rel_logits, batch.edge_targets.to(rel_logits.dtype), reduction="none"
        )
        losses = {"edge": _mean(edge)}
        if self.predicts_objects:
            losses["object"] = _mean(
                F.cross_entropy(predictions["obj_logits"], batch.object_targets, reduction="none")
            )
        if self.predicts_verb:
            losses["verb"] = F.cross_entropy(predictions["verb_logits"], batch.verb_targets)
        return {name: value * self.loss_weights[name] for name, value in losses.items()}

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, verbs={self.num_verbs}, objects={self.num_objects}, "
            f"relations={self.num_relations}, predicts={list(self.prediction_keys)}"
        )


@register_model("easg_fc", datasets=DATASETS, modes=MODES)
class EASGFC(_EASGModel):
    """Task-specific fully connected EASG baseline (module docstring: what and why).

    Args:
        object_dim: RoI feature width (1024 in the release).
        verb_dim: clip feature width (2304 in the release).
        num_verbs, num_objects, num_relations: vocabulary sizes (``verbs.txt``, ...).
        dataset: ``"easg"``.
        mode: ``"edgecls"``, ``"sgcls"`` or ``"easgcls"``.
        hidden_dim: hidden width of the three classifiers.
        proj_dim: width of the verb and object projections the edge classifier reads.
        dropout: dropout before each classifier's output layer.
        all_heads: build and train the verb and object classifiers in every mode.
        loss_weights: multipliers of ``verb``, ``object``, ``edge``; missing names weigh 1.

    Example::

        model = build_model("easg_fc", "easg", "sgcls", **easg_model_inputs(train_set))
        predictions = model(collate_easg([train_set[0], train_set[1]]))
    """

    model_name = "easg_fc"

    def __init__(
        self,
        *,
        object_dim: int,
        verb_dim: int,
        num_verbs: int,
        num_objects: int,
        num_relations: int,
        dataset: str = "easg",
        mode: str = "edgecls",
        hidden_dim: int = 512,
        proj_dim: int = 512,
        dropout: float = 0.1,
        all_heads: bool = False,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(
            dataset=dataset,
            mode=mode,
            object_dim=object_dim,
            verb_dim=verb_dim,
            num_verbs=num_verbs,
            num_objects=num_objects,
            num_relations=num_relations,
            dropout=dropout,
            all_heads=all_heads,
            loss_weights=loss_weights,
        )
        _positive_ints(self.model_name, {"hidden_dim": hidden_dim, "proj_dim": proj_dim})
        self.verb_head = (
            _mlp(verb_dim, hidden_dim, num_verbs, dropout) if self.predicts_verb else None
        )
        self.object_head = (
            _mlp(object_dim, hidden_dim, num_objects, dropout) if self.predicts_objects else None
        )
        self.verb_proj = nn.Linear(verb_dim, proj_dim)
        self.object_proj = nn.Linear(object_dim, proj_dim)
        self.edge_head = nn.Sequential(
            nn.ReLU(),
            nn.Dropout(dropout),
            _mlp(2 * proj_dim, hidden_dim, num_relations, dropout),
        )

    def forward(self, batch: EASGBatch) -> dict[str, torch.Tensor]:
        """``rel_logits`` ``[O, R]``, and ``obj_logits`` ``[O, C]`` / ``verb_logits``
        ``[G, V]`` where predicted."""
        objects = self._object_inputs(batch)
        out: dict[str, torch.Tensor] = {}
        if self.verb_head is not None:
            out["verb_logits"] = self.verb_head(batch.verb_features)
        if self.object_head is not None:
            out["obj_logits"] = self.object_head(objects)
        pair = torch.cat(
            [self.verb_proj(batch.verb_features)[batch.object_graph], self.object_proj(objects)],
            dim=1,
        )
        out["rel_logits"] = self.edge_head(pair)
        return out


@register_model("sttran_easg", datasets=DATASETS, modes=MODES)
class STTranEASG(_EASGModel):
    """STTran-style EASG model: a transformer over each graph's relation tokens (module docstring).

    Args:
        object_dim: RoI feature width (1024 in the release).
        verb_dim: clip feature width (2304 in the release).
        num_verbs, num_objects, num_relations: vocabulary sizes (``verbs.txt``, ...).
        dataset: ``"easg"``.
        mode: ``"edgecls"``, ``"sgcls"`` or ``"easgcls"``.
        d_model: token width; divisible by ``heads``.
        proj_dim: width of the object and verb feature projections in a token.
        embed_dim: width of each class embedding in a token (0: no class embeddings).
        heads: attention heads.
        ff_dim: feed-forward width of the encoder layers.
        layers: encoder layers (0: tokens go straight to the edge head).
        hidden_dim: hidden width of the verb and object classifiers.
        dropout: dropout in the encoder layers and the classifiers.
        all_heads: build and train the verb and object classifiers in every mode.
        loss_weights: multipliers of ``verb``, ``object``, ``edge``; missing names weigh 1.

    Example::

        model = build_model("sttran_easg", "easg", "easgcls", **easg_model_inputs(train_set))
        losses = model.loss(model(batch), batch)
    """

    model_name = "sttran_easg"

    def __init__(
        self,
        *,
        object_dim: int,
        verb_dim: int,
        num_verbs: int,
        num_objects: int,
        num_relations: int,
        dataset: str = "easg",
        mode: str = "edgecls",
        d_model: int = 512,
        proj_dim: int = 224,
        embed_dim: int = 32,
        heads: int = 8,
        ff_dim: int = 1024,
        layers: int = 2,
        hidden_dim: int = 512,
        dropout: float = 0.1,
        all_heads: bool = False,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(
            dataset=dataset,
            mode=mode,
            object_dim=object_dim,
            verb_dim=verb_dim,
            num_verbs=num_verbs,
            num_objects=num_objects,
            num_relations=num_relations,
            dropout=dropout,
            all_heads=all_heads,
            loss_weights=loss_weights,
        )
        name = self.model_name
        _positive_ints(
            name,
            {
                "d_model": d_model,
                "proj_dim": proj_dim,
                "heads": heads,
                "ff_dim": ff_dim,
                "hidden_dim": hidden_dim,
            },
        )
        _positive_ints(name, {"embed_dim": embed_dim, "layers": layers}, minimum=0)
        if d_model % heads:
            raise ConfigError(f"{name}: d_model ({d_model}) must be divisible by heads ({heads})")
        self.heads = heads
        self.verb_head = (
            _mlp(verb_dim, hidden_dim, num_verbs, dropout) if self.predicts_verb else None
        )
        self.object_head = (
            _mlp(object_dim, hidden_dim, num_objects, dropout) if self.predicts_objects else None
        )
        self.object_proj = nn.Linear(object_dim, proj_dim)
        self.verb_proj = nn.Linear(verb_dim, proj_dim)
        self.object_embed = nn.Embedding(num_objects, embed_dim) if embed_dim else None
        self.verb_embed = nn.Embedding(num_verbs, embed_dim) if embed_dim else None
        token_dim = 2 * proj_dim + 2 * embed_dim
        self.token_proj: nn.Module = (
            nn.Identity() if token_dim == d_model else nn.Linear(token_dim, d_model)
        )
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, ff_dim, dropout, batch_first=True)
            for _ in range(layers)
        )
        self.edge_head = nn.Linear(d_model, num_relations)

    def _embeddings(self, batch: EASGBatch, out: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Object and verb class embeddings per object: GT where the task gives the class,
        the detached predicted distribution times the table otherwise."""
        if self.object_embed is None or self.verb_embed is None:
            return []
        if self.mode == "edgecls":
            objects = self.object_embed(batch.object_targets)
        else:
            probs = torch.softmax(out["obj_logits"].detach(), dim=1)
            objects = probs @ self.object_embed.weight
        if self.mode == "easgcls":
            verbs = torch.softmax(out["verb_logits"].detach(), dim=1) @ self.verb_embed.weight
        else:
            verbs = self.verb_embed(batch.verb_targets)
        return [objects, verbs[batch.object_graph]]

    def _contextualise(self, tokens: torch.Tensor, batch: EASGBatch) -> torch.Tensor:
        """Encoder layers over the tokens packed per graph ``[G, L, d_model]``, block-masked."""
        num_graphs = batch.num_graphs
        length = max(max(batch.object_counts), 1)
        device = tokens.device
        start = torch.tensor(batch.object_offsets[:-1], dtype=torch.int64, device=device)
        slot = torch.arange(tokens.shape[0], device=device) - start[batch.object_graph]
        flat = batch.object_graph * length + slot  # position of each token in the packed tensor
        size = num_graphs * length
        x = tokens.new_zeros(size, tokens.shape[1]).index_copy(0, flat, tokens)
        x = x.view(num_graphs, length, -1)
        valid = torch.zeros(size, dtype=torch.bool, device=device).index_fill(0, flat, True)
        valid = valid.view(num_graphs, length)
        itself = torch.eye(length, dtype=torch.bool, device=device)
        # a padded slot attends only to itself, so no row of the mask is fully blocked
        blocked = ~((valid[:, :, None] & valid[:, None, :]) | itself)
        mask = blocked.repeat_interleave(self.heads, dim=0)  # [G * heads, L, L]
        for layer in self.encoder:
            x = layer(x, src_mask=mask)
        return x.reshape(size, -1)[flat]

    def forward(self, batch: EASGBatch) -> dict[str, torch.Tensor]:
        """``rel_logits`` ``[O, R]``, and ``obj_logits`` ``[O, C]`` / ``verb_logits``
        ``[G, V]`` where predicted."""
        objects = self._object_inputs(batch)
        out: dict[str, torch.Tensor] = {}
        if self.verb_head is not None:
            out["verb_logits"] = self.verb_head(batch.verb_features)
        if self.object_head is not None:
            out["obj_logits"] = self.object_head(objects)
        tokens = torch.cat(
            [
                self.object_proj(objects),
                self.verb_proj(batch.verb_features)[batch.object_graph],
                *self._embeddings(batch, out),
            ],
            dim=1,
        )
        tokens = self.token_proj(tokens)
        if tokens.shape[0] and len(self.encoder):
            tokens = self._contextualise(tokens, batch)
        out["rel_logits"] = self.edge_head(tokens)
        return out

"""STTran (Cong et al., ICCV 2021): the original's function on precomputed features.

Composition (each piece its own module, reusable by the models built on STTran):

- :class:`~m3sgg.models.sttran.relation.RelationFeatures`: the 1936-d relation token of every
  pair from box features, union maps, computed pair masks and class embeddings;
- :class:`~m3sgg.models.sttran.transformer.SpatialEncoder` (pairs of a frame) and
  :class:`~m3sgg.models.sttran.transformer.TemporalDecoder` (two-frame windows);
- heads ``a_rel_compress`` (3 attention logits), ``s_rel_compress`` (6) and ``c_rel_compress``
  (17), the last two through a sigmoid;
- in sgcls, :class:`~m3sgg.models.sttran.classifier.ObjectClassifier` on the GT boxes (features,
  the detector's class distributions, positions). Training keeps the GT labels and pairs (its
  logits feed the object loss); evaluation labels the boxes with
  :func:`~m3sgg.models.sttran.classifier.label_boxes` (person pick, duplicate relabelling) and
  re-forms the pairs: per frame, (its person box, every box not labelled person), in box order.

Inputs come from the feature store's ``gt`` section (the GT boxes; pairs person-object; in sgcls
the store's ``class_dists`` too). Several videos per batch give the same numbers as one at a
time: frames and windows never mix videos, and the loss is the mean of per-video losses (the
original steps one video at a time).

Losses (:meth:`STTran.loss`), per video as the original's ``train.py``, then averaged over the
videos that have pairs: cross-entropy on the attention logits; spatial and contacting with
``multilabel_margin_loss`` on the sigmoid *probabilities* (``relation_loss="margin"``, the
default) or binary cross-entropy on them (``"bce"``); in sgcls cross-entropy of the classifier's
logits against the box labels (background included), averaged over the video's boxes.

BatchNorm in training mode normalises with the statistics of the whole batch; the original sees
one video per step, so with several videos per training batch the BatchNorm layers (mask branch,
classifier) see more rows than the original's. Evaluation (running statistics) is unaffected.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from m3sgg.data.collate import Batch
from m3sgg.errors import ConfigError
from m3sgg.models.base import AG_PREDICTION_KEYS, SceneGraphModel, resolve_loss_weights
from m3sgg.models.registry import register_model
from m3sgg.models.sttran.classifier import ObjectClassifier, label_boxes
from m3sgg.models.sttran.postprocess import box_predictions, person_pairs, sgdet_boxes
from m3sgg.models.sttran.relation import RelationFeatures, class_word_vectors
from m3sgg.models.sttran.transformer import SpatialEncoder, TemporalDecoder
from m3sgg.vocab import AG_OBJECT_CLASSES, GROUP_SIZES, NUM_AG_CLASSES

__all__ = [
    "STTran",
    "object_loss",
    "per_video_mean",
    "relation_losses",
    "relation_tokens",
    "sttran_losses",
]

DATASETS = frozenset({"action_genome"})
MODES = frozenset({"predcls", "sgcls", "sgdet"})
LOSS_NAMES = ("attention", "spatial", "contacting")
OBJECT_LOSS = "object"
RELATION_LOSSES = ("margin", "bce")


def per_video_mean(values: torch.Tensor, video: torch.Tensor, num_videos: int) -> torch.Tensor:
    """Mean over videos of each video's mean of ``values`` (``video`` gives each row's video);
    videos without rows are left out; 0 (still in the graph) when no video has rows."""
    sums = values.new_zeros(num_videos).index_add(0, video, values)
    counts = torch.bincount(video, minlength=num_videos).to(values.dtype)
    present = counts > 0
    means = sums / counts.clamp(min=1)
    return (means * present).sum() / present.sum().clamp(min=1)


@register_model("sttran", datasets=DATASETS, modes=MODES)
class STTran(SceneGraphModel):
    """STTran; see the module docstring.

    Args:
        object_dim: width of the box features (2048 for the AG detector; the store's).
        union_channels: channels of the union maps (1024; the store's).
        dataset: ``"action_genome"``.
        mode: ``"predcls"``, ``"sgcls"`` or ``"sgdet"``.
        proj_dim: subject/object/union projection width (512).
        embed_dim: class embedding width (200); the token is ``3 * proj_dim + 2 * embed_dim``.
        conv_dim: channels of the union branch (256).
        heads: attention heads (8); must divide the token width.
        ff_dim: feed-forward width of the transformer layers (2048).
        enc_layers: spatial encoder layers (1).
        dec_layers: temporal decoder layers (3).
        dropout: dropout of the transformer layers and the classifier's position branch (0.1).
        classifier_dim: hidden width of the object classifier (1024; sgcls).
        pos_dim: width of the classifier's box-position embedding (128; sgcls).
        num_classes: object classes including background (37).
        class_names: names for word-vector look-up (default: AG's).
        word_vectors: optional GloVe-style text file initialising both class embeddings.
        relation_loss: ``"margin"`` or ``"bce"`` for the spatial and contacting heads.
        loss_weights: multipliers of the named losses; missing names weigh 1.

    Example::

        model = build_model("sttran", "action_genome", "predcls", object_dim=2048,
                            union_channels=1024)
        predictions = model(batch)
        sum(model.loss(predictions, batch).values()).backward()
    """

    prediction_keys: ClassVar[tuple[str, ...]] = AG_PREDICTION_KEYS
    supported_datasets: ClassVar[frozenset[str]] = DATASETS
    supported_modes: ClassVar[frozenset[str]] = MODES
    model_name: ClassVar[str] = "sttran"

    def __init__(
        self,
        *,
        object_dim: int,
        union_channels: int,
        dataset: str = "action_genome",
        mode: str = "predcls",
        proj_dim: int = 512,
        embed_dim: int = 200,
        conv_dim: int = 256,
        heads: int = 8,
        ff_dim: int = 2048,
        enc_layers: int = 1,
        dec_layers: int = 3,
        dropout: float = 0.1,
        classifier_dim: int = 1024,
        pos_dim: int = 128,
        num_classes: int = NUM_AG_CLASSES,
        class_names: Sequence[str] | None = None,
        word_vectors: str | os.PathLike[str] | None = None,
        relation_loss: str = "margin",
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        if dataset not in DATASETS:
            raise ConfigError(f"sttran: dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
        if mode not in MODES:
            raise ConfigError(f"sttran: mode must be one of {sorted(MODES)}, got {mode!r}")
        super().__init__(mode)
        widths = {
            "object_dim": object_dim,
            "union_channels": union_channels,
            "proj_dim": proj_dim,
            "embed_dim": embed_dim,
            "conv_dim": conv_dim,
            "heads": heads,
            "ff_dim": ff_dim,
            "classifier_dim": classifier_dim,
            "pos_dim": pos_dim,
        }
        for key, value in widths.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"sttran: {key} must be a positive integer, got {value!r}")
        if conv_dim % 2:
            raise ConfigError(f"sttran: conv_dim must be even, got {conv_dim}")
        for key, value in (("enc_layers", enc_layers), ("dec_layers", dec_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"sttran: {key} must be a non-negative integer, got {value!r}")
        token_dim = 3 * proj_dim + 2 * embed_dim
        if token_dim % heads:
            raise ConfigError(
                f"sttran: the token width 3*proj_dim + 2*embed_dim = {token_dim} must be "
                f"divisible by heads ({heads})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"sttran: dropout must lie in [0, 1), got {dropout!r}")
        if num_classes < 3:
            raise ConfigError(f"sttran: num_classes must be at least 3, got {num_classes}")
        if relation_loss not in RELATION_LOSSES:
            raise ConfigError(
                f"sttran: relation_loss must be one of {list(RELATION_LOSSES)}, "
                f"got {relation_loss!r}"
            )
        weights = resolve_loss_weights("sttran", loss_weights, (*LOSS_NAMES, OBJECT_LOSS))
        names = tuple(class_names) if class_names is not None else AG_OBJECT_CLASSES
        if len(names) != num_classes:
            raise ConfigError(f"sttran: {len(names)} class_names for num_classes={num_classes}")

        self.num_classes = num_classes
        self.relation_loss = relation_loss
        self.loss_weights = {name: weights[name] for name in self.loss_names()}
        self.relation = RelationFeatures(
            object_dim=object_dim,
            union_channels=union_channels,
            num_classes=num_classes,
            proj_dim=proj_dim,
            embed_dim=embed_dim,
            conv_dim=conv_dim,
        )
        self.spatial = SpatialEncoder(token_dim, heads, ff_dim, dropout, enc_layers)
        self.temporal = TemporalDecoder(token_dim, heads, ff_dim, dropout, dec_layers)
        self.a_rel_compress = nn.Linear(token_dim, GROUP_SIZES["attention"])
        self.s_rel_compress = nn.Linear(token_dim, GROUP_SIZES["spatial"])
        self.c_rel_compress = nn.Linear(token_dim, GROUP_SIZES["contacting"])
        self.object_classifier: ObjectClassifier | None = None
        if mode != "predcls":
            self.object_classifier = ObjectClassifier(
                object_dim=object_dim,
                num_classes=num_classes,
                embed_dim=embed_dim,
                pos_dim=pos_dim,
                hidden=classifier_dim,
                dropout=dropout,
            )
        if word_vectors is not None:
            self._init_embeddings(word_vectors, names, embed_dim)

    def loss_names(self) -> tuple[str, ...]:
        """The named losses of this mode."""
        return LOSS_NAMES if self.mode == "predcls" else (*LOSS_NAMES, OBJECT_LOSS)

    def _init_embeddings(
        self, path: str | os.PathLike[str], names: Sequence[str], dim: int
    ) -> None:
        vectors, missing = class_word_vectors(path, names, dim)
        keep = torch.tensor([n != "__background__" and n not in missing for n in names])
        with torch.no_grad():
            for embedding in (self.relation.obj_embed, self.relation.obj_embed2):
                embedding.weight[keep] = vectors[keep]
            if self.object_classifier is not None:  # classes 1.. (no background row)
                table = self.object_classifier.obj_embed.weight
                table[keep[1:]] = vectors[1:][keep[1:]]
        if missing:
            warnings.warn(
                f"word vectors {os.fspath(path)!r}: {len(missing)} of "
                f"{sum(n != '__background__' for n in names)} classes have no vector and keep "
                f"their random initialisation: {', '.join(missing)}",
                stacklevel=3,
            )

    # -- forward ---------------------------------------------------------------------------------

    def relations(
        self,
        batch: Batch,
        labels: torch.Tensor,
        pair_idx: torch.Tensor,
        im_idx: torch.Tensor,
        source: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Relation heads for ``pair_idx`` (indices into the boxes, pairs ordered by frame
        ``im_idx``) with box classes ``labels``: ``attention_distribution`` (logits),
        ``spatial_distribution`` and ``contacting_distribution`` (probabilities), all float32
        ``[P, ·]``, and the ``context`` ``[P, token]`` the heads read. The boxes are the batch's,
        or with ``source`` the batch boxes ``source`` picks (copies allowed: sgdet)."""
        tokens = relation_tokens(self.relation, batch, labels, pair_idx, source)
        frame_start = torch.tensor(batch.frame_offsets[:-1], device=tokens.device)
        frame_start = frame_start[batch.frame_video]
        x = self.spatial(tokens, im_idx, batch.num_frames)
        x = self.temporal(x, im_idx, frame_start, batch.num_frames)
        return {
            "context": x,
            "attention_distribution": self.a_rel_compress(x).float(),
            "spatial_distribution": torch.sigmoid(self.s_rel_compress(x).float()),
            "contacting_distribution": torch.sigmoid(self.c_rel_compress(x).float()),
        }

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Predictions with batch-level indices: the metric keys (``docs/metrics.md``).

        predcls: the given boxes, labels and pairs; ``pred_labels``/``pred_scores`` are the
        given ``labels``/``scores``. sgcls adds ``object_logits`` ``[N, num_classes]``; in
        training the labels and pairs stay the given ones, in evaluation ``pred_labels``,
        ``pred_scores``, ``pair_idx`` and ``im_idx`` are the re-formed ones (module docstring;
        pairs grouped by video and frame, so they can be fewer or more than the given ones)
        and ``object_distribution`` ``[N, num_classes - 1]`` is the softmax over classes 1..
        after the duplicate relabelling.
        """
        self.check_section(batch)
        if self.mode == "sgdet" and not self.training:
            return self._sgdet_evaluation(batch)
        out: dict[str, torch.Tensor] = {}
        labels, scores = batch.labels, batch.scores
        pair_idx, im_idx = batch.pair_idx, batch.im_idx
        if self.object_classifier is not None:
            if batch.class_dists is None:
                raise ConfigError(
                    f"sttran in {self.mode} needs the detector's class distributions of the "
                    f"boxes: a feature store whose {batch.section!r} section has class_dists"
                )
            logits = self.object_classifier(
                batch.box_features, batch.boxes[:, 1:], batch.class_dists
            ).float()
            out["object_logits"] = logits
            if not self.training:
                frame = batch.boxes[:, 0].long()
                dist, labels, scores, human = label_boxes(logits, frame, batch.num_frames)
                out["object_distribution"] = dist
                pair_idx, im_idx = person_pairs(labels, human, frame)
        out.update(self.relations(batch, labels, pair_idx, im_idx))
        out.pop("context")
        out.update(box_predictions(batch, labels, scores, pair_idx, im_idx))
        return out

    def _sgdet_evaluation(self, batch: Batch) -> dict[str, torch.Tensor]:
        """sgdet evaluation: the boxes :func:`~m3sgg.models.sttran.postprocess.sgdet_boxes`
        keeps (copies of detections included; ``boxes``, ``labels``, ``scores`` and the
        ``pred_*`` keys are per kept box), the original's classifier weights unused."""
        if batch.class_dists is None:
            raise ConfigError("sttran in sgdet needs the detections' class distributions")
        picked = sgdet_boxes(
            batch.boxes[:, 1:], batch.boxes[:, 0].long(), batch.class_dists, batch.num_frames
        )
        out = self.relations(
            batch, picked.labels, picked.pair_idx, picked.im_idx, source=picked.source
        )
        out.pop("context")
        out.update(picked.predictions(batch.boxes))
        return out

    # -- losses ----------------------------------------------------------------------------------

    def loss(
        self, predictions: Mapping[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]:
        """Weighted named losses ``attention``, ``spatial``, ``contacting`` (and ``object`` in
        sgcls): each the mean over videos of the video's mean over its pairs with targets
        (``batch.relation_mask``), or over its boxes for ``object``. Needs the training-mode
        predictions (the given pairs)."""
        return sttran_losses(
            predictions,
            batch,
            self.relation_loss,
            self.loss_weights,
            objects=self.object_classifier is not None,
        )


def sttran_losses(
    predictions: Mapping[str, torch.Tensor],
    batch: Batch,
    relation_loss: str,
    loss_weights: Mapping[str, float],
    *,
    objects: bool,
) -> dict[str, torch.Tensor]:
    """STTran's named losses, for the models built on it (:meth:`STTran.loss` describes them).

    Args:
        predictions: training-mode predictions (the batch's pairs; ``object_logits`` when
            ``objects``).
        batch: the collated batch with its targets.
        relation_loss: ``"margin"`` or ``"bce"`` for the spatial and contacting heads.
        loss_weights: a multiplier for every returned name.
        objects: add ``object``, the classifier's cross-entropy over the boxes.
    """
    losses = {
        name: value * loss_weights[name]
        for name, value in relation_losses(predictions, batch, relation_loss).items()
    }
    if objects:
        losses[OBJECT_LOSS] = (
            object_loss(predictions["object_logits"], batch) * loss_weights[OBJECT_LOSS]
        )
    return losses


def relation_losses(
    predictions: Mapping[str, torch.Tensor],
    batch: Batch,
    relation_loss: str,
    prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Unweighted ``attention``, ``spatial`` and ``contacting`` losses of the distributions
    ``predictions[prefix + "<group>_distribution"]`` (the batch's pairs): cross-entropy on the
    attention logits; ``multilabel_margin_loss`` (``relation_loss="margin"``) or binary
    cross-entropy (``"bce"``) on the spatial and contacting probabilities; each the mean over
    videos of the video's mean over its pairs with targets (``batch.relation_mask``)."""
    keep = batch.relation_mask
    video = batch.pair_video[keep]
    per_pair = {
        "attention": F.cross_entropy(
            predictions[f"{prefix}attention_distribution"][keep],
            batch.attention[keep],
            reduction="none",
        )
    }
    for group in ("spatial", "contacting"):
        probs = predictions[f"{prefix}{group}_distribution"][keep]
        target = getattr(batch, group)[keep]
        if relation_loss == "margin":
            per_pair[group] = F.multilabel_margin_loss(
                probs, _index_targets(target), reduction="none"
            )
        else:
            per_pair[group] = F.binary_cross_entropy(
                probs, target.to(probs.dtype), reduction="none"
            ).mean(dim=1)
    return {
        name: per_video_mean(value, video, batch.num_videos) for name, value in per_pair.items()
    }


def object_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Unweighted object loss: cross-entropy of the classifier's ``logits`` ``[N, C]`` against
    ``batch.object_targets`` (background 0 included), the mean over videos of the video's mean
    over its boxes with a target (``>= 0``)."""
    per_box = F.cross_entropy(logits, batch.object_targets.clamp(min=0), reduction="none")
    keep = batch.object_targets >= 0
    return per_video_mean(per_box[keep], batch.box_video[keep], batch.num_videos)


def relation_tokens(
    relation: RelationFeatures,
    batch: Batch,
    labels: torch.Tensor,
    pair_idx: torch.Tensor,
    source: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
) -> torch.Tensor:
    """The relation tokens ``[P, token]`` of ``pair_idx`` (indices into the boxes) with box
    classes ``labels``: the batch's boxes, or with ``source`` the batch boxes ``source`` picks
    (copies allowed: sgdet), their features and the union maps of the picked pairs.
    ``features`` (one row per batch box) replace the batch's box features (TEMPURA's
    ``-take_obj_mem_feat``: its classifier's features)."""
    features = batch.box_features if features is None else features
    boxes = batch.boxes[:, 1:]
    rows = pair_idx
    if source is not None:
        features, boxes, rows = features[source], boxes[source], source[pair_idx]
    maps = batch.union_maps[batch.union_rows(rows)]
    return relation(features, boxes, labels, pair_idx, maps)


def _index_targets(multi_hot: torch.Tensor) -> torch.Tensor:
    """Multi-hot ``[P, C]`` → the ``multilabel_margin_loss`` target: label indices first, in
    ascending order, then ``-1`` padding."""
    hot = multi_hot > 0.5
    order = torch.argsort((~hot).to(torch.int8), dim=1, stable=True)
    return torch.where(hot.gather(1, order), order, torch.full_like(order, -1))

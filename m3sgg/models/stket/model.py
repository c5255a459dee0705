"""STKET (Pu et al., IEEE TIP 2024) on STTran's relation tokens: three heads and two prior heads.

Composition (predcls, sgcls, sgdet):

- in sgdet evaluation, STTran's :func:`~m3sgg.models.sttran.postprocess.sgdet_boxes` (the
  original's classifier sgdet branch: ``clean_class``, per-class NMS 0.6, person pick; its
  weights unused) picks the boxes and pairs from the ``det`` section; sgdet training reads the
  ``det_train`` section (:attr:`STKET.train_section`: detections with assigned labels and the
  supplied GT boxes) and trains the classifier as in sgcls;
- in sgcls, STTran's :class:`~m3sgg.models.sttran.classifier.ObjectClassifier` and, in
  evaluation, :func:`~m3sgg.models.sttran.classifier.label_boxes` (the original's STKET copies
  STTran's classifier line for line): predicted labels and scores, pairs re-formed;

- :class:`~m3sgg.models.sttran.relation.RelationFeatures` (STTran's, imported): the relation token
  of every pair;
- :class:`~m3sgg.models.stket.decoders.SpatialPriorEncoder` → the *spatial* head
  (``spa_{a,s,c}_rel_compress``) and, from its priors, the *spatial prior* head (same layers);
- :class:`~m3sgg.models.stket.decoders.TemporalPriorDecoder` on the spatial features, its priors
  chosen from the spatial head's contact probabilities → the *temporal* head
  (``tem_{a,s,c}_rel_compress``) and the *temporal prior* head;
- :class:`~m3sgg.models.stket.decoders.EnsembleDecoder` over key frames of ``(spatial +
  temporal) / 2`` → the *ensemble* head (``ens_{a,s,c}_rel_compress``).

Attention logits; spatial and contacting probabilities (sigmoid). The evaluator scores the three
heads under ``"spatial/…"``, ``"temporal/…"``, ``"ensemble/…"`` keys; the plain keys are the
``rank_head``'s (the original's scheduler watches the temporal head). The original also computes
``{a,s,c}_rel_compress`` on the raw tokens, but no loss and no evaluation reads them: they are
left out (and dropped on import).

Losses (the original's ``train.py`` with ``-bce_loss`` and every prior loss): for each of the
heads spatial, temporal, ensemble, spatial_prior and temporal_prior, cross-entropy on attention
and binary cross-entropy on the spatial and contacting probabilities (``relation_loss="margin"``:
multi-label margin on the probabilities), each the mean over videos of the video's mean (the
original steps one video at a time), named ``"<head>_<group>"``.

Which priors a relation uses follows the original's history rules (:mod:`.selection`): in
training and in predcls evaluation the latest relation of an object label and frame holds its
state, in sgcls and sgdet evaluation the one whose object scores highest; the contact
threshold 1.0 selects ground-truth contacts (the original's test script; predcls only, as the
pairs sgcls and sgdet form in evaluation have none). sgcls and sgdet add the ``object`` loss
(cross-entropy of the classifier, mean over videos of the video's mean over boxes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from m3sgg.data.collate import Batch
from m3sgg.errors import ConfigError
from m3sgg.models.base import AG_PREDICTION_KEYS, SceneGraphModel, resolve_loss_weights
from m3sgg.models.originals import register_original
from m3sgg.models.registry import register_model
from m3sgg.models.stket.decoders import EnsembleDecoder, SpatialPriorEncoder, TemporalPriorDecoder
from m3sgg.models.stket.priors import load_priors
from m3sgg.models.sttran.classifier import ObjectClassifier, label_boxes
from m3sgg.models.sttran.model import object_loss, relation_losses, relation_tokens
from m3sgg.models.sttran.postprocess import SgdetBoxes, box_predictions, person_pairs, sgdet_boxes
from m3sgg.models.sttran.relation import RelationFeatures
from m3sgg.vocab import GROUP_SIZES, NUM_AG_CLASSES

__all__ = ["HEADS", "PRIOR_HEADS", "STKET", "import_original_stket"]

DATASETS = frozenset({"action_genome"})
MODES = frozenset({"predcls", "sgcls", "sgdet"})
OBJECT_LOSS = "object"
HEADS = ("spatial", "temporal", "ensemble")
PRIOR_HEADS = ("spatial_prior", "temporal_prior")
GROUPS = ("attention", "spatial", "contacting")
_SHORT = {"spatial": "spa", "temporal": "tem", "ensemble": "ens"}
_DISTRIBUTIONS = tuple(f"{g}_distribution" for g in GROUPS)


@register_model("stket", datasets=DATASETS, modes=MODES)
class STKET(SceneGraphModel):
    """STKET; see the module docstring.

    Args:
        object_dim, union_channels: feature widths of the store (2048, 1024 for AG).
        priors: a prior file (``m3sgg build-priors``, or the original's ``TrainPrior.json``)
            that initialises the prior tables, or ``"zeros"`` to start them at zero. Required:
            there is no silent default.
        proj_dim, embed_dim, conv_dim: STTran's token widths (512, 200, 256; token 1936).
        heads, ff_dim: attention heads and feed-forward width of every layer (8, 2048).
        enc_layers, dec_layers: spatial encoder and temporal decoder layers (2, 2).
        layer_passes: the original's ``N_layer`` (1): how many times the spatial encoder runs,
            each pass on the previous one's output (shared weights), before the temporal
            decoder reads the last pass.
        window: key frames of the ensemble decoder (4).
        contact_threshold: contact probability that selects a temporal prior (0.8; 1.0 uses
            the ground-truth contacts).
        spatial_prior, temporal_prior: add the priors to the attention (both on in the paper).
        prior_losses: train the prior heads too (on in the paper).
        rank_head: the head published under the plain metric keys ("temporal").
        relation_loss: ``"bce"`` (the paper's recipe) or ``"margin"``.
        state_dims: hidden widths of ``state_fc`` (128, 256, 512).
        dropout: of every attention layer and the object classifier (0.1).
        classifier_dim, pos_dim: the object classifier's widths (1024, 128; sgcls and sgdet).
        loss_weights: multipliers of the named losses; missing names weigh 1.
    """

    prediction_keys: ClassVar[tuple[str, ...]] = AG_PREDICTION_KEYS
    supported_datasets: ClassVar[frozenset[str]] = DATASETS
    supported_modes: ClassVar[frozenset[str]] = MODES
    output_heads: tuple[str, ...] = HEADS
    model_name: ClassVar[str] = "stket"

    def __init__(
        self,
        *,
        object_dim: int,
        union_channels: int,
        priors: str | os.PathLike[str] | None = None,
        dataset: str = "action_genome",
        mode: str = "predcls",
        proj_dim: int = 512,
        embed_dim: int = 200,
        conv_dim: int = 256,
        heads: int = 8,
        ff_dim: int = 2048,
        enc_layers: int = 2,
        dec_layers: int = 2,
        layer_passes: int = 1,
        window: int = 4,
        contact_threshold: float = 0.8,
        spatial_prior: bool = True,
        temporal_prior: bool = True,
        prior_losses: bool = True,
        rank_head: str = "temporal",
        relation_loss: str = "bce",
        state_dims: tuple[int, ...] | list[int] = (128, 256, 512),
        dropout: float = 0.1,
        classifier_dim: int = 1024,
        pos_dim: int = 128,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"stket: mode must be one of {sorted(MODES)}, got {mode!r}")
        super().__init__(mode)
        if priors is None:
            raise ConfigError(
                "stket: model.options.priors is required: a prior file written by "
                "`m3sgg build-priors` (or the original's TrainPrior.json), or 'zeros'"
            )
        if rank_head not in HEADS:
            raise ConfigError(f"stket: rank_head must be one of {list(HEADS)}, got {rank_head!r}")
        if relation_loss not in ("bce", "margin"):
            raise ConfigError(
                f"stket: relation_loss must be 'bce' or 'margin', got {relation_loss!r}"
            )
        for key, value in (
            ("enc_layers", enc_layers),
            ("dec_layers", dec_layers),
            ("layer_passes", layer_passes),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"stket: {key} must be a positive integer, got {value!r}")
        if not isinstance(window, int) or isinstance(window, bool) or window < 2:
            raise ConfigError(f"stket: window must be an integer >= 2, got {window!r}")
        if mode != "predcls" and contact_threshold == 1.0:
            raise ConfigError(
                "stket: contact_threshold 1.0 picks priors by ground-truth contacts, which the "
                f"pairs {mode} re-forms in evaluation do not have; use it in predcls"
            )
        if not 0.0 < contact_threshold <= 1.0:
            raise ConfigError(
                f"stket: contact_threshold must lie in (0, 1], got {contact_threshold!r}"
            )
        token_dim = 3 * proj_dim + 2 * embed_dim
        if token_dim % heads:
            raise ConfigError(
                f"stket: the token width 3*proj_dim + 2*embed_dim = {token_dim} must be "
                f"divisible by heads ({heads})"
            )
        self.rank_head = rank_head
        self.layer_passes = layer_passes
        self.relation_loss = relation_loss
        self.prior_losses = prior_losses
        self.use_spatial_prior = spatial_prior
        self.use_temporal_prior = temporal_prior
        self.loss_weights = resolve_loss_weights("stket", loss_weights, self.loss_names())
        state = tuple(int(d) for d in state_dims)

        self.relation = RelationFeatures(
            object_dim=object_dim,
            union_channels=union_channels,
            num_classes=NUM_AG_CLASSES,
            proj_dim=proj_dim,
            embed_dim=embed_dim,
            conv_dim=conv_dim,
        )
        self.spatial_encoder = SpatialPriorEncoder(
            token_dim,
            heads,
            ff_dim,
            enc_layers,
            dropout=dropout,
            use_prior=spatial_prior,
            state_dims=state,
        )
        self.temporal_decoder = TemporalPriorDecoder(
            token_dim,
            heads,
            ff_dim,
            dec_layers,
            threshold=contact_threshold,
            dropout=dropout,
            use_prior=temporal_prior,
            state_dims=state,
        )
        self.ensemble_decoder = EnsembleDecoder(
            token_dim, heads, ff_dim, window=window, layers=2, dropout=dropout
        )
        self.object_classifier: ObjectClassifier | None = None
        if mode != "predcls":
            self.object_classifier = ObjectClassifier(
                object_dim=object_dim,
                num_classes=NUM_AG_CLASSES,
                embed_dim=embed_dim,
                pos_dim=pos_dim,
                hidden=classifier_dim,
                dropout=dropout,
            )
        for head in HEADS:
            for group in GROUPS:
                setattr(
                    self,
                    f"{_SHORT[head]}_{group[0]}_rel_compress",
                    nn.Linear(token_dim, GROUP_SIZES[group]),
                )
        if str(priors) != "zeros":
            self.load_priors(priors)

    def load_priors(self, path: str | os.PathLike[str]) -> None:
        """Set the prior tables (both modules' ``initial_prior``, the temporal decoder's
        ``specific_prior``) from a prior file."""
        tables = load_priors(path)
        with torch.no_grad():
            initial = torch.as_tensor(tables.initial, dtype=torch.float32)
            self.spatial_encoder.initial_prior.copy_(initial)
            self.temporal_decoder.initial_prior.copy_(initial)
            self.temporal_decoder.specific_prior.copy_(
                torch.as_tensor(tables.specific, dtype=torch.float32)
            )

    def _loss_heads(self) -> tuple[str, ...]:
        """The heads with losses: the three, and the prior heads in use with ``prior_losses``."""
        heads = HEADS + (PRIOR_HEADS if self.prior_losses else ())
        return tuple(
            h
            for h in heads
            if (h != "spatial_prior" or self.use_spatial_prior)
            and (h != "temporal_prior" or self.use_temporal_prior)
        )

    def loss_names(self) -> tuple[str, ...]:
        names = tuple(f"{h}_{g}" for h in self._loss_heads() for g in GROUPS)
        return names if self.mode == "predcls" else (*names, OBJECT_LOSS)

    def _heads(self, x: torch.Tensor, short: str) -> dict[str, torch.Tensor]:
        layers = [getattr(self, f"{short}_{g[0]}_rel_compress") for g in GROUPS]
        return {
            "attention_distribution": layers[0](x).float(),
            "spatial_distribution": torch.sigmoid(layers[1](x).float()),
            "contacting_distribution": torch.sigmoid(layers[2](x).float()),
        }

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Predictions with batch-level indices: the metric keys (the rank head's), and
        ``"<head>/<key>"`` for the heads spatial, temporal, ensemble, spatial_prior and
        temporal_prior.

        With ``layer_passes`` N > 1 the original (``lib/stket.py``, ``for _ in
        range(N_layer_num)``) runs the spatial encoder on the tokens, then N - 1 times more on
        its own previous output, the same weights each time; in each pass it also runs the
        temporal decoder on that pass's spatial features and contacts, and each pass overwrites
        every output of the one before. Only the last pass's temporal output is read (by its
        heads and the ensemble decoder), so here the temporal decoder runs once, on the last
        spatial features: the same function. The spatial prior does not depend on the pass.
        """
        self.check_section(batch)
        out: dict[str, torch.Tensor] = {}
        labels, box_scores = batch.labels, batch.scores
        pair_idx, frame = batch.pair_idx, batch.im_idx
        picked: SgdetBoxes | None = None  # sgdet evaluation: the kept boxes (copies included)
        scores = None  # training and predcls: the latest relation of a label and frame wins
        if self.mode == "sgdet" and not self.training:
            if batch.class_dists is None:
                raise ConfigError("stket in sgdet needs the detections' class distributions")
            picked = sgdet_boxes(
                batch.boxes[:, 1:], batch.boxes[:, 0].long(), batch.class_dists, batch.num_frames
            )
            labels, pair_idx, frame = picked.labels, picked.pair_idx, picked.im_idx
            scores = picked.scores[pair_idx[:, 1]]  # the best-scoring object holds the state
        elif self.object_classifier is not None:
            if batch.class_dists is None:
                raise ConfigError(
                    f"stket in {self.mode} needs the detector's class distributions of the "
                    f"boxes: a feature store whose {batch.section!r} section has class_dists"
                )
            logits = self.object_classifier(
                batch.box_features, batch.boxes[:, 1:], batch.class_dists
            ).float()
            out["object_logits"] = logits
            if not self.training:
                box_frame = batch.boxes[:, 0].long()
                dist, labels, box_scores, human = label_boxes(logits, box_frame, batch.num_frames)
                out["object_distribution"] = dist
                pair_idx, frame = person_pairs(labels, human, box_frame)
                scores = box_scores[pair_idx[:, 1]]  # the best-scoring object holds the state
        source = None if picked is None else picked.source
        tokens = relation_tokens(self.relation, batch, labels, pair_idx, source)
        label = labels[pair_idx[:, 1]]
        gt_contacts = batch.contacting if self.mode == "predcls" else None

        spatial, spatial_priors = self.spatial_encoder(tokens, frame, label)
        for _ in range(self.layer_passes - 1):
            spatial, spatial_priors = self.spatial_encoder(spatial, frame, label)
        heads = {"spatial": self._heads(spatial, "spa")}
        if self.use_spatial_prior:
            heads["spatial_prior"] = self._heads(spatial_priors, "spa")
        temporal, temporal_priors = self.temporal_decoder(
            spatial,
            heads["spatial"]["contacting_distribution"],
            frame,
            label,
            scores,
            batch.frame_video,
            gt_contacts,
        )
        heads["temporal"] = self._heads(temporal, "tem")
        if self.use_temporal_prior:
            heads["temporal_prior"] = self._heads(temporal_priors, "tem")
        ensemble = self.ensemble_decoder(spatial, temporal, frame, label, scores, batch.frame_video)
        heads["ensemble"] = self._heads(ensemble, "ens")
        for head, values in heads.items():
            out.update({f"{head}/{key}": value for key, value in values.items()})
        out.update(heads[self.rank_head])
        if picked is None:
            out.update(box_predictions(batch, labels, box_scores, pair_idx, frame))
        else:
            out.update(picked.predictions(batch.boxes))
        return out

    def loss(
        self, predictions: Mapping[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]:
        """Weighted named losses ``"<head>_<group>"`` (module docstring): STTran's
        :func:`~m3sgg.models.sttran.model.relation_losses` of each head, and in sgcls and sgdet
        its :func:`~m3sgg.models.sttran.model.object_loss`."""
        losses: dict[str, torch.Tensor] = {}
        for head in self._loss_heads():
            groups = relation_losses(predictions, batch, self.relation_loss, prefix=f"{head}/")
            for group, value in groups.items():
                losses[f"{head}_{group}"] = value * self.loss_weights[f"{head}_{group}"]
        if OBJECT_LOSS in self.loss_weights:
            losses[OBJECT_LOSS] = (
                object_loss(predictions["object_logits"], batch) * self.loss_weights[OBJECT_LOSS]
            )
        return losses


def import_original_stket(source: object, **options: object) -> STKET:
    """``import_original("stket", source, **options)``: an :class:`STKET` holding the original
    checkpoint's weights (see :mod:`m3sgg.models.stket.convert`).

    The widths, layer counts, ``window`` and ``state_dims`` are read from the tensors
    (:func:`~m3sgg.models.stket.convert.infer_options`); ``options`` (any :class:`STKET`
    argument: ``mode``, ``heads``, ``contact_threshold``, ...) take precedence. The prior tables
    are weights of the checkpoint (the original learns them), loaded over the tables ``priors``
    gave: ``priors`` is ``"zeros"`` unless given (a file given is recorded, and must exist where
    the model is rebuilt). The arguments used, but the feature widths, are kept as
    ``model.config_options`` (what ``m3sgg import-checkpoint`` writes into its config).
    """
    from m3sgg.models.stket.convert import import_stket, infer_options
    from m3sgg.models.sttran.convert import load_original_state

    state, where = load_original_state(source)
    mode = str(options.get("mode", "predcls"))
    chosen = {**infer_options(state, where, mode), "priors": "zeros", **options}
    model = STKET(**chosen)  # type: ignore[arg-type]
    model.load_state_dict(import_stket(state, model, where=where))
    model.config_options = {
        k: v for k, v in chosen.items() if k not in ("object_dim", "union_channels", "mode")
    }
    return model


register_original("stket", import_original_stket)

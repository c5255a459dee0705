"""TEMPURA (Nag et al., CVPR 2023): STTran with mixture heads and a predicate memory.

Built on STTran's modules by composition (:mod:`m3sgg.models.sttran`): the relation token
(:class:`~m3sgg.models.sttran.relation.RelationFeatures`), the spatial encoder and the two-frame
temporal decoder. TEMPURA adds (``lib/tempura.py``, ``lib/transformer.py`` of the original):

- the predicate memory fused into the relation features, after the temporal decoder (``"late"``
  fusion, the recipes) or between the encoder and the decoder (``"early"``):
  ``lambda * f + (1 - lambda) * read(memory, f)`` (:class:`~.memory.MemoryFusion`); the memory
  is rebuilt at the end of every epoch from the pre-fusion features ``f`` of the epoch's training
  pairs (:mod:`.handlers`); epoch 0 trains without it;
- mixture (GMM) heads (:class:`~.gmm.GMMHead`) returning **probabilities**: attention
  (``attention_probabilities``, which the AG metric takes as given), spatial and contacting.

Losses (``train.py``), per video, then averaged over videos: attention NLL on ``log(p + 1e-12)``,
binary cross-entropy on the spatial and contacting probabilities (the recipes pass no ``-mlm``).

sgcls and sgdet add TEMPURA's object classifier (:mod:`.objects`). sgdet trains as sgcls on the
feature store's ``det_train`` section (STTran's sgdet inputs: detections with assigned labels and
the missed GT boxes supplied, pairs and targets assigned). Its evaluation reads the ``det``
section: unlike STTran, whose sgdet evaluation ignores its classifier, TEMPURA's classifier
(tracking encoder included) labels the detections, ``softmax`` over classes 1.. of its logits,
and STTran's :func:`~m3sgg.models.sttran.postprocess.sgdet_boxes` picks the boxes from that
distribution, its ``clean_class`` copies chosen by the detector's labels (``batch.labels``), as
the original's ``lib/tempura.py`` does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from m3sgg.data.collate import Batch
from m3sgg.errors import ConfigError
from m3sgg.models.base import SceneGraphModel, resolve_loss_weights
from m3sgg.models.registry import register_model
from m3sgg.models.sttran.classifier import label_distribution
from m3sgg.models.sttran.model import per_video_mean, relation_tokens
from m3sgg.models.sttran.postprocess import SgdetBoxes, box_predictions, person_pairs, sgdet_boxes
from m3sgg.models.sttran.relation import RelationFeatures, class_word_vectors
from m3sgg.models.sttran.transformer import SpatialEncoder, TemporalDecoder
from m3sgg.models.tempura.gmm import GMMHead
from m3sgg.models.tempura.losses import contrastive_loss
from m3sgg.models.tempura.memory import WEIGHTINGS, MemoryAccumulator, MemoryFusion
from m3sgg.models.tempura.objects import TempuraObjectClassifier
from m3sgg.models.tempura.postprocess import empty_frame_relabel
from m3sgg.vocab import AG_OBJECT_CLASSES, GROUP_SIZES, NUM_AG_CLASSES

__all__ = ["TEMPURA", "TEMPURA_PREDICTION_KEYS"]

DATASETS = frozenset({"action_genome"})
MODES = frozenset({"predcls", "sgcls", "sgdet"})
LOSS_NAMES = ("attention", "spatial", "contacting")
OBJECT_LOSSES = ("object", "contrastive")
GROUPS = ("attention", "spatial", "contacting")
NUM_PREDICATES = sum(GROUP_SIZES[g] for g in GROUPS)

#: What TEMPURA predicts for the AG metric: ``attention_probabilities`` instead of logits.
TEMPURA_PREDICTION_KEYS: tuple[str, ...] = (
    "boxes",
    "labels",
    "scores",
    "pred_labels",
    "pred_scores",
    "im_idx",
    "pair_idx",
    "attention_probabilities",
    "spatial_distribution",
    "contacting_distribution",
)


@register_model("tempura", datasets=DATASETS, modes=MODES)
class TEMPURA(SceneGraphModel):
    """TEMPURA; see the module docstring.

    Args:
        object_dim: width of the box features (2048 for the AG detector; the store's).
        union_channels: channels of the union maps (1024; the store's).
        proj_dim: subject/object/union projection width (512), as STTran.
        embed_dim: class embedding width (200); the token is ``3 * proj_dim + 2 * embed_dim``.
        conv_dim: channels of the union branch (256).
        heads: attention heads of the transformer (8); must divide the token width.
        ff_dim: feed-forward width of the transformer layers (2048).
        enc_layers: spatial encoder layers (1).
        dec_layers: temporal decoder layers (3).
        dropout: dropout of the transformer layers (0.1).
        num_classes: object classes including background (37).
        class_names: names for word-vector look-up (default: AG's).
        word_vectors: optional GloVe-style text file initialising both class embeddings.
        dataset: ``"action_genome"``.
        mode: ``"predcls"``, ``"sgcls"`` or ``"sgdet"`` (trains on the ``det_train`` section,
            evaluates on ``det``; module docstring).
        k: mixture components of the heads (the recipes: 6 PredCLS, 4 SGCLS/SGDET).
        memory: ``"joint"`` (one attention over the 26 rows, the recipes), ``"separate"`` (one
            per predicate group, read-outs averaged) or ``None`` (no memory, no handlers).
        memory_weighting: ``"simple"`` (the recipes), ``"al"``, ``"ep"`` or ``"both"``.
        fusion: ``"late"`` (after the temporal decoder, the recipes) or ``"early"``.
        selection: ``"manual"`` (fixed ``lam``) or ``"automated"`` (learned per row).
        lam: the features' weight in the fusion (0.5 PredCLS/SGDET, 0.3 SGCLS).
        tracking: sgcls/sgdet: the object-sequence encoder over boxes grouped by the
            detector's class (the SGCLS and SGDET recipes use it).
        classifier_dim: hidden width of the object classifier (1024; sgcls/sgdet).
        pos_dim: width of the classifier's box-position embedding (128; sgcls/sgdet).
        eos_coef: sgcls/sgdet: weight of the background class in the object loss (1).
        contrastive_weight: sgcls/sgdet: weight of the object contrastive loss (the SGCLS and
            SGDET recipes: 1; 0 leaves it out).
        object_head: sgcls/sgdet: ``"linear"`` (the recipes' ``-obj_head linear``) or ``"gmm"``
            (a mixture head with ``k`` components, the original's default ``-obj_head gmm``;
            its loss is the NLL of its probabilities, background weighted ``eos_coef``).
        object_memory: sgcls/sgdet: the original's object memory (``-obj_mem_compute``, simple
            weighting): class means of the previous epoch's object features, read and fused
            with ``selection``/``lam`` as the predicate memory (:mod:`.objects`).
        relation_head: ``"gmm"`` (the mixture heads, the recipes) or ``"linear"`` (the
            original's ``-rel_head linear``: a Linear per group, attention softmax and
            cross-entropy on its logits, spatial/contacting sigmoid; simple memory only).
        relation_loss_weighting: ``"al"`` or ``"ep"`` (the original's ``-rel_unc
            -rel_loss_weighting``): each pair's relation losses weighted ``1 + e_p / sum_q e_q``,
            ``e_p`` the exponential of the pair's summed aleatoric/epistemic values of the
            group (an extra eval-mode pass in the loss); ``None`` (the recipes) unweighted.
        object_loss_weighting: sgcls/sgdet with ``object_head: gmm``: ``"al"`` or ``"ep"`` (the
            original's ``-obj_unc -obj_loss_weighting``): each box's object loss weighted
            ``1 + e_b / sum_c e_c``, ``e_b`` the exponential of the box's summed uncertainty
            values over the classes (its video's boxes in the sum); ``None`` unweighted.
        take_object_features: sgcls/sgdet: the relation token's subject and object features are
            the classifier's (after the object memory's fusion: the tracking output with
            tracking, the intermediate output without) instead of the box features (the
            original's ``-take_obj_mem_feat``).
        loss_weights: multipliers of the named losses; missing names weigh 1.

    Example::

        model = build_model("tempura", "action_genome", "predcls", object_dim=2048,
                            union_channels=1024, k=6)
        predictions = model(batch)  # attention_probabilities, spatial/contacting_distribution
    """

    prediction_keys: ClassVar[tuple[str, ...]] = TEMPURA_PREDICTION_KEYS
    supported_datasets: ClassVar[frozenset[str]] = DATASETS
    supported_modes: ClassVar[frozenset[str]] = MODES
    model_name: ClassVar[str] = "tempura"

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
        num_classes: int = NUM_AG_CLASSES,
        class_names: Sequence[str] | None = None,
        word_vectors: str | os.PathLike[str] | None = None,
        k: int = 4,
        memory: str | None = "joint",
        memory_weighting: str = "simple",
        fusion: str = "late",
        selection: str = "manual",
        lam: float = 0.5,
        tracking: bool = False,
        classifier_dim: int = 1024,
        pos_dim: int = 128,
        eos_coef: float = 1.0,
        contrastive_weight: float = 0.0,
        object_head: str = "linear",
        object_memory: bool = False,
        take_object_features: bool = False,
        relation_head: str = "gmm",
        relation_loss_weighting: str | None = None,
        object_loss_weighting: str | None = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        if dataset not in DATASETS:
            raise ConfigError(
                f"tempura: dataset must be one of {sorted(DATASETS)}, got {dataset!r}"
            )
        if mode not in MODES:
            raise ConfigError(f"tempura: mode must be one of {sorted(MODES)}, got {mode!r}")
        super().__init__(mode)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"tempura: k must be a positive integer, got {k!r}")
        if memory not in ("joint", "separate", None):
            raise ConfigError(
                f"tempura: memory must be 'joint', 'separate' or null, got {memory!r}"
            )
        if memory_weighting not in WEIGHTINGS:
            raise ConfigError(
                f"tempura: memory_weighting must be one of {list(WEIGHTINGS)}, "
                f"got {memory_weighting!r}"
            )
        if fusion not in ("late", "early"):
            raise ConfigError(f"tempura: fusion must be 'late' or 'early', got {fusion!r}")
        if selection not in ("manual", "automated"):
            raise ConfigError(
                f"tempura: selection must be 'manual' or 'automated', got {selection!r}"
            )
        if object_head not in ("linear", "gmm"):
            raise ConfigError(
                f"tempura: object_head must be 'linear' or 'gmm', got {object_head!r}"
            )
        if relation_head not in ("gmm", "linear"):
            raise ConfigError(
                f"tempura: relation_head must be 'gmm' or 'linear', got {relation_head!r}"
            )
        if relation_head == "linear" and memory is not None and memory_weighting != "simple":
            raise ConfigError(
                f"tempura: memory_weighting {memory_weighting!r} needs the uncertainty of the "
                "mixture relation heads (relation_head: gmm); the linear head has none"
            )
        if relation_loss_weighting not in (None, "al", "ep"):
            raise ConfigError(
                "tempura: relation_loss_weighting must be 'al', 'ep' or null, got "
                f"{relation_loss_weighting!r}"
            )
        if relation_loss_weighting is not None and relation_head != "gmm":
            raise ConfigError(
                "tempura: relation_loss_weighting needs the mixture relation heads' uncertainty "
                "(relation_head: gmm)"
            )
        if object_loss_weighting not in (None, "al", "ep"):
            raise ConfigError(
                "tempura: object_loss_weighting must be 'al', 'ep' or null, got "
                f"{object_loss_weighting!r}"
            )
        if object_loss_weighting is not None and (mode == "predcls" or object_head != "gmm"):
            raise ConfigError(
                "tempura: object_loss_weighting needs the mixture object head's uncertainty "
                "(sgcls/sgdet, object_head: gmm)"
            )
        if take_object_features and mode == "predcls":
            raise ConfigError(
                "tempura: take_object_features needs the object classifier (sgcls, sgdet)"
            )
        if object_memory and mode == "predcls":
            raise ConfigError("tempura: object_memory needs the object classifier (sgcls, sgdet)")
        if object_memory and tracking and selection == "automated":
            raise ConfigError(
                "tempura: object_memory with tracking takes manual selection only (the "
                "original's object selector is Linear(1024, 1), which the 2376-wide tracking "
                "output does not fit)"
            )
        if not 0.0 <= float(lam) <= 1.0:
            raise ConfigError(f"tempura: lam must lie in [0, 1], got {lam!r}")
        names_ = LOSS_NAMES if mode == "predcls" else (*LOSS_NAMES, *OBJECT_LOSSES)
        weights = resolve_loss_weights("tempura", loss_weights, names_)
        token_dim = 3 * proj_dim + 2 * embed_dim
        if token_dim % heads:
            raise ConfigError(
                f"tempura: the token width 3*proj_dim + 2*embed_dim = {token_dim} must be "
                f"divisible by heads ({heads})"
            )
        names = tuple(class_names) if class_names is not None else AG_OBJECT_CLASSES
        if len(names) != num_classes:
            raise ConfigError(f"tempura: {len(names)} class_names for num_classes={num_classes}")

        self.k = k
        self.fusion = fusion
        self.memory_weighting = memory_weighting
        self.eos_coef = float(eos_coef)
        self.contrastive_weight = float(contrastive_weight)
        self.loss_weights = weights
        self.take_object_features = bool(take_object_features)
        relation_dim = object_dim
        if self.take_object_features:  # the classifier's (fused) features: tracking or hidden
            relation_dim = object_dim + embed_dim + pos_dim if tracking else classifier_dim
        self.relation = RelationFeatures(
            object_dim=relation_dim,
            union_channels=union_channels,
            num_classes=num_classes,
            proj_dim=proj_dim,
            embed_dim=embed_dim,
            conv_dim=conv_dim,
        )
        self.spatial = SpatialEncoder(token_dim, heads, ff_dim, dropout, enc_layers)
        self.temporal = TemporalDecoder(token_dim, heads, ff_dim, dropout, dec_layers)
        self.memory_fusion = (
            MemoryFusion(
                token_dim,
                NUM_PREDICATES,
                selection=selection,  # type: ignore[arg-type]
                lam=lam,
                groups=tuple(GROUP_SIZES[g] for g in GROUPS) if memory == "separate" else None,
            )
            if memory is not None
            else None
        )
        self.relation_head = relation_head
        self.relation_loss_weighting = relation_loss_weighting
        self.object_loss_weighting = object_loss_weighting
        self.a_rel_compress: nn.Module
        self.s_rel_compress: nn.Module
        self.c_rel_compress: nn.Module
        if relation_head == "gmm":
            self.a_rel_compress = GMMHead(token_dim, GROUP_SIZES["attention"], k, "softmax")
            self.s_rel_compress = GMMHead(token_dim, GROUP_SIZES["spatial"], k, "sigmoid")
            self.c_rel_compress = GMMHead(token_dim, GROUP_SIZES["contacting"], k, "sigmoid")
        else:  # the original's -rel_head linear
            self.a_rel_compress = nn.Linear(token_dim, GROUP_SIZES["attention"])
            self.s_rel_compress = nn.Linear(token_dim, GROUP_SIZES["spatial"])
            self.c_rel_compress = nn.Linear(token_dim, GROUP_SIZES["contacting"])
        self.object_classifier = (
            TempuraObjectClassifier(
                object_dim=object_dim,
                num_classes=num_classes,
                embed_dim=embed_dim,
                pos_dim=pos_dim,
                hidden=classifier_dim,
                dropout=dropout,
                tracking=tracking,
                max_len=600 if mode == "sgdet" else 400,
                head=object_head,
                k=k,
                memory=object_memory,
                selection=selection,
                lam=lam,
            )
            if mode != "predcls"
            else None
        )
        if word_vectors is not None:
            vectors, missing = class_word_vectors(word_vectors, names, embed_dim)
            known = torch.tensor([n != "__background__" and n not in missing for n in names])
            with torch.no_grad():
                for embedding in (self.relation.obj_embed, self.relation.obj_embed2):
                    embedding.weight[known] = vectors[known]

    def extra_repr(self) -> str:
        memory = "none" if self.memory_fusion is None else self.memory_weighting
        return f"mode={self.mode!r}, k={self.k}, memory={memory}, fusion={self.fusion!r}"

    # -- the engine's seam -------------------------------------------------------------------

    def train_handlers(self) -> list[Any]:
        """The uncertainty pass and the memory rebuild (none without a memory)."""
        objects = self._object_memory()
        if self.memory_fusion is None and objects is None:
            return []
        from m3sgg.models.tempura.handlers import MemoryRebuild, UncertaintyPass

        accumulator = None
        if self.memory_fusion is not None:
            width = self.memory_fusion.memory.shape[1]
            accumulator = MemoryAccumulator(NUM_PREDICATES, width, self.memory_weighting)  # type: ignore[arg-type]
        object_accumulator = None
        if objects is not None:  # the original's object memory: class means ("simple")
            rows, width = objects.memory.shape
            object_accumulator = MemoryAccumulator(rows, width, "simple")
        return [
            UncertaintyPass(self, accumulator, object_accumulator),
            MemoryRebuild(self, accumulator, object_accumulator),
        ]

    def _object_memory(self) -> MemoryFusion | None:
        classifier = self.object_classifier
        return classifier.memory_fusion if classifier is not None else None

    def set_object_memory(self, memory: torch.Tensor) -> None:
        """Install an object memory [C - 1, width] (rows: classes 1..)."""
        objects = self._object_memory()
        if objects is None:
            raise ValueError("tempura: this model was built without an object memory")
        objects.set_memory(memory)

    def set_memory(self, memory: torch.Tensor) -> None:
        """Install a predicate memory [26, token] (see :class:`~.memory.MemoryFusion`)."""
        if self.memory_fusion is None:
            raise ValueError("tempura: this model was built without a memory (memory=None)")
        self.memory_fusion.set_memory(memory)

    # -- forward -------------------------------------------------------------------------------

    def _fuse(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.memory_fusion is None else self.memory_fusion(x)

    def relation_context(
        self,
        batch: Batch,
        labels: torch.Tensor,
        pair_idx: torch.Tensor,
        im_idx: torch.Tensor,
        source: torch.Tensor | None = None,
        object_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context, features)`` [P, token] of the pairs: ``context`` is what the heads read
        (memory fused), ``features`` the pre-fusion features the memory is built from. The
        boxes are the batch's, or with ``source`` the batch boxes ``source`` picks (sgdet
        evaluation: copies allowed; STTran's :func:`~m3sgg.models.sttran.model.relation_tokens`);
        ``object_features`` (one row per batch box) replace the box features
        (``take_object_features``)."""
        tokens = relation_tokens(self.relation, batch, labels, pair_idx, source, object_features)
        frame_start = torch.tensor(batch.frame_offsets[:-1], device=tokens.device)
        frame_start = frame_start[batch.frame_video]
        x = self.spatial(tokens, im_idx, batch.num_frames)
        if self.fusion == "early":
            features = x
            x = self._fuse(x)
        x = self.temporal(x, im_idx, frame_start, batch.num_frames)
        if self.fusion == "late":
            features = x
            x = self._fuse(x)
        return x, features

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Predictions with batch-level indices (``docs/metrics.md``), attention as
        ``attention_probabilities``; sampled mixtures in training, their means in evaluation."""
        self.check_section(batch)
        out: dict[str, torch.Tensor] = {}
        labels, scores = batch.labels, batch.scores
        pair_idx, im_idx = batch.pair_idx, batch.im_idx
        picked: SgdetBoxes | None = None
        if self.object_classifier is not None:  # as STTran's, with TEMPURA's classifier
            if batch.class_dists is None:
                raise ConfigError(
                    f"tempura in {self.mode} needs the detector's class distributions of the "
                    f"boxes: a feature store whose {batch.section!r} section has class_dists"
                )
            frame = batch.boxes[:, 0].long()
            object_scores, embedding = self.object_classifier(
                batch.box_features, batch.boxes[:, 1:], batch.class_dists, batch.box_video, frame
            )
            gmm = self.object_classifier.head == "gmm"
            object_key = "object_probabilities" if gmm else "object_logits"
            out[object_key] = object_scores.float()
            out["object_embedding"] = embedding
            if not self.training:  # the distribution over classes 1..
                dist = out[object_key] if gmm else torch.softmax(out[object_key][:, 1:], dim=1)
            if not self.training and self.mode == "sgcls":
                dist, labels, scores, human = label_distribution(dist, frame, batch.num_frames)
                out["object_distribution"] = dist
                pair_idx, im_idx = person_pairs(labels, human, frame)
            elif not self.training:  # sgdet: STTran's box picking on the classifier's output
                picked = sgdet_boxes(
                    batch.boxes[:, 1:], frame, dist, batch.num_frames, labels=batch.labels
                )
                picked = empty_frame_relabel(picked, frame, batch.frame_video)
                labels, pair_idx, im_idx = picked.labels, picked.pair_idx, picked.im_idx
        taken = out["object_embedding"] if self.take_object_features else None
        source = None if picked is None else picked.source
        x, _ = self.relation_context(batch, labels, pair_idx, im_idx, source, taken)
        out.update(self._heads(x))
        if picked is None:
            out.update(box_predictions(batch, labels, scores, pair_idx, im_idx))
        else:  # sgdet evaluation: the kept boxes (copies included)
            out.update(picked.predictions(batch.boxes))
            for key in (object_key, "object_embedding"):
                out[key] = out[key][picked.source]
        return out

    def _heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The relation heads' outputs: probabilities; the linear head adds its attention
        logits (``attention_logits``, what its loss reads)."""
        if self.relation_head == "gmm":
            return {
                "attention_probabilities": self.a_rel_compress(x).float(),
                "spatial_distribution": self.s_rel_compress(x).float(),
                "contacting_distribution": self.c_rel_compress(x).float(),
            }
        logits = self.a_rel_compress(x).float()
        return {
            "attention_logits": logits,
            "attention_probabilities": torch.softmax(logits, dim=1),
            "spatial_distribution": torch.sigmoid(self.s_rel_compress(x).float()),
            "contacting_distribution": torch.sigmoid(self.c_rel_compress(x).float()),
        }

    def memory_inputs(
        self, batch: Batch, uncertainty: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """What the uncertainty pass adds to the memory sums, for the pairs with targets:
        pre-fusion features [P, token], predicate targets [P, 26] (attention one-hot, spatial,
        contacting) and, when ``uncertainty``, the heads' aleatoric and epistemic values [P, 26].
        Runs the training-phase logic; the caller puts the model in eval mode (no grad)."""
        keep = batch.relation_mask
        taken = None
        if self.take_object_features and self.object_classifier is not None:
            frame = batch.boxes[:, 0].long()
            _, taken = self.object_classifier(
                batch.box_features, batch.boxes[:, 1:], batch.class_dists, batch.box_video, frame
            )
        x, features = self.relation_context(
            batch, batch.labels, batch.pair_idx, batch.im_idx, object_features=taken
        )
        x, features = x[keep], features[keep]
        attention = F.one_hot(batch.attention[keep].clamp(min=0), GROUP_SIZES["attention"])
        attention = attention * (batch.attention[keep] >= 0)[:, None]
        targets = torch.cat(
            [attention.bool(), batch.spatial[keep] > 0.5, batch.contacting[keep] > 0.5], dim=1
        )
        if not uncertainty:
            return features.float(), targets, None, None
        parts = [
            head.uncertainty(x)
            for head in (self.a_rel_compress, self.s_rel_compress, self.c_rel_compress)
        ]
        aleatoric = torch.cat([p[0] for p in parts], dim=1).float()
        epistemic = torch.cat([p[1] for p in parts], dim=1).float()
        return features.float(), targets, aleatoric, epistemic

    def object_memory_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """What the uncertainty pass adds to the object memory's sums: the classifier's
        pre-fusion features (:meth:`~.objects.TempuraObjectClassifier.memory_features`) of the
        boxes whose class is not background [B, width], and their one-hot class over 1.. [B,
        C - 1] (the original's ``background_mem=False``). The caller sets eval mode, no grad."""
        classifier = self.object_classifier
        if classifier is None or batch.class_dists is None:
            raise ConfigError("tempura: the object memory needs the object classifier's inputs")
        frame = batch.boxes[:, 0].long()
        features = classifier.memory_features(
            batch.box_features, batch.boxes[:, 1:], batch.class_dists, batch.box_video, frame
        )
        keep = batch.object_targets > 0
        classes = classifier.obj_embed.weight.shape[0]
        targets = F.one_hot(batch.object_targets[keep] - 1, classes).bool()
        return features[keep].float(), targets

    # -- losses --------------------------------------------------------------------------------

    def _object_uncertainty_weights(self, batch: Batch, keep: torch.Tensor) -> torch.Tensor:
        """``object_loss_weighting``: each kept box's weight ``1 + e_b / sum_c e_c`` (the sum
        over the kept boxes of its video; no epsilon, as the original), ``e_b = exp`` of the
        mixture head's aleatoric or epistemic values summed over the classes, from an eval-mode,
        no-grad pass (the training-phase logic: the given boxes)."""
        classifier = self.object_classifier
        assert classifier is not None and batch.class_dists is not None
        was_training = self.training
        self.train(False)
        try:
            with torch.no_grad():
                frame = batch.boxes[:, 0].long()
                aleatoric, epistemic = classifier.uncertainty(
                    batch.box_features,
                    batch.boxes[:, 1:],
                    batch.class_dists,
                    batch.box_video,
                    frame,
                )
        finally:
            self.train(was_training)
        values = (aleatoric if self.object_loss_weighting == "al" else epistemic)[keep]
        e = torch.exp(values.float().sum(dim=1))
        video = batch.box_video[keep]
        total = e.new_zeros(batch.num_videos).index_add(0, video, e)
        return 1 + e / total[video]

    def _uncertainty_weights(self, batch: Batch, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """``relation_loss_weighting``: per group, each pair's loss weight ``1 + e_p / (sum_q e_q
        + 1e-12)`` with ``e_p = exp(sum_c u_pc)`` (``u``: the pair's aleatoric or epistemic
        values over the group's classes from the uncertainty pass, eval mode, no grad) and the
        sum over the pairs of the pair's video (the original's step: one video)."""
        was_training = self.training
        self.train(False)
        try:
            with torch.no_grad():
                _, _, aleatoric, epistemic = self.memory_inputs(batch, uncertainty=True)
        finally:
            self.train(was_training)
        values = aleatoric if self.relation_loss_weighting == "al" else epistemic
        assert values is not None
        weights = {}
        start = 0
        for group in GROUPS:
            size = GROUP_SIZES[group]
            e = torch.exp(values[:, start : start + size].sum(dim=1))
            start += size
            total = e.new_zeros(batch.num_videos).index_add(0, video, e)
            weights[group] = 1 + e / (total[video] + 1e-12)
        return weights

    def loss(
        self, predictions: Mapping[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]:
        """Weighted named losses ``attention`` (NLL of the mixture probabilities), ``spatial``
        and ``contacting`` (BCE): each the mean over videos of the video's mean over its pairs
        with targets. sgcls/sgdet add ``object`` (cross-entropy of the linear head's logits, or
        the NLL of the mixture head's ``log(p + 1e-12)``; background weighted ``eos_coef``, per
        video the plain mean over its boxes) and, when ``contrastive_weight`` > 0,
        ``contrastive`` (:func:`~.losses.contrastive_loss` on the classifier's embedding with the
        GT labels, per video). Needs the training-mode predictions (the given pairs)."""
        keep = batch.relation_mask
        video = batch.pair_video[keep]
        if self.relation_head == "gmm":  # NLL of the mixture's probabilities
            probs = predictions["attention_probabilities"][keep]
            attention = -torch.log(probs + 1e-12).gather(1, batch.attention[keep][:, None])[:, 0]
        else:  # the linear head: cross-entropy of its logits
            logits = predictions["attention_logits"][keep]
            attention = F.cross_entropy(logits, batch.attention[keep], reduction="none")
        per_pair = {"attention": attention}
        for group in ("spatial", "contacting"):
            p = predictions[f"{group}_distribution"][keep]
            target = getattr(batch, group)[keep].to(p.dtype)
            per_pair[group] = F.binary_cross_entropy(p, target, reduction="none").mean(dim=1)
        if self.relation_loss_weighting is not None:
            for group, weight in self._uncertainty_weights(batch, video).items():
                per_pair[group] = per_pair[group] * weight
        losses = {
            name: per_video_mean(value, video, batch.num_videos) * self.loss_weights[name]
            for name, value in per_pair.items()
        }
        if self.object_classifier is not None:
            gmm = self.object_classifier.head == "gmm"
            scores = predictions["object_probabilities" if gmm else "object_logits"]
            keep_box = batch.object_targets >= 0
            weight = torch.ones(scores.shape[1], dtype=scores.dtype, device=scores.device)
            weight[0] = self.eos_coef
            if gmm:  # the original's NLLLoss on log(p + 1e-12)
                log_p = torch.log(scores[keep_box] + 1e-12)
                targets = batch.object_targets[keep_box]
                per_box = F.nll_loss(log_p, targets, weight=weight, reduction="none")
            else:
                per_box = F.cross_entropy(
                    scores[keep_box],
                    batch.object_targets[keep_box],
                    weight=weight,
                    reduction="none",
                )
            box_video = batch.box_video[keep_box]
            if self.object_loss_weighting is not None:
                per_box = per_box * self._object_uncertainty_weights(batch, keep_box)
            losses["object"] = (
                per_video_mean(per_box, box_video, batch.num_videos) * self.loss_weights["object"]
            )
            if self.contrastive_weight > 0:
                losses["contrastive"] = (
                    contrastive_loss(
                        predictions["object_embedding"][keep_box],
                        batch.object_targets[keep_box],
                        box_video,
                    )
                    * self.contrastive_weight
                    * self.loss_weights["contrastive"]
                )
        return losses

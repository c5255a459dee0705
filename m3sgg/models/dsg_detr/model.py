"""DSG-DETR (Feng et al., WACV 2023): STTran whose objects and relations see their own past.

On STTran's pieces (composition, :mod:`m3sgg.models.sttran`): the object classifier's class and
box embeddings and its ``decoder_lin``, the relation token (:class:`RelationFeatures`), the
heads and the losses. What DSG-DETR adds (``lib/sttran.py``, ``lib/track.py``):

1. **Object sequences** (:mod:`.tracking`): predcls groups a video's boxes by GT label, sgdet by
   the detector's class, sgcls by online Hungarian tracking with :attr:`DSGDETR.matcher`.
2. **Object-sequence encoder**: each box's token ``[box feature, class embedding, box embedding]``
   (2048 + 200 + 128 = 2376) goes through a 3-layer ``nn.TransformerEncoder`` (8 heads, FFN
   1024) over its sequence, with sinusoidal positions (rank in the sequence; in sgdet the rank of
   the box's frame). The encoded token replaces the box feature everywhere after: it feeds the
   classifier's ``decoder_lin`` (sgcls, sgdet) and the relation token's subject/object
   projections (2376 → 512), in every mode, predcls included.
3. **Relation encoders**: a 1-layer encoder over the relation tokens of each frame (no
   positions), then a 3-layer encoder over the relation tokens of each (video, object class),
   with sinusoidal positions (rank in the sequence; in sgdet the rank of the subject box). Both
   ``nn.TransformerEncoder`` layers (FFN 2048), not STTran's window decoder.

sgdet (on STTran's sgdet pieces): training reads ``det_train`` (:attr:`DSGDETR.train_section`)
and relates its assigned labels; evaluation reads ``det`` and keeps the boxes
:func:`~m3sgg.models.sttran.postprocess.sgdet_boxes` picks from the *classifier's* softmax over
classes 1.. (STTran's sgdet uses the detector's distribution), related with their encoded tokens.

Faithful quirks: in sgcls *training* the relation token's class embeddings and the relation
grouping use the classifier's predicted labels (STTran uses the GT labels there); the relation
sequences group by object class over the whole video (two objects of one class share one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m3sgg.data.collate import Batch
from m3sgg.errors import ConfigError, DataError
from m3sgg.models.base import AG_PREDICTION_KEYS, SceneGraphModel, resolve_loss_weights
from m3sgg.models.dsg_detr.encoders import SequenceEncoder
from m3sgg.models.dsg_detr.tracking import (
    ACCEPT_COST,
    EXPIRY_FRAMES,
    frame_number,
    group_by_key,
    sequence_positions,
    track_batch,
)
from m3sgg.models.matching import HungarianMatcher
from m3sgg.models.registry import register_model
from m3sgg.models.sttran.classifier import ObjectClassifier, label_boxes
from m3sgg.models.sttran.model import sttran_losses
from m3sgg.models.sttran.postprocess import box_predictions, person_pairs, sgdet_boxes
from m3sgg.models.sttran.relation import RelationFeatures
from m3sgg.vocab import GROUP_SIZES, NUM_AG_CLASSES

__all__ = ["DSGDETR"]

DATASETS = frozenset({"action_genome"})
MODES = frozenset({"predcls", "sgcls", "sgdet"})
#: Positions the sinusoidal tables hold (the original: 400, 600 for sgdet objects; the values of a
#: position do not depend on the table's length).
MAX_POSITIONS = 1024


@register_model("dsg_detr", datasets=DATASETS, modes=MODES)
class DSGDETR(SceneGraphModel):
    """DSG-DETR; see the module docstring.

    Args:
        object_dim: width of the store's box features (2048 for the AG detector).
        union_channels: channels of the store's union maps (1024).
        dataset: ``"action_genome"``.
        mode: ``"predcls"``, ``"sgcls"`` or ``"sgdet"``.
        proj_dim: subject/object/union projection width of the relation token (512).
        embed_dim: class embedding width (200), of the relation token and the object token.
        conv_dim: channels of the relation token's union branch (256).
        heads: attention heads of the relation encoders (8).
        ff_dim: feed-forward width of the relation encoders (2048).
        enc_layers: layers of the per-frame relation encoder (1).
        dec_layers: layers of the per-object-class relation encoder (3).
        object_heads: attention heads of the object-sequence encoder (8).
        object_ff_dim: feed-forward width of the object-sequence encoder (1024).
        object_layers: layers of the object-sequence encoder (3).
        box_embed_dim: width of the classifier's box-position embedding (128).
        classifier_dim: hidden width of the classifier's ``decoder_lin`` (1024).
        dropout: dropout of the encoders, positions and box embedding (0.1).
        num_classes: object classes including background (37).
        relation_loss: ``"margin"`` (multilabel margin on probabilities) or ``"bce"``, as STTran.
        loss_weights: multipliers of the named losses (``attention``, ``spatial``,
            ``contacting``, and ``object`` in sgcls and sgdet); missing names weigh 1.
        matcher: the sgcls tracker's assignment (default ``HungarianMatcher()``, DSG-DETR's
            weights); ``Trainer(matcher=...)`` sets it.
        accept: a tracked box joins its track when its class or feature cost is below this (0.5).
        expiry: frame numbers after which an unmatched track ends (50).

    Example::

        model = build_model("dsg_detr", "action_genome", "sgcls", object_dim=2048,
                            union_channels=1024)
    """

    prediction_keys: ClassVar[tuple[str, ...]] = AG_PREDICTION_KEYS
    supported_datasets: ClassVar[frozenset[str]] = DATASETS
    supported_modes: ClassVar[frozenset[str]] = MODES
    model_name: ClassVar[str] = "dsg_detr"

    def __init__(
        self,
        *,
        object_dim: int = 2048,
        union_channels: int = 1024,
        dataset: str = "action_genome",
        mode: str = "predcls",
        proj_dim: int = 512,
        embed_dim: int = 200,
        conv_dim: int = 256,
        heads: int = 8,
        ff_dim: int = 2048,
        enc_layers: int = 1,
        dec_layers: int = 3,
        object_heads: int = 8,
        object_ff_dim: int = 1024,
        object_layers: int = 3,
        box_embed_dim: int = 128,
        classifier_dim: int = 1024,
        dropout: float = 0.1,
        num_classes: int = NUM_AG_CLASSES,
        relation_loss: str = "margin",
        loss_weights: Mapping[str, float] | None = None,
        matcher: HungarianMatcher | None = None,
        accept: float = ACCEPT_COST,
        expiry: int = EXPIRY_FRAMES,
    ) -> None:
        if dataset not in DATASETS:
            raise ConfigError(
                f"dsg_detr: dataset must be one of {sorted(DATASETS)}, got {dataset!r}"
            )
        if mode not in MODES:
            raise ConfigError(f"dsg_detr: mode must be one of {sorted(MODES)}, got {mode!r}")
        super().__init__(mode)
        if relation_loss not in ("margin", "bce"):
            raise ConfigError(
                f"dsg_detr: relation_loss must be 'margin' or 'bce', got {relation_loss!r}"
            )
        self.loss_weights = resolve_loss_weights("dsg_detr", loss_weights, self.loss_names())
        token_dim = 3 * proj_dim + 2 * embed_dim
        for name, width, h in (
            ("relation token", token_dim, heads),
            ("object token", object_dim + embed_dim + box_embed_dim, object_heads),
        ):
            if width % h or width % 2:
                raise ConfigError(
                    f"dsg_detr: the {name} width {width} must be even and divisible by its "
                    f"heads ({h})"
                )
        self.num_classes = num_classes
        self.relation_loss = relation_loss
        self.accept = float(accept)
        self.expiry = int(expiry)
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.object_classifier = ObjectClassifier(
            object_dim=object_dim,
            num_classes=num_classes,
            embed_dim=embed_dim,
            pos_dim=box_embed_dim,
            hidden=classifier_dim,
            dropout=dropout,
        )
        object_token = object_dim + embed_dim + box_embed_dim
        self.object_encoder = SequenceEncoder(
            object_token, object_heads, object_ff_dim, object_layers, dropout, MAX_POSITIONS
        )
        self.relation = RelationFeatures(
            object_dim=object_token,
            union_channels=union_channels,
            num_classes=num_classes,
            proj_dim=proj_dim,
            embed_dim=embed_dim,
            conv_dim=conv_dim,
        )
        self.local_encoder = SequenceEncoder(token_dim, heads, ff_dim, enc_layers, dropout)
        self.global_encoder = SequenceEncoder(
            token_dim, heads, ff_dim, dec_layers, dropout, MAX_POSITIONS
        )
        self.a_rel_compress = nn.Linear(token_dim, GROUP_SIZES["attention"])
        self.s_rel_compress = nn.Linear(token_dim, GROUP_SIZES["spatial"])
        self.c_rel_compress = nn.Linear(token_dim, GROUP_SIZES["contacting"])

    def loss_names(self) -> tuple[str, ...]:
        """The named losses of this mode."""
        relations = ("attention", "spatial", "contacting")
        return relations if self.mode == "predcls" else (*relations, "object")

    # -- objects -------------------------------------------------------------------------------

    def object_sequences(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """Sequence id of every box and its position (None: rank in the sequence)."""
        if self.mode == "predcls":
            return group_by_key(batch.box_video, batch.labels), None
        if batch.class_dists is None and self.mode == "sgdet":
            raise ConfigError(
                f"dsg_detr in sgdet needs the detector's class distributions of the boxes: a "
                f"feature store whose {batch.section!r} section has class_dists"
            )
        if self.mode == "sgdet":
            sequence = group_by_key(batch.box_video, batch.class_dists.argmax(1))
            return sequence, sequence_positions(sequence, batch.boxes[:, 0].long())
        if batch.class_dists is None:
            raise DataError(
                "<feature store>",
                "dsg_detr sgcls tracks objects with the detector's class distributions of the "
                "ground-truth boxes, and this store has none (class_dists)",
                field="gt/class_dists",
            )
        sizes = []
        for gt in batch.gts:
            if gt.image_size is None:
                raise DataError(
                    gt.video_id,
                    "dsg_detr sgcls needs the video's image size (bbox_size in person_bbox.pkl)",
                    field="image_size",
                )
            sizes.append(gt.image_size)
        numbers = [[frame_number(k) for k in gt.frame_keys] for gt in batch.gts]
        sequence = track_batch(
            batch.boxes,
            batch.box_offsets,
            batch.frame_offsets,
            batch.class_dists,
            batch.box_features,
            numbers,
            sizes,
            self.matcher,
            self.accept,
            self.expiry,
        )
        return sequence, None

    def encode_objects(self, batch: Batch, class_weights: Tensor) -> Tensor:
        """The encoded object tokens ``[N, object_dim + embed_dim + box_embed_dim]``;
        ``class_weights`` ``[N, C - 1]`` (one-hot labels or class distributions) weigh the class
        embeddings."""
        sequence, position = self.object_sequences(batch)
        tokens = self.object_classifier.tokens(
            batch.box_features, batch.boxes[:, 1:], class_weights
        )
        return self.object_encoder(tokens, sequence, position)

    # -- relations -----------------------------------------------------------------------------

    def relations(
        self,
        batch: Batch,
        features: Tensor,
        labels: Tensor,
        pair_idx: Tensor,
        im_idx: Tensor,
        source: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Relation heads for ``pair_idx`` ``[P, 2]`` (box indices, pairs ordered by frame)
        from the encoded object tokens ``features`` and box classes ``labels``. The boxes are
        the batch's, or with ``source`` the batch boxes ``source`` picks (sgdet's kept boxes,
        copies allowed; ``features`` and ``labels`` are then per picked box)."""
        boxes, rows, video = batch.boxes[:, 1:], pair_idx, batch.box_video
        if source is not None:
            boxes, rows, video = boxes[source], source[pair_idx], video[source]
        maps = batch.union_maps[batch.union_rows(rows)]
        tokens = self.relation(features, boxes, labels, pair_idx, maps)
        x = self.local_encoder(tokens, group_by_key(im_idx))
        video = video[pair_idx[:, 1]]
        sequence = group_by_key(video, labels[pair_idx[:, 1]])
        position = sequence_positions(sequence, pair_idx[:, 0]) if self.mode == "sgdet" else None
        x = self.global_encoder(x, sequence, position)
        return {
            "attention_distribution": self.a_rel_compress(x).float(),
            "spatial_distribution": torch.sigmoid(self.s_rel_compress(x).float()),
            "contacting_distribution": torch.sigmoid(self.c_rel_compress(x).float()),
        }

    # -- forward -------------------------------------------------------------------------------

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Predictions with batch-level indices (the metric keys of ``docs/metrics.md``); in
        sgcls and sgdet training also ``object_logits`` ``[N, C]`` for the object loss. sgdet
        evaluation predicts on the boxes :func:`~m3sgg.models.sttran.postprocess.sgdet_boxes`
        keeps from the classifier's distributions (``boxes``, ``labels``, ``scores``, the
        ``pred_*`` keys and ``object_distribution`` per kept box)."""
        self.check_section(batch)
        if self.mode == "predcls":
            onehot = F.one_hot(batch.labels - 1, self.num_classes - 1)
            features = self.encode_objects(batch, onehot)
            out = self.relations(batch, features, batch.labels, batch.pair_idx, batch.im_idx)
            out.update(box_predictions(batch))
            return out
        features = self.encode_objects(batch, batch.class_dists)
        logits = self.object_classifier.decoder_lin(features)
        if self.mode == "sgdet":
            return self._sgdet(batch, features, logits)
        if self.training:
            pred_labels = logits[:, 1:].argmax(1) + 1
            out = self.relations(batch, features, pred_labels, batch.pair_idx, batch.im_idx)
            pred_scores = torch.softmax(logits.float(), 1).gather(1, pred_labels[:, None])[:, 0]
            out.update(box_predictions(batch, pred_labels, pred_scores), object_logits=logits)
            return out
        box_frame = batch.boxes[:, 0].long()
        _, pred_labels, pred_scores, human = label_boxes(logits, box_frame, batch.num_frames)
        pair_idx, im_idx = person_pairs(pred_labels, human, box_frame)
        out = self.relations(batch, features, pred_labels, pair_idx, im_idx)
        out.update(box_predictions(batch, pred_labels, pred_scores, pair_idx, im_idx))
        return out

    def _sgdet(self, batch: Batch, features: Tensor, logits: Tensor) -> dict[str, Tensor]:
        """sgdet. Training (``det_train``): the given pairs, related with the assigned labels
        (``batch.labels``), the logits for the object loss. Evaluation (``det``): the
        classifier's softmax over classes 1.. goes through STTran's
        :func:`~m3sgg.models.sttran.postprocess.sgdet_boxes` (``clean_class``, per-class NMS,
        person pick, pairs), and the kept boxes are related with their encoded tokens."""
        if self.training:
            out = self.relations(batch, features, batch.labels, batch.pair_idx, batch.im_idx)
            out.update(box_predictions(batch), object_logits=logits)
            return out
        dist = torch.softmax(logits.float(), dim=1)[:, 1:]
        picked = sgdet_boxes(batch.boxes[:, 1:], batch.boxes[:, 0].long(), dist, batch.num_frames)
        out = self.relations(
            batch,
            features[picked.source],
            picked.labels,
            picked.pair_idx,
            picked.im_idx,
            source=picked.source,
        )
        out.update(picked.predictions(batch.boxes))
        return out

    # -- losses --------------------------------------------------------------------------------

    def loss(self, predictions: Mapping[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        """STTran's relation losses (mean over videos of per-video means); sgcls and sgdet add
        ``object``: cross-entropy of ``object_logits`` against the box targets (sgdet: the
        assigned labels, background 0 included), likewise."""
        return sttran_losses(
            predictions,
            batch,
            self.relation_loss,
            self.loss_weights,
            objects=self.mode != "predcls",
        )

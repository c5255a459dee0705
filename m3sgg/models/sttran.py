"""STTran: the spatial-temporal transformer for video scene graphs (Cong et al., ICCV 2021).

Written from the paper's description of the architecture, on precomputed features (the feature
store gives per-box object features and per-pair union-box features).

Per pair (subject ``i`` = the person, object ``j``) a relation token is built from

- the subject and object box features, each projected to ``proj_dim``;
- the union box: its feature projected to ``proj_dim``, plus the pair's two-channel binary
  spatial mask (subject, object boxes rasterised at 27×27 in the union box's frame; see
  :func:`spatial_masks`) through a small conv stack, added to the projection;
- learned class embeddings (``embed_dim``) of the subject and object classes, optionally
  initialised from a word-vector text file (:func:`class_word_vectors`).

The concatenation (``3 * proj_dim + 2 * embed_dim``; 1936 with the paper's 512/200) is the token;
when it differs from ``d_model`` a linear layer maps it to ``d_model``.

- **Spatial encoder** (``enc_layers``): self-attention among the pairs of one frame.
- **Temporal decoder** (``dec_layers``): self-attention among pairs of neighbouring frames of the
  same video: a pair in frame ``t`` attends to the pairs of frames ``t'`` with
  ``|t' - t| < window`` (``window=2``, the paper's default: the previous, own and next frame;
  the frames of every length-``window`` sliding window that contains ``t``). The paper runs the
  decoder once per sliding window with a learned encoding of each frame's position in it; here one
  masked attention over the whole batch replaces that loop, and the frame-position encoding is
  relative: a learned logit offset per head, layer and frame offset ``t' - t``, added to the
  attention scores (the only position that is well defined when each pair's window is centred on
  it). A consequence: after ``k`` layers a pair has seen ``k * (window - 1)`` frames each side.
- **Heads**: attention (3 logits), spatial (6) and contacting (17) with sigmoid probabilities.
- **Object classifier** (sgcls, sgdet; not built in predcls, so every parameter trains in every
  mode): predicts the class (2..C-1, never background or person) of every box that is not a pair
  subject from its box feature; subjects keep their given label and score. In predcls
  ``pred_labels``/``pred_scores`` are the given ``labels``/``scores``. The object embedding uses
  the predicted class in sgcls/sgdet, in training as in evaluation.

Batching: the pairs of each video are packed into one row of a ``[videos, L, d_model]`` tensor
(``L`` = most pairs in a video) and every layer runs once over the batch with boolean masks built
from the frame ids by broadcasting (a padded slot only sees itself, so no row is fully masked).
Videos never see each other; several videos per batch give the same numbers as one at a time.

Losses (:meth:`STTran.loss`): cross-entropy on the attention logits; spatial and contacting with
``multilabel_margin_loss`` (``relation_loss="margin"``, default) or binary cross-entropy
(``"bce"``); cross-entropy on object classes in sgcls/sgdet. Like the reference, the margin loss
is applied to the sigmoid *probabilities* (not the logits), so published training recipes carry
over; probabilities lie in [0, 1], so the unit margin is never fully met and the loss keeps
pulling positives towards 1 and negatives towards 0. Pairs without relation targets (sgdet
detections matched to no GT object) are left out of the relation losses.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from m3sgg.data.collate import Batch
from m3sgg.errors import ConfigError, DataError
from m3sgg.models.base import AG_PREDICTION_KEYS, SceneGraphModel
from m3sgg.models.registry import register_model
from m3sgg.vocab import AG_OBJECT_CLASSES, GROUP_SIZES, NUM_AG_CLASSES

__all__ = ["MASK_SIZE", "STTran", "class_word_vectors", "spatial_masks"]

#: Side of the rasterised subject/object masks, in cells.
MASK_SIZE = 27
DATASETS = frozenset({"action_genome"})
MODES = frozenset({"predcls", "sgcls", "sgdet"})
LOSS_NAMES = ("attention", "spatial", "contacting", "object")
RELATION_LOSSES = ("margin", "bce")


def spatial_masks(
    subject_boxes: torch.Tensor, object_boxes: torch.Tensor, size: int = MASK_SIZE
) -> torch.Tensor:
    """Binary masks ``[P, 2, size, size]`` of each pair's subject and object box in its union box.

    The union box is divided into ``size × size`` cells (row = y, column = x); a cell of channel
    0 (subject) or 1 (object) is 1 when the box overlaps it. Every box covers at least one cell,
    even a degenerate one. Vectorized over pairs.

    Args:
        subject_boxes, object_boxes: ``[P, 4]`` xyxy boxes.
    """
    boxes = torch.stack([subject_boxes, object_boxes], dim=1).to(torch.float32)  # [P, 2, 4]
    union_lo = torch.minimum(boxes[:, 0, :2], boxes[:, 1, :2])  # [P, 2] (x, y)
    union_hi = torch.maximum(boxes[:, 0, 2:], boxes[:, 1, 2:])
    extent = (union_hi - union_lo).clamp(min=1e-6)
    scale = size / extent[:, None, :]  # [P, 1, 2]
    lo = (boxes[..., :2] - union_lo[:, None, :]) * scale  # [P, 2, 2] in cells
    hi = (boxes[..., 2:] - union_lo[:, None, :]) * scale
    first = lo.floor().clamp(0, size - 1)
    last = torch.maximum(hi.ceil().clamp(max=size), first + 1)  # exclusive
    cells = torch.arange(size, device=boxes.device, dtype=boxes.dtype)
    inside = (cells >= first[..., None]) & (cells < last[..., None])  # [P, 2, 2(x|y), size]
    return (inside[:, :, 1, :, None] & inside[:, :, 0, None, :]).to(subject_boxes.dtype)


def class_word_vectors(
    path: str | os.PathLike[str], class_names: Sequence[str], dim: int
) -> tuple[torch.Tensor, list[str]]:
    """Read class vectors from a text file of lines ``word v1 v2 … v_dim`` (GloVe style).

    A class takes the vector of its whole (lower-cased) name when the file has it, otherwise the
    mean of the vectors of its parts (``"cup/glass/bottle"`` → cup, glass, bottle; ``"_"`` and
    spaces split too) that the file has. ``__background__`` is never looked up. A first line of
    two integers (word2vec's header) is skipped. Nothing is downloaded.

    Returns:
        ``(vectors [len(class_names), dim] float32, missing class names)``; rows of missing
        classes (and of the background) are zero.

    Raises:
        DataError: the file is missing or a needed line does not hold ``dim`` numbers.
    """
    path = os.fspath(path)
    wholes = [name.lower() for name in class_names]
    parts = [[p for p in re.split(r"[/_ ]+", w) if p] for w in wholes]
    wanted = set(wholes) | {p for ps in parts for p in ps}
    table: dict[str, np.ndarray] = {}
    try:
        handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    except OSError as err:
        raise DataError(path, f"cannot read word vectors: {err.strerror or err}") from None
    with handle:
        for number, line in enumerate(handle, 1):
            word, _, rest = line.strip().partition(" ")
            if not rest:
                continue
            if number == 1 and word.isdigit() and rest.strip().isdigit():
                continue
            key = word.lower()
            if key not in wanted or key in table:
                continue
            try:
                values = np.array(rest.split(), dtype=np.float32)
            except ValueError:
                raise DataError(path, "non-numeric vector value", field=f"line {number}") from None
            if values.shape[0] != dim:
                raise DataError(
                    path,
                    f"{values.shape[0]} values, expected {dim} (embed_dim)",
                    field=f"line {number} ({word!r})",
                )
            table[key] = values
    vectors = torch.zeros(len(class_names), dim, dtype=torch.float32)
    missing: list[str] = []
    for row, (name, whole, pieces) in enumerate(zip(class_names, wholes, parts, strict=True)):
        if name == "__background__":
            continue
        if whole in table:
            vectors[row] = torch.from_numpy(table[whole])
            continue
        found = [table[p] for p in pieces if p in table]
        if found:
            vectors[row] = torch.from_numpy(np.mean(found, axis=0))
        else:
            missing.append(name)
    return vectors, missing


class _AttentionLayer(nn.Module):
    """A post-norm transformer encoder layer (the ``nn.TransformerEncoderLayer`` recipe: ReLU
    feed-forward, dropout) on ``F.scaled_dot_product_attention`` with a per-video mask.

    ``mask`` is ``[V, 1 or heads, L, L]``: boolean (True: may attend) or an additive float bias.
    Written out because ``nn.TransformerEncoderLayer``'s inference fast path returns NaN with
    per-head 3-D masks (seen with torch 2.13 on CPU), and because SDPA picks fused kernels on GPU.
    """

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ff1 = nn.Linear(d_model, ff_dim)
        self.ff2 = nn.Linear(ff_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        videos, length, width = x.shape
        qkv = self.qkv(x).view(videos, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [V, heads, L, width / heads]
        p = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        attended = attended.transpose(1, 2).reshape(videos, length, width)
        x = self.norm1(x + F.dropout(self.out(attended), p, self.training))
        hidden = self.ff2(F.dropout(F.relu(self.ff1(x)), p, self.training))
        return self.norm2(x + F.dropout(hidden, p, self.training))


class _MaskEncoder(nn.Module):
    """Two-channel 27×27 masks → a ``out_dim`` vector (two strided convs and a linear layer)."""

    def __init__(self, channels: int, out_dim: int) -> None:
        super().__init__()
        half = max(channels // 2, 1)
        self.convs = nn.Sequential(
            nn.Conv2d(2, half, kernel_size=5, stride=2, padding=2),  # 27 → 14
            nn.ReLU(inplace=True),
            nn.Conv2d(half, channels, kernel_size=3, stride=2, padding=1),  # 14 → 7
            nn.ReLU(inplace=True),
        )
        side = (MASK_SIZE + 1) // 4
        self.fc = nn.Linear(channels * side * side, out_dim)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(masks).flatten(1))


@register_model("sttran", datasets=DATASETS, modes=MODES)
class STTran(SceneGraphModel):
    """STTran on precomputed features; see the module docstring for the architecture.

    Args:
        object_dim: width of the per-box features (the feature store manifest's ``object_dim``).
        union_dim: width of the per-pair union features (the manifest's ``union_dim``).
        dataset: ``"action_genome"``.
        mode: ``"predcls"``, ``"sgcls"`` or ``"sgdet"``.
        d_model: token width (paper 1936); divisible by ``heads``.
        proj_dim: width of the subject, object and union projections (paper 512).
        embed_dim: width of each class embedding (paper 200).
        heads: attention heads (paper 8).
        ff_dim: feed-forward width of the transformer layers (paper 2048).
        enc_layers: spatial encoder layers (paper 1).
        dec_layers: temporal decoder layers (paper 3).
        window: temporal window in frames (paper 2); a pair attends to frames ``|t' - t| <
            window`` of its video.
        dropout: dropout in the transformer layers and the object classifier (paper 0.1).
        mask_channels: channels of the spatial-mask conv stack.
        classifier_dim: hidden width of the object classifier (sgcls, sgdet).
        num_classes: object classes including background (0) and person (1); 37 for AG.
        class_names: names of the classes, for word-vector look-up (default: AG's).
        word_vectors: optional text file ``word v1 … v_embed_dim`` to initialise the class
            embeddings; classes it lacks keep their random initialisation (one warning).
        relation_loss: ``"margin"`` (multilabel margin on probabilities, as the reference) or
            ``"bce"`` for the spatial and contacting heads.
        loss_weights: multipliers of the named losses (``attention``, ``spatial``,
            ``contacting``, ``object``); missing names weigh 1.

    Example::

        model = build_model("sttran", "action_genome", "predcls", object_dim=2048, union_dim=2048)
        predictions = model(batch)
        losses = model.loss(predictions, batch)
        sum(losses.values()).backward()
    """

    prediction_keys: ClassVar[tuple[str, ...]] = AG_PREDICTION_KEYS
    supported_datasets: ClassVar[frozenset[str]] = DATASETS
    supported_modes: ClassVar[frozenset[str]] = MODES

    def __init__(
        self,
        *,
        object_dim: int,
        union_dim: int,
        dataset: str = "action_genome",
        mode: str = "predcls",
        d_model: int = 1936,
        proj_dim: int = 512,
        embed_dim: int = 200,
        heads: int = 8,
        ff_dim: int = 2048,
        enc_layers: int = 1,
        dec_layers: int = 3,
        window: int = 2,
        dropout: float = 0.1,
        mask_channels: int = 64,
        classifier_dim: int = 1024,
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
            "union_dim": union_dim,
            "d_model": d_model,
            "proj_dim": proj_dim,
            "embed_dim": embed_dim,
            "heads": heads,
            "ff_dim": ff_dim,
            "window": window,
            "mask_channels": mask_channels,
            "classifier_dim": classifier_dim,
        }
        for key, value in widths.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"sttran: {key} must be a positive integer, got {value!r}")
        for key, value in (("enc_layers", enc_layers), ("dec_layers", dec_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"sttran: {key} must be a non-negative integer, got {value!r}")
        if d_model % heads:
            raise ConfigError(f"sttran: d_model ({d_model}) must be divisible by heads ({heads})")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"sttran: dropout must lie in [0, 1), got {dropout!r}")
        if num_classes < 3:
            raise ConfigError(f"sttran: num_classes must be at least 3, got {num_classes}")
        if relation_loss not in RELATION_LOSSES:
            raise ConfigError(
                f"sttran: relation_loss must be one of {list(RELATION_LOSSES)}, "
                f"got {relation_loss!r}"
            )
        weights = dict(loss_weights or {})
        unknown = sorted(set(weights) - set(LOSS_NAMES))
        if unknown:
            raise ConfigError(
                f"sttran: unknown loss_weights {unknown}; the losses are {list(LOSS_NAMES)}"
            )
        names = tuple(class_names) if class_names is not None else AG_OBJECT_CLASSES
        if len(names) != num_classes:
            raise ConfigError(f"sttran: {len(names)} class_names for num_classes={num_classes}")

        self.d_model = d_model
        self.heads = heads
        self.window = window
        self.num_classes = num_classes
        self.relation_loss = relation_loss
        self.loss_weights = {name: float(weights.get(name, 1.0)) for name in LOSS_NAMES}

        self.subject_proj = nn.Linear(object_dim, proj_dim)
        self.object_proj = nn.Linear(object_dim, proj_dim)
        self.union_proj = nn.Linear(union_dim, proj_dim)
        self.mask_encoder = _MaskEncoder(mask_channels, proj_dim)
        self.subject_embed = nn.Embedding(num_classes, embed_dim)
        self.object_embed = nn.Embedding(num_classes, embed_dim)
        token_dim = 3 * proj_dim + 2 * embed_dim
        self.token_proj: nn.Module = (
            nn.Identity() if token_dim == d_model else nn.Linear(token_dim, d_model)
        )

        def layer() -> _AttentionLayer:
            return _AttentionLayer(d_model, heads, ff_dim, dropout)

        self.spatial_layers = nn.ModuleList(layer() for _ in range(enc_layers))
        self.temporal_layers = nn.ModuleList(layer() for _ in range(dec_layers))
        self.frame_position: nn.Parameter | None = None
        if dec_layers:
            # Learned frame-position encoding: one logit offset per layer, head and t' - t.
            self.frame_position = nn.Parameter(torch.zeros(dec_layers, heads, 2 * window - 1))

        self.attention_head = nn.Linear(d_model, GROUP_SIZES["attention"])
        self.spatial_head = nn.Linear(d_model, GROUP_SIZES["spatial"])
        self.contacting_head = nn.Linear(d_model, GROUP_SIZES["contacting"])
        self.object_classifier: nn.Module | None = None
        if mode != "predcls":
            self.object_classifier = nn.Sequential(
                nn.Linear(object_dim, classifier_dim),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(classifier_dim, num_classes - 2),
            )
        if word_vectors is not None:
            self._init_embeddings(word_vectors, names, embed_dim)

    def _init_embeddings(
        self, path: str | os.PathLike[str], names: Sequence[str], dim: int
    ) -> None:
        vectors, missing = class_word_vectors(path, names, dim)
        keep = torch.tensor([n != "__background__" and n not in missing for n in names])
        with torch.no_grad():
            for embedding in (self.subject_embed, self.object_embed):
                embedding.weight[keep] = vectors[keep]
        if missing:
            warnings.warn(
                f"word vectors {os.fspath(path)!r}: {len(missing)} of "
                f"{sum(n != '__background__' for n in names)} classes have no vector and keep "
                f"their random initialisation: {', '.join(missing)}",
                stacklevel=3,
            )

    # -- forward ---------------------------------------------------------------------------------

    def _check_batch(self, batch: Batch) -> None:
        if batch.section != self.input_section:
            raise ConfigError(
                f"sttran in {self.mode} needs batches collated with section="
                f"{self.input_section!r}, got {batch.section!r}"
            )

    @staticmethod
    def _subject_mask(batch: Batch) -> torch.Tensor:
        is_subject = torch.zeros(batch.num_boxes, dtype=torch.bool, device=batch.boxes.device)
        is_subject[batch.pair_idx[:, 0]] = True
        return is_subject

    def _classify_objects(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.object_classifier is None:
            return {"pred_labels": batch.labels, "pred_scores": batch.scores}
        logits = self.object_classifier(batch.box_features).float()
        probs, best = torch.softmax(logits, dim=1).max(dim=1)
        is_subject = self._subject_mask(batch)
        return {
            "object_logits": logits,
            "pred_labels": torch.where(is_subject, batch.labels, best + 2),
            "pred_scores": torch.where(is_subject, batch.scores.to(probs.dtype), probs),
        }

    def _tokens(self, batch: Batch, labels: torch.Tensor) -> torch.Tensor:
        subject, obj = batch.pair_idx[:, 0], batch.pair_idx[:, 1]
        feats = batch.box_features
        masks = spatial_masks(batch.boxes[subject, 1:], batch.boxes[obj, 1:])
        union = self.union_proj(batch.union_features) + self.mask_encoder(masks.to(feats.dtype))
        token = torch.cat(
            [
                self.subject_proj(feats[subject]),
                self.object_proj(feats[obj]),
                union,
                self.subject_embed(labels[subject]),
                self.object_embed(labels[obj]),
            ],
            dim=1,
        )
        return self.token_proj(token)

    def _contextualise(self, tokens: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Spatial then temporal layers over the pairs packed per video ``[V, L, d_model]``."""
        num_videos = batch.num_videos
        counts = np.diff(batch.pair_offsets)
        length = max(int(counts.max()), 1)
        device = tokens.device
        start = torch.tensor(batch.pair_offsets[:-1], dtype=torch.int64, device=device)
        slot = torch.arange(tokens.shape[0], device=device) - start[batch.pair_video]
        flat = batch.pair_video * length + slot  # position of each pair in the packed tensor
        size = num_videos * length
        x = tokens.new_zeros(size, tokens.shape[1]).index_copy(0, flat, tokens)
        x = x.view(num_videos, length, -1)
        valid = torch.zeros(size, dtype=torch.bool, device=device).index_fill(0, flat, True)
        valid = valid.view(num_videos, length)
        frame = torch.full((size,), -1, dtype=torch.int64, device=device)
        frame = frame.index_copy(0, flat, batch.im_idx).view(num_videos, length)

        both_valid = valid[:, :, None] & valid[:, None, :]
        itself = torch.eye(length, dtype=torch.bool, device=device)
        offset = frame[:, None, :] - frame[:, :, None]  # key frame - query frame, [V, L, L]

        if self.spatial_layers:
            allowed = ((both_valid & (offset == 0)) | itself)[:, None]  # [V, 1, L, L]
            for layer in self.spatial_layers:
                x = layer(x, allowed)
        if self.frame_position is not None:
            reach = self.window - 1
            blocked = ~((both_valid & (offset.abs() <= reach)) | itself)[:, None]
            position = offset.clamp(-reach, reach) + reach  # [V, L, L] in 0..2*reach
            for index, layer in enumerate(self.temporal_layers):
                bias = self.frame_position[index][:, position].transpose(0, 1)  # [V, heads, L, L]
                x = layer(x, bias.to(x.dtype).masked_fill(blocked, float("-inf")))
        return x.reshape(size, -1)[flat]

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Predictions with batch-level indices: the metric keys plus ``spatial_logits``,
        ``contacting_logits`` and, in sgcls/sgdet, ``object_logits`` ``[N, num_classes - 2]``
        (classes 2..C-1). Scores and distributions are float32, also under autocast."""
        self._check_batch(batch)
        out = self._classify_objects(batch)
        tokens = self._tokens(batch, out["pred_labels"])
        if tokens.shape[0]:
            tokens = self._contextualise(tokens, batch)
        # Heads in float32 even under autocast: the metrics rank by these scores.
        spatial_logits = self.spatial_head(tokens).float()
        contacting_logits = self.contacting_head(tokens).float()
        out.update(
            boxes=batch.boxes,
            labels=batch.labels,
            scores=batch.scores,
            im_idx=batch.im_idx,
            pair_idx=batch.pair_idx,
            attention_distribution=self.attention_head(tokens).float(),
            spatial_distribution=torch.sigmoid(spatial_logits),
            contacting_distribution=torch.sigmoid(contacting_logits),
            spatial_logits=spatial_logits,
            contacting_logits=contacting_logits,
        )
        return out

    # -- losses ----------------------------------------------------------------------------------

    def loss(
        self, predictions: Mapping[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]:
        """Weighted named losses: ``attention``, ``spatial``, ``contacting`` (+ ``object``).

        Relation losses average over pairs with targets (``batch.relation_mask``); the object
        loss over non-subject boxes whose target is an object class (2..C-1). An empty selection
        gives a zero that still belongs to the graph.
        """
        relation = batch.relation_mask
        attention_target = torch.where(relation, batch.attention, -1)
        attention = F.cross_entropy(
            predictions["attention_distribution"],
            attention_target.clamp(min=0),
            reduction="none",
        )
        losses = {"attention": _masked_mean(attention, attention_target >= 0)}
        for group in ("spatial", "contacting"):
            target = getattr(batch, group)
            if self.relation_loss == "margin":
                per_pair = F.multilabel_margin_loss(
                    predictions[f"{group}_distribution"], _index_targets(target), reduction="none"
                )
            else:
                per_pair = F.binary_cross_entropy_with_logits(
                    predictions[f"{group}_logits"],
                    target.to(predictions[f"{group}_logits"].dtype),
                    reduction="none",
                ).mean(dim=1)
            losses[group] = _masked_mean(per_pair, relation)
        if self.object_classifier is not None:
            target = batch.object_targets - 2
            keep = (target >= 0) & ~self._subject_mask(batch)
            per_box = F.cross_entropy(
                predictions["object_logits"], target.clamp(min=0), reduction="none"
            )
            losses["object"] = _masked_mean(per_box, keep)
        return {name: value * self.loss_weights[name] for name, value in losses.items()}


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``keep``; 0 (still in the graph) when nothing is kept."""
    weight = keep.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


def _index_targets(multi_hot: torch.Tensor) -> torch.Tensor:
    """Multi-hot ``[P, C]`` → the ``multilabel_margin_loss`` target: label indices first, in
    ascending order, then ``-1`` padding."""
    hot = multi_hot > 0.5
    order = torch.argsort((~hot).to(torch.int8), dim=1, stable=True)
    return torch.where(hot.gather(1, order), order, torch.full_like(order, -1))

"""TEMPURA's object classifier for sgcls (``lib/tempura.py``, ``ObjectClassifier``, linear head).

Per box, as STTran's: the box feature, the detector's class distribution times the class
embedding table (``obj_embed``, classes 1..36) and the box-position embedding (``pos_embed``),
concatenated (2048 + 200 + 128 = 2376 wide). Then, with ``tracking``, the object-sequence encoder
(``encoder_tran``: 3 ``nn.TransformerEncoderLayer``, 8 heads, FFN 1024, sinusoidal positions) runs
over the object sequences of each video: the boxes grouped by the arg-max class of the detector's
distribution over the whole video (``lib/ds_track.py``), a box's position being the rank of its
frame among the sequence's frames; a box alone in its group is encoded alone. Then
``intermediate`` (Linear -> ``hidden``, BatchNorm, ReLU) and ``decoder_lin``: with the linear
head (``head="linear"``, the recipes) a Linear giving one logit per class; with the mixture head
(``"gmm"``, the original's ``-obj_head gmm``) a softmax :class:`~.gmm.GMMHead` with ``k``
components giving probabilities: sampled over all classes in training, in evaluation the mixture
of the component means' softmax over classes ``1..`` (the background column left out).

With ``memory`` (the original's ``-obj_mem_compute``), an object memory (one row per class 1..,
the class means of the previous epoch's features, :class:`~.memory.MemoryFusion`) is read and
fused into the tracking output (with tracking) or the ``intermediate`` output (without), before
the layers that follow; epoch 0 runs without it.

The *embedding* the contrastive loss reads is the tracking encoder's output (2376 wide) with
tracking, the ``intermediate`` output without; after the object memory's fusion when there is
one (the original's ``object_mem_features``).
"""

from __future__ import annotations

import torch
from torch import nn

from m3sgg.models.dsg_detr.encoders import SequenceEncoder
from m3sgg.models.sttran.classifier import object_tokens
from m3sgg.models.tempura.gmm import GMMHead
from m3sgg.models.tempura.memory import MemoryFusion

__all__ = ["TempuraObjectClassifier", "class_sequences"]


def class_sequences(
    class_dists: torch.Tensor, box_video: torch.Tensor, box_frame: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sequence [N], position [N])``: dense sequence ids (one per video and arg-max class of
    ``class_dists``) and each box's rank of its frame among its sequence's frames."""
    if box_frame.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=box_frame.device)
        return empty, empty
    classes = class_dists.shape[1]
    key = box_video * classes + class_dists.argmax(dim=1)
    sequence = torch.unique(key, return_inverse=True)[1]
    frames = int(box_frame.max()) + 1
    cells, cell = torch.unique(sequence * frames + box_frame, return_inverse=True)
    owner = cells // frames
    first = torch.searchsorted(owner, owner)  # the first cell of each cell's sequence
    rank = torch.arange(len(cells), device=cells.device) - first
    return sequence, rank[cell]


class TempuraObjectClassifier(nn.Module):
    """``forward(box_features, boxes xyxy, class_dists, box_video, box_frame) -> (scores,
    embedding [N, ·])`` (module docstring): ``scores`` are logits [N, C] with the linear head;
    with the mixture head probabilities [N, C] in training, [N, C - 1] (classes 1..) in
    evaluation."""

    def __init__(
        self,
        *,
        object_dim: int,
        num_classes: int,
        embed_dim: int = 200,
        pos_dim: int = 128,
        hidden: int = 1024,
        dropout: float = 0.1,
        tracking: bool = False,
        tracking_heads: int = 8,
        tracking_ff: int = 1024,
        tracking_layers: int = 3,
        max_len: int = 400,
        head: str = "linear",
        k: int = 4,
        memory: bool = False,
        selection: str = "manual",
        lam: float = 0.5,
    ) -> None:
        super().__init__()
        if head not in ("linear", "gmm"):
            raise ValueError(f"the object head is 'linear' or 'gmm', got {head!r}")
        self.head = head
        width = object_dim + embed_dim + pos_dim
        self.obj_embed = nn.Embedding(num_classes - 1, embed_dim)
        self.pos_embed = nn.Sequential(
            nn.BatchNorm1d(4, momentum=0.01 / 10.0),
            nn.Linear(4, pos_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.tracker = (
            SequenceEncoder(width, tracking_heads, tracking_ff, tracking_layers, 0.1, max_len)
            if tracking
            else None
        )
        self.intermediate = nn.Sequential(
            nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU()
        )
        self.decoder_lin: nn.Module = (
            nn.Sequential(nn.Linear(hidden, num_classes))
            if head == "linear"
            else GMMHead(hidden, num_classes, k, "softmax")
        )
        # the object memory: one row per object class 1.. (no background), read and fused into
        # the tracking output (with tracking) or the intermediate output (without)
        self.memory_fusion = (
            MemoryFusion(
                width if tracking else hidden,
                num_classes - 1,
                selection=selection,  # type: ignore[arg-type]
                lam=lam,
            )
            if memory
            else None
        )

    def memory_features(
        self,
        box_features: torch.Tensor,
        boxes: torch.Tensor,
        class_dists: torch.Tensor,
        box_video: torch.Tensor,
        box_frame: torch.Tensor,
    ) -> torch.Tensor:
        """The features [N, ·] the object memory is read with and built from (the original's
        ``object_features``): the tracking output with tracking, else the intermediate output."""
        x = object_tokens(box_features, boxes, class_dists, self.obj_embed, self.pos_embed)
        if self.tracker is not None:
            sequence, rank = class_sequences(class_dists, box_video, box_frame)
            return self.tracker(x, sequence, rank)
        return self.intermediate(x)

    def _head_input(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(decoder input, embedding)``: the features through the object memory's fusion and,
        with tracking, ``intermediate``."""
        x = self.memory_features(*inputs)
        if self.memory_fusion is not None:
            x = self.memory_fusion(x)
        embedding = x  # the original's object_mem_features (what the contrastive loss reads)
        if self.tracker is not None:
            x = self.intermediate(x)
        return x, embedding

    def uncertainty(
        self,
        box_features: torch.Tensor,
        boxes: torch.Tensor,
        class_dists: torch.Tensor,
        box_video: torch.Tensor,
        box_frame: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixture head's aleatoric and epistemic values [N, C] of the boxes."""
        if self.head != "gmm":
            raise ValueError("only the mixture object head has uncertainty values")
        x, _ = self._head_input(box_features, boxes, class_dists, box_video, box_frame)
        return self.decoder_lin.uncertainty(x)  # type: ignore[operator]

    def forward(
        self,
        box_features: torch.Tensor,
        boxes: torch.Tensor,
        class_dists: torch.Tensor,
        box_video: torch.Tensor,
        box_frame: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, embedding = self._head_input(box_features, boxes, class_dists, box_video, box_frame)
        if self.head == "gmm":
            return self.decoder_lin(x, from_class=1), embedding
        return self.decoder_lin(x), embedding

"""STTran's object classifier (``lib/sttran.py``, ``ObjectClassifier``) for sgcls and sgdet.

Per box: the box feature, the detector's class distribution times the class embedding table
(``obj_embed``, classes 1..36) and a box-position embedding (``pos_embed``: BatchNorm on the
center-size box ``(cx, cy, w, h)`` with the "+1" width, Linear -> ``pos_dim``, ReLU, dropout) go
through ``decoder_lin`` (Linear -> ``hidden``, BatchNorm, ReLU, Linear -> ``num_classes``): one
logit per class, background included.

Training uses these logits for the object loss only: the predicted labels are the given labels
(ground truth in sgcls, the assigned labels in sgdet), as in the original. Evaluation
(:func:`label_boxes`) takes the softmax over classes 1..36, labels every box with its best object
class (2..36), makes the most person-like box of each frame the person, and relabels duplicate
classes: in each frame, the most frequent label (the smallest on ties, as ``torch.mode``) keeps
only its most confident box; the others take their next best class.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ObjectClassifier",
    "center_size",
    "label_boxes",
    "label_distribution",
    "object_tokens",
]


def center_size(boxes: torch.Tensor) -> torch.Tensor:
    """xyxy ``[N, 4]`` → ``(cx, cy, w, h)`` with ``w = x2 - x1 + 1`` (the original's
    ``center_size``)."""
    wh = boxes[:, 2:] - boxes[:, :2] + 1.0
    return torch.cat([boxes[:, :2] + 0.5 * wh, wh], dim=1)


def object_tokens(
    box_features: torch.Tensor,
    boxes: torch.Tensor,
    class_weights: torch.Tensor,
    obj_embed: nn.Embedding,
    pos_embed: nn.Module,
) -> torch.Tensor:
    """The per-box token the classifier reads, ``[N, object_dim + embed_dim + pos_dim]``: the
    box feature, ``class_weights`` ``[N, C - 1]`` (the detector's class distribution, or one-hot
    labels) times the class embedding table, and ``pos_embed`` of the center-size box. Also
    the token DSG-DETR's and TEMPURA's object-sequence encoders encode."""
    embed = class_weights.to(box_features.dtype) @ obj_embed.weight
    position = pos_embed(center_size(boxes.to(box_features.dtype)))
    return torch.cat([box_features, embed, position], dim=1)


class ObjectClassifier(nn.Module):
    """``forward(box_features [N, object_dim], boxes [N, 4] xyxy, class_dists [N, C - 1])
    -> logits [N, C]`` (module docstring)."""

    def __init__(
        self,
        *,
        object_dim: int,
        num_classes: int,
        embed_dim: int = 200,
        pos_dim: int = 128,
        hidden: int = 1024,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.obj_embed = nn.Embedding(num_classes - 1, embed_dim)
        self.pos_embed = nn.Sequential(
            nn.BatchNorm1d(4, momentum=0.01 / 10.0),
            nn.Linear(4, pos_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.decoder_lin = nn.Sequential(
            nn.Linear(object_dim + embed_dim + pos_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(
        self, box_features: torch.Tensor, boxes: torch.Tensor, class_dists: torch.Tensor
    ) -> torch.Tensor:
        return self.decoder_lin(self.tokens(box_features, boxes, class_dists))

    def tokens(
        self, box_features: torch.Tensor, boxes: torch.Tensor, class_weights: torch.Tensor
    ) -> torch.Tensor:
        """:func:`object_tokens` with this classifier's embeddings (what ``decoder_lin``
        reads)."""
        return object_tokens(box_features, boxes, class_weights, self.obj_embed, self.pos_embed)


def label_boxes(
    logits: torch.Tensor, box_frame: torch.Tensor, num_frames: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The original's evaluation labelling of every box, vectorised over frames.

    Args:
        logits: ``[N, C]`` classifier logits (column 0 background, 1 person).
        box_frame: ``[N]`` batch-level frame of each box, non-decreasing.
        num_frames: frames in the batch.

    Returns:
        ``(distribution [N, C - 1], pred_labels [N], pred_scores [N], human [F])``: the softmax
        over classes 1.. after the duplicate relabelling zeroed entries, the labels (1 for the
        person of each frame), their scores, and each frame's person box (-1 for a frame
        without boxes).
    """
    return label_distribution(torch.softmax(logits[:, 1:], dim=1), box_frame, num_frames)


def label_distribution(
    dist: torch.Tensor, box_frame: torch.Tensor, num_frames: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`label_boxes` from the distribution over classes ``1..`` itself, ``dist``
    ``[N, C - 1]`` (column 0 person), for classifiers whose output is already one (TEMPURA's
    mixture object head); same returns."""
    n, width = dist.shape
    scores, labels = dist[:, 1:].max(dim=1)
    labels = labels + 2
    rows = torch.arange(n, device=dist.device)
    # The most person-like box of each frame (first on ties).
    person = dist[:, 0]
    best = torch.full((num_frames,), float("-inf"), dtype=person.dtype, device=person.device)
    best = best.scatter_reduce(0, box_frame, person, "amax")
    candidate = torch.where(person == best[box_frame], rows, n)
    human = torch.full((num_frames,), n, dtype=torch.long, device=dist.device)
    human = human.scatter_reduce(0, box_frame, candidate, "amin")
    has = human < n
    labels[human[has]] = 1
    scores[human[has]] = dist[human[has], 0]
    # Duplicates: the frame's most frequent label (smallest on ties) keeps its best box only.
    classes = width + 1
    counts = torch.zeros(num_frames * classes, dtype=torch.long, device=dist.device)
    counts = counts.index_add(0, box_frame * classes + labels, torch.ones_like(labels))
    mode = counts.view(num_frames, classes).argmax(dim=1)  # first maximum = smallest class
    in_mode = labels == mode[box_frame]
    value = dist[rows, (labels - 1).clamp(min=0)]
    # Keep the box ranked last by an ascending stable sort (the highest value; the last index
    # among equal values); relabel the others.
    key = torch.where(in_mode, value, torch.full_like(value, float("-inf")))
    top = torch.full((num_frames,), float("-inf"), dtype=key.dtype, device=key.device)
    top = top.scatter_reduce(0, box_frame, key, "amax")
    last = torch.full((num_frames,), -1, dtype=torch.long, device=dist.device)
    kept = torch.where(in_mode & (key == top[box_frame]), rows, -1)
    last = last.scatter_reduce(0, box_frame, kept, "amax")
    change = in_mode & (rows != last[box_frame])
    if bool(change.any()):
        dist = dist.clone()
        idx = torch.nonzero(change).squeeze(1)
        dist[idx, labels[idx] - 1] = 0.0
        new_scores, new_labels = dist[idx].max(dim=1)
        labels[idx] = new_labels + 1
        scores[idx] = new_scores
    return dist, labels, scores, torch.where(has, human, -1)

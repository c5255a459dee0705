"""TEMPURA's loss terms (``train.py`` of the original), each for one video's rows.

- :func:`attention_nll`: the attention head returns probabilities, so its loss is the negative
  log-likelihood of ``log(p + 1e-12)``, averaged over the pairs.
- :func:`object_cross_entropy`: object classification with the background class (index 0)
  weighted by ``eos_coef``; per-box losses ``weight[y] * ce`` averaged by a plain mean (not the
  weighted mean ``nn.CrossEntropyLoss`` would take).
- :func:`contrastive_loss`: pytorch-metric-learning's ``ContrastiveLoss(pos_margin=0,
  neg_margin=1)`` with its defaults: embeddings L2-normalised, Euclidean distances, every ordered
  pair ``i != j``; same-label pairs cost ``relu(d - pos_margin)``, other pairs
  ``relu(neg_margin - d)``; each kind is averaged over its pairs with a non-zero cost (0 when none)
  and the two averages are added. Batched over videos: pairs never cross videos, and the result
  is the mean of the per-video losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention_nll", "contrastive_loss", "object_cross_entropy"]


def attention_nll(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean NLL of ``target`` [P] under ``probabilities`` [P, C] (``log(p + 1e-12)``)."""
    return F.nll_loss(torch.log(probabilities + 1e-12), target)


def object_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, eos_coef: float = 1.0
) -> torch.Tensor:
    """Plain mean of ``weight[y] * CE`` over the boxes; ``weight[0] = eos_coef``, others 1."""
    weight = torch.ones(logits.shape[1], dtype=logits.dtype, device=logits.device)
    weight[0] = eos_coef
    return F.cross_entropy(logits, labels, weight=weight, reduction="none").mean()


def contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    video: torch.Tensor | None = None,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
) -> torch.Tensor:
    """Contrastive loss of ``embeddings`` [N, D] with ``labels`` [N], per video, averaged.

    Args:
        embeddings: one row per box.
        labels: class of each box.
        video: video index of each box (``0..V-1``); None: all rows are one video.
        pos_margin, neg_margin: the margins (TEMPURA: 0 and 1).

    Returns:
        The mean over the videos of each video's loss (a 0-d tensor; 0 for no rows).
    """
    n = embeddings.shape[0]
    if video is None:
        video = torch.zeros(n, dtype=torch.long, device=embeddings.device)
    if n == 0:
        return embeddings.sum() * 0.0
    num_videos = int(video.max()) + 1
    normed = F.normalize(embeddings, p=2, dim=1)
    dist = torch.cdist(normed, normed, p=2)
    same_video = video[:, None] == video[None, :]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=embeddings.device)
    same_label = labels[:, None] == labels[None, :]
    pos = same_video & off_diagonal & same_label
    neg = same_video & ~same_label
    pos_cost = torch.where(pos, F.relu(dist - pos_margin), torch.zeros_like(dist))
    neg_cost = torch.where(neg, F.relu(neg_margin - dist), torch.zeros_like(dist))
    total = embeddings.new_zeros(num_videos)
    for cost in (pos_cost, neg_cost):
        sums = embeddings.new_zeros(num_videos).index_add(0, video, cost.sum(dim=1))
        nonzero = (cost > 0).sum(dim=1).to(embeddings.dtype)
        counts = embeddings.new_zeros(num_videos).index_add(0, video, nonzero)
        total = total + torch.where(counts > 0, sums / counts.clamp(min=1), sums * 0.0)
    return total.mean()

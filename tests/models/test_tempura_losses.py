"""TEMPURA's loss terms against hand-computed values."""

from __future__ import annotations

import math

import torch

from m3sgg.models.tempura.losses import attention_nll, contrastive_loss, object_cross_entropy


def test_attention_nll_on_probabilities() -> None:
    p = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]])
    expected = (-math.log(0.5 + 1e-12) - math.log(0.0 + 1e-12)) / 2  # a zero probability is capped
    torch.testing.assert_close(attention_nll(p, torch.tensor([0, 0])), torch.tensor(expected))


def test_object_cross_entropy_weights_background_then_plain_mean() -> None:
    logits = torch.zeros(2, 3)  # CE = ln 3 for every box
    out = object_cross_entropy(logits, torch.tensor([0, 1]), eos_coef=0.5)
    torch.testing.assert_close(out, torch.tensor(0.75 * math.log(3)))


def test_contrastive_by_hand() -> None:
    a, b, c = [1.0, 0.0], [1.0, 0.1], [1.0, 1.0]
    emb = torch.tensor([a, b, c])
    labels = torch.tensor([1, 1, 2])

    def dist(cos: float) -> float:  # unit vectors: |u - v| = sqrt(2 - 2 cos)
        return math.sqrt(2 - 2 * cos)

    d_ab = dist(1 / math.sqrt(1.01))
    d_ac = dist(1 / math.sqrt(2))
    d_bc = dist(1.1 / (math.sqrt(1.01) * math.sqrt(2)))
    expected = d_ab + ((1 - d_ac) + (1 - d_bc)) / 2  # positive average + negative average
    torch.testing.assert_close(contrastive_loss(emb, labels), torch.tensor(expected))


def test_contrastive_zero_costs_do_not_count() -> None:
    # same direction -> distance 0 (no positive cost); orthogonal -> sqrt 2 > margin 1 (no negative)
    emb = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(contrastive_loss(emb, torch.tensor([4, 4, 7])), torch.tensor(0.0))


def test_contrastive_batched_is_mean_of_videos_and_never_crosses_them() -> None:
    torch.manual_seed(1)
    e1, e2 = torch.randn(5, 8), torch.randn(4, 8)
    l1, l2 = torch.tensor([1, 1, 2, 3, 2]), torch.tensor([1, 2, 2, 1])
    video = torch.tensor([0] * 5 + [1] * 4)
    batched = contrastive_loss(torch.cat([e1, e2]), torch.cat([l1, l2]), video)
    expected = (contrastive_loss(e1, l1) + contrastive_loss(e2, l2)) / 2
    torch.testing.assert_close(batched, expected)
    # one box per video: no pair at all
    lone = contrastive_loss(torch.randn(2, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
    torch.testing.assert_close(lone, torch.tensor(0.0))

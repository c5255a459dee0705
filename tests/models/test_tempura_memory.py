"""TEMPURA's predicate memory: streaming sums equal brute-force means, read-out and fusion."""

from __future__ import annotations

import math

import pytest
import torch

from m3sgg.models.tempura.memory import MemoryAccumulator, MemoryFusion


def _data(seed: int, pairs: int = 30, predicates: int = 5, dim: int = 3):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(pairs, dim, generator=g)
    targets = torch.rand(pairs, predicates, generator=g) < 0.3
    targets[:, -1] = False  # a predicate never seen
    aleatoric = torch.rand(pairs, predicates, generator=g)
    epistemic = torch.rand(pairs, predicates, generator=g) * 0.2
    return features, targets, aleatoric, epistemic


def _brute_force(weighting, features, targets, aleatoric, epistemic):
    rows = []
    for p in range(targets.shape[1]):
        total, norm = torch.zeros(features.shape[1], dtype=torch.float64), 0.0
        for i in range(targets.shape[0]):
            if not targets[i, p]:
                continue
            f = features[i].double()
            al, ep = float(aleatoric[i, p]), float(epistemic[i, p])
            if weighting == "simple":
                total, norm = total + f, norm + 1
            elif weighting == "both":
                total, norm = total + math.exp(al + ep) * f, norm + 2 * math.exp(al)
            else:
                u = al if weighting == "al" else ep
                total, norm = total + math.exp(u) * f, norm + math.exp(u)
        if weighting == "simple":
            rows.append(total / norm if norm else total)
        else:
            rows.append(total / (norm + 1e-12))
    return torch.stack(rows).float()


@pytest.mark.parametrize("weighting", ["simple", "al", "ep", "both"])
def test_streaming_equals_brute_force(weighting: str) -> None:
    batches = [_data(seed, pairs=7 + seed) for seed in range(4)]
    acc = MemoryAccumulator(5, 3, weighting)  # type: ignore[arg-type]
    for batch in batches:
        acc.add(*batch)
    everything = [torch.cat(parts) for parts in zip(*batches, strict=True)]
    expected = _brute_force(weighting, *everything)
    torch.testing.assert_close(acc.compute(), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(acc.compute()[-1], torch.zeros(3))  # unseen predicate: zero row


def test_simple_mean_by_hand() -> None:
    acc = MemoryAccumulator(2, 2, "simple")
    features = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 0.0]])
    targets = torch.tensor([[1, 0], [1, 1], [0, 1]])
    acc.add(features, targets)
    torch.testing.assert_close(acc.compute(), torch.tensor([[2.0, 4.0], [4.0, 3.0]]))


def test_both_is_not_renormalised_and_zero_uncertainty_weighs_nothing() -> None:
    # two pairs of predicate 0 with al = ln 2 and 0, ep = 0:
    #   numerator exp(ln 2) * f1 (the zero entry weighs 0), normaliser 2 * (2 + 1) = 6
    acc = MemoryAccumulator(1, 1, "both")
    acc.add(
        torch.tensor([[3.0], [100.0]]),
        torch.tensor([[True], [True]]),
        torch.tensor([[math.log(2)], [0.0]]),
        torch.tensor([[0.0], [0.0]]),
    )
    torch.testing.assert_close(acc.compute(), torch.tensor([[2 * 3.0 / 6]]))


def test_weighted_needs_uncertainty_and_shapes_are_checked() -> None:
    features, targets, _, _ = _data(0)
    with pytest.raises(ValueError, match="needs uncertainty"):
        MemoryAccumulator(5, 3, "ep").add(features, targets)
    with pytest.raises(ValueError, match="do not fit"):
        MemoryAccumulator(4, 3, "simple").add(features, targets)
    with pytest.raises(ValueError, match="weighting"):
        MemoryAccumulator(5, 3, "mean")  # type: ignore[arg-type]


def test_state_dict_resume_is_bitwise() -> None:
    batches = [_data(seed) for seed in range(3)]
    straight = MemoryAccumulator(5, 3, "both")
    for batch in batches:
        straight.add(*batch)
    first = MemoryAccumulator(5, 3, "both")
    first.add(*batches[0])
    resumed = MemoryAccumulator(5, 3, "both")
    resumed.load_state_dict(first.state_dict())
    for batch in batches[1:]:
        resumed.add(*batch)
    assert torch.equal(resumed.compute(), straight.compute())
    with pytest.raises(ValueError, match="weighting"):
        MemoryAccumulator(5, 3, "al").load_state_dict(first.state_dict())
    resumed.reset()
    assert torch.equal(resumed.compute(), torch.zeros(5, 3))


def _identity_attention(fusion: MemoryFusion, dim: int) -> None:
    with torch.no_grad():
        attention = fusion.attention
        attention.in_proj_weight.copy_(torch.randn(3 * dim, dim))  # type: ignore[union-attr]
        attention.in_proj_weight[2 * dim :] = torch.eye(dim)  # type: ignore[index,union-attr]
        attention.out_proj.weight.copy_(torch.eye(dim))  # type: ignore[union-attr]


def test_no_memory_passes_features_through() -> None:
    fusion = MemoryFusion(4, 26)
    features = torch.randn(6, 4)
    assert fusion(features) is features
    assert not fusion.is_ready


def test_fusion_by_hand_when_every_row_is_the_same() -> None:
    # all memory rows equal m: attention weights sum to 1, so the read-out is V m = m
    dim = 4
    fusion = MemoryFusion(dim, 26, lam=0.3).eval()
    _identity_attention(fusion, dim)
    m = torch.tensor([1.0, -2.0, 0.5, 3.0])
    fusion.set_memory(m.expand(26, dim))
    features = torch.randn(5, dim)
    torch.testing.assert_close(fusion(features), 0.3 * features + 0.7 * m)


def test_read_out_attends_over_rows() -> None:
    # with identity projections, a query aligned with row 0 weighs it most
    dim = 2
    fusion = MemoryFusion(dim, 2, lam=0.0).eval()
    with torch.no_grad():
        fusion.attention.in_proj_weight.copy_(torch.eye(dim).repeat(3, 1) * 10)  # type: ignore[union-attr]
        fusion.attention.out_proj.weight.copy_(torch.eye(dim) / 10)  # type: ignore[union-attr]
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    fusion.set_memory(rows)
    q = torch.tensor([[1.0, 0.0]])
    # scores: q.k / sqrt(2) with q, k scaled by 10: 100/sqrt2 and 0
    w = torch.softmax(torch.tensor([100 / math.sqrt(2), 0.0]), 0)
    torch.testing.assert_close(fusion(q), (w[:, None] * rows).sum(0, keepdim=True))


def test_memory_travels_in_state_dict() -> None:
    fusion = MemoryFusion(4, 26, lam=0.5)
    fusion.set_memory(torch.randn(26, 4))
    other = MemoryFusion(4, 26, lam=0.5)
    other.load_state_dict(fusion.state_dict())
    assert other.is_ready
    x = torch.randn(3, 4)
    torch.testing.assert_close(other.eval()(x), fusion.eval()(x))


def test_separate_memory_averages_group_read_outs() -> None:
    dim = 4
    fusion = MemoryFusion(dim, 5, lam=0.0, groups=(2, 3)).eval()
    with torch.no_grad():
        for attention in fusion.attention:  # type: ignore[union-attr]
            attention.in_proj_weight[2 * dim :] = torch.eye(dim)
            attention.out_proj.weight.copy_(torch.eye(dim))
    a, b = torch.randn(dim), torch.randn(dim)
    fusion.set_memory(torch.stack([a, a, b, b, b]))
    torch.testing.assert_close(fusion(torch.randn(3, dim)), ((a + b) / 2).expand(3, dim))
    with pytest.raises(ValueError, match="add up"):
        MemoryFusion(dim, 5, groups=(2, 2))

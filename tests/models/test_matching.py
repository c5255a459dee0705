"""The assignment solver, box utilities, cosine costs and the Hungarian matcher."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from m3sgg.models.matching import (
    HungarianMatcher,
    box_cxcywh_to_xyxy,
    box_xywh_to_cxcywh,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
    cosine_cost,
    generalized_box_iou,
    linear_sum_assignment,
)


def _brute_force_min(cost: torch.Tensor) -> float:
    rows, cols = cost.shape
    if rows <= cols:
        return min(
            sum(float(cost[i, p[i]]) for i in range(rows))
            for p in itertools.permutations(range(cols), rows)
        )
    return _brute_force_min(cost.T)


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (2, 5), (5, 2), (4, 4), (6, 3)])
def test_assignment_is_optimal_on_random_and_tied_matrices(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    for trial in range(20):
        if trial % 2:  # many ties: costs from {0, 1, 2}
            cost = torch.randint(0, 3, shape, generator=g).float()
        else:
            cost = torch.rand(shape, generator=g)
        rows, cols = linear_sum_assignment(cost)
        assert len(rows) == min(shape)
        assert rows.tolist() == sorted(rows.tolist())
        assert len(set(cols.tolist())) == len(cols)
        assert float(cost[rows, cols].sum()) == pytest.approx(_brute_force_min(cost), abs=1e-6)


def test_assignment_of_an_empty_matrix_is_empty() -> None:
    rows, cols = linear_sum_assignment(torch.zeros(0, 3))
    assert rows.numel() == 0 and cols.numel() == 0 and rows.dtype == torch.int64


def test_assignment_on_a_known_matrix() -> None:
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    rows, cols = linear_sum_assignment(cost)
    # optimum 5: (0,1)=1 (1,0)=2 (2,2)=2
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]


def test_generalized_iou_by_hand() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 4.0, 2.0]])
    giou = generalized_box_iou(a, b)
    # overlap: inter 1, union 7, hull 9 -> 1/7 - 2/9; same box -> 1;
    # disjoint: inter 0, union 4 + 2 = 6, hull 4 * 2 = 8 -> -2/8
    assert giou.shape == (1, 3)
    assert giou[0].tolist() == pytest.approx([1 / 7 - 2 / 9, 1.0, -0.25], abs=1e-7)


def test_generalized_iou_refuses_degenerate_boxes() -> None:
    with pytest.raises(ValueError, match="x2 >= x1"):
        generalized_box_iou(torch.tensor([[2.0, 0.0, 1.0, 1.0]]), torch.zeros(1, 4))


def test_box_formats_round_trip() -> None:
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    assert box_xyxy_to_xywh(xyxy).tolist() == [[10.0, 20.0, 40.0, 60.0]]
    assert box_xyxy_to_cxcywh(xyxy).tolist() == [[30.0, 50.0, 40.0, 60.0]]
    assert box_xywh_to_cxcywh(box_xyxy_to_xywh(xyxy)).tolist() == [[30.0, 50.0, 40.0, 60.0]]
    assert box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)).tolist() == xyxy.tolist()


def test_cosine_cost_by_hand() -> None:
    x = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    cost = cosine_cost(x, y)
    assert cost[0].tolist() == pytest.approx([0.0, 1.0, 1 - 1 / math.sqrt(2)], abs=1e-6)
    assert cost[1].tolist() == [1.0, 1.0, 1.0]  # a zero row is far from everything


def test_matcher_cost_is_the_weighted_sum_by_hand() -> None:
    matcher = HungarianMatcher()  # 0.5 class, 1 feature, 1 L1 box, 0.5 (-GIoU); xywh boxes
    out = {
        "boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]),  # xyxy [0,0,2,2], cxcywh [1,1,2,2]
        "features": torch.tensor([[1.0, 0.0]]),
        "dists": torch.tensor([[0.0, 1.0]]),
    }
    tgt = {
        "boxes": torch.tensor([[1.0, 1.0, 2.0, 2.0]]),  # xyxy [1,1,3,3], cxcywh [2,2,2,2]
        "features": torch.tensor([[0.0, 5.0]]),
        "dists": torch.tensor([[0.0, 0.5]]),
    }
    total, class_cost, feature_cost = matcher.cost_matrix(out, tgt)
    # class 0, feature 1, L1 = 1 + 1 = 2, GIoU = 1/7 - 2/9
    assert class_cost.item() == pytest.approx(0.0, abs=1e-6)
    assert feature_cost.item() == pytest.approx(1.0, abs=1e-6)
    assert total.item() == pytest.approx(1.0 + 2.0 - 0.5 * (1 / 7 - 2 / 9), abs=1e-6)


def test_matcher_assigns_by_the_total_cost_and_reports_the_terms() -> None:
    matcher = HungarianMatcher(box_format="xyxy")
    boxes = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9]])
    feats = torch.eye(2)
    dists = torch.eye(2)
    flip = torch.tensor([1, 0])
    match = matcher(
        {"boxes": boxes, "features": feats, "dists": dists},
        {"boxes": boxes[flip], "features": feats[flip], "dists": dists[flip]},
    )
    assert match.rows.tolist() == [0, 1] and match.cols.tolist() == [1, 0]
    assert match.class_cost.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert match.feature_cost.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_matcher_is_weightless_and_validates() -> None:
    assert HungarianMatcher().state_dict() == {}
    with pytest.raises(ValueError, match="all cost weights"):
        HungarianMatcher(0, 0, 0, 0)
    with pytest.raises(ValueError, match="box_format"):
        HungarianMatcher(box_format="yxyx")  # type: ignore[arg-type]


def test_terms_prepared_once_give_the_costs_of_each_call_bitwise() -> None:
    """A tracker prepares a video's boxes once and picks rows: the costs of picked rows are
    exactly (not approximately) those of a call on the rows alone, so assignments and
    acceptance thresholds cannot change."""
    g = torch.Generator().manual_seed(4)
    matcher = HungarianMatcher(0.3, 0.7, 1.3, 0.9)
    xy = torch.rand(60, 2, generator=g)
    side = {
        "boxes": torch.cat([xy, torch.rand(60, 2, generator=g) * 0.5], 1),  # xywh
        "features": torch.randn(60, 2048, generator=g),
        "dists": torch.rand(60, 36, generator=g),
    }
    prepared = matcher.terms(side)
    for lo, hi, picked in ((0, 5, [7, 3, 59]), (20, 21, [0]), (30, 60, list(range(12)))):
        index = torch.tensor(picked)
        out = {k: v[lo:hi].clone() for k, v in side.items()}
        tgt = {k: v[index] for k, v in side.items()}
        want_total, want_dist, want_feat = matcher.cost_matrix(out, tgt)
        rows, cols = prepared.rows(slice(lo, hi)), prepared.rows(index)
        dist, feat = matcher.appearance_costs(rows, cols)
        total = matcher.total_cost(dist, feat, *matcher.box_costs(rows, cols))
        assert torch.equal(total, want_total)
        assert torch.equal(dist, want_dist) and torch.equal(feat, want_feat)
        match, want = (
            matcher.match_costs(dist, feat, *matcher.box_costs(rows, cols)),
            matcher(out, tgt),
        )
        for a, b in zip(match, want, strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="x2 >= x1"):
        matcher.terms({**side, "boxes": -side["boxes"]})

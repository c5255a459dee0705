"""nms against a sequential greedy loop written here, and on hand-computed cases."""

from __future__ import annotations

import sys

import pytest
import torch

from m3sgg.ops import box_iou_plus_one, nms


def _greedy(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        if all(
            float(box_iou_plus_one(boxes[k : k + 1], boxes[i : i + 1])) <= threshold for k in kept
        ):
            kept.append(i)
    return sorted(kept)


def test_hand_computed_pair() -> None:
    # boxes 0..9 and 5..14 (sizes 10 with the +1 rule): intersection 5 x 10 = 50,
    # union 100 + 100 - 50 = 150, IoU = 1/3.
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0]])
    assert box_iou_plus_one(boxes, boxes)[0, 1].item() == pytest.approx(1 / 3)
    scores = torch.tensor([0.4, 0.9])
    assert nms(boxes, scores, 0.3).tolist() == [1]  # 1/3 > 0.3: the lower-scoring box goes
    assert nms(boxes, scores, 1 / 3 + 1e-6).tolist() == [0, 1]


def test_chain_keeps_the_third_box() -> None:
    # a suppresses b, b would suppress c, a does not touch c: greedy keeps a and c.
    boxes = torch.tensor([[0.0, 0, 9, 9], [4.0, 0, 13, 9], [9.0, 0, 18, 9]])
    scores = torch.tensor([3.0, 2.0, 1.0])
    assert nms(boxes, scores, 0.2).tolist() == [0, 2]


def test_ties_visit_the_lower_index_first() -> None:
    boxes = torch.tensor([[0.0, 0, 9, 9], [0.0, 0, 9, 9]])
    assert nms(boxes, torch.tensor([0.5, 0.5]), 0.5).tolist() == [0]


def test_empty_and_bad_shapes() -> None:
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match="boxes"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


@pytest.mark.parametrize("seed", range(12))
def test_equals_the_sequential_loop(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 60
    xy = torch.rand(n, 2, generator=gen) * 80
    wh = torch.rand(n, 2, generator=gen) * 40
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.randint(0, 8, (n,), generator=gen).float()  # many ties
    for threshold in (0.1, 0.4, 0.7):
        assert nms(boxes, scores, threshold).tolist() == _greedy(boxes, scores, threshold)


@pytest.mark.parametrize("seed", range(3))
def test_many_blocks_and_max_kept_equal_the_sequential_loop(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    nms_module = sys.modules["m3sgg.ops.nms"]  # the package's ``nms`` is the function
    monkeypatch.setattr(nms_module, "BLOCK", 8)  # 70 boxes: nine blocks
    gen = torch.Generator().manual_seed(100 + seed)
    n = 70
    xy = torch.rand(n, 2, generator=gen) * 100
    wh = torch.rand(n, 2, generator=gen) * 40
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.randint(0, 20, (n,), generator=gen).float()
    for threshold in (0.2, 0.5):
        expected = _greedy(boxes, scores, threshold)
        assert nms(boxes, scores, threshold).tolist() == expected
        # max_kept: the first k kept in score order (ties: lower index first), ascending.
        by_score = sorted(expected, key=lambda i: (-float(scores[i]), i))
        for k in (1, 7, len(expected), len(expected) + 5):
            assert nms(boxes, scores, threshold, max_kept=k).tolist() == sorted(by_score[:k])
    assert nms(boxes, scores, 0.5, max_kept=0).tolist() == []

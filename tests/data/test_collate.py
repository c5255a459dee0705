"""collate / Batch / split_predictions: layouts, targets, sgdet assignment, round trips."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from m3sgg.data.action_genome import VideoSample
from m3sgg.data.collate import (
    BOX_PREDICTION_KEYS,
    PAIR_PREDICTION_KEYS,
    Batch,
    box_iou,
    collate,
    split_predictions,
)
from m3sgg.data.features import VideoFeatures, union_counts, union_pairs
from m3sgg.data.structures import VideoGT
from m3sgg.errors import DataError

# An object: (class, xyxy box, attention, spatial labels, contacting labels), group-local labels.
Obj = tuple[int, Sequence[float], int, Sequence[int], Sequence[int]]


def make_sample(
    index: int, persons: Sequence[Sequence[float]], objects: Sequence[Sequence[Obj]], dim: int = 3
) -> VideoSample:
    """A video whose frame ``f`` has person ``persons[f]`` and objects ``objects[f]``."""
    video_id = f"vid{index}.mp4"
    keys = tuple(f"{video_id}/{f:06d}.png" for f in range(len(persons)))
    obj_frame, obj_class, obj_boxes, rel_obj, rel_pred = [], [], [], [], []
    boxes, pairs, im_idx = [], [], []
    for f, frame in enumerate(objects):
        person_row = len(boxes)
        boxes.append([f, *persons[f]])
        for cls, box, att, spatial, contacting in frame:
            o = len(obj_class)
            obj_frame.append(f)
            obj_class.append(cls)
            obj_boxes.append(box)
            labels = [att] + [3 + s for s in spatial] + [9 + c for c in contacting]
            rel_obj += [o] * len(labels)
            rel_pred += labels
            pairs.append([person_row, len(boxes)])
            im_idx.append(f)
            boxes.append([f, *box])
    gt = VideoGT(
        video_id=video_id,
        frame_keys=keys,
        person_boxes=np.array(persons, dtype=np.float32),
        obj_frame=np.array(obj_frame, dtype=np.int64),
        obj_class=np.array(obj_class, dtype=np.int64),
        obj_boxes=np.array(obj_boxes, dtype=np.float64).reshape(-1, 4),
        rel_obj=np.array(rel_obj, dtype=np.int64),
        rel_pred=np.array(rel_pred, dtype=np.int64),
    )
    n = len(boxes)
    features = VideoFeatures(
        frame_keys=keys,
        boxes=np.array(boxes, dtype=np.float32),
        box_features=(100 * index + np.arange(n * dim, dtype=np.float32)).reshape(n, dim),
        pair_idx=np.array(pairs, dtype=np.int64).reshape(-1, 2),
        im_idx=np.array(im_idx, dtype=np.int64),
        **_union_table(index, np.bincount(np.array(boxes)[:, 0].astype(int))),
    )
    return VideoSample(index, video_id, gt, features, None)


def _union_table(index: int, counts: np.ndarray) -> dict:
    """Union maps ``[U, 1, 1, 1]`` holding ``-(100 * index + 10 * i + j)`` for boxes (i, j)."""
    _, first, second = union_pairs(counts, diagonal=False)
    maps = -(100 * index + 10 * first + second).astype(np.float32)
    return {
        "union_maps": maps.reshape(-1, 1, 1, 1),
        "union_offsets": np.concatenate([[0], np.cumsum(union_counts(counts, False))]),
        "union_diagonal": False,
    }


P0 = [0, 0, 50, 100]
BOX_A = [10, 10, 30, 30]
BOX_B = [40, 40, 90, 90]
BOX_C = [0, 50, 20, 70]


@pytest.fixture
def two_videos() -> list[VideoSample]:
    first = make_sample(
        0,
        [P0, P0],
        [
            [(5, BOX_A, 0, [1], [2, 4]), (7, BOX_B, 2, [], [0])],
            [(5, BOX_A, 1, [0, 5], [])],
        ],
    )
    second = make_sample(
        1,
        [P0, P0, P0],
        [[(9, BOX_C, 1, [3], [16])], [(9, BOX_C, 0, [3], [])], [(3, BOX_B, 2, [2], [1])]],
    )
    return [first, second]


def test_gt_layout(two_videos: list[VideoSample]) -> None:
    batch = collate(two_videos)
    assert batch.section == "gt"
    assert batch.video_ids == ("vid0.mp4", "vid1.mp4")
    assert batch.sample_indices == (0, 1)
    assert batch.gts == (two_videos[0].gt, two_videos[1].gt)
    assert batch.frame_offsets == (0, 2, 5)
    assert batch.box_offsets == (0, 5, 11)
    assert batch.pair_offsets == (0, 3, 6)
    assert (batch.num_videos, batch.num_frames, batch.num_boxes, batch.num_pairs) == (2, 5, 11, 6)
    assert batch.boxes[:, 0].tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert batch.box_video.tolist() == [0] * 5 + [1] * 6
    assert batch.labels.tolist() == [1, 5, 7, 1, 5, 1, 9, 1, 9, 1, 3]
    assert torch.equal(batch.object_targets, batch.labels)
    assert batch.scores.tolist() == [1.0] * 11
    assert batch.pair_idx.tolist() == [[0, 1], [0, 2], [3, 4], [5, 6], [7, 8], [9, 10]]
    assert batch.im_idx.tolist() == [0, 0, 1, 2, 3, 4]
    assert batch.pair_video.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch.frame_video.tolist() == [0, 0, 1, 1, 1]
    assert batch.attention.tolist() == [0, 2, 1, 1, 0, 2]
    spatial = np.zeros((6, 6))
    for row, labels in enumerate([[1], [], [0, 5], [3], [3], [2]]):
        spatial[row, labels] = 1
    assert np.array_equal(batch.spatial.numpy(), spatial)
    contacting = np.zeros((6, 17))
    for row, labels in enumerate([[2, 4], [0], [], [16], [], [1]]):
        contacting[row, labels] = 1
    assert np.array_equal(batch.contacting.numpy(), contacting)
    assert batch.relation_mask.all()
    assert batch.class_dists is None
    np.testing.assert_array_equal(
        batch.box_features.numpy(),
        np.concatenate([s.features.box_features for s in two_videos]),
    )
    np.testing.assert_array_equal(
        batch.union_maps.numpy(),
        np.concatenate([s.features.union_maps for s in two_videos]),
    )
    # Frames hold 3, 2 | 2, 2, 2 boxes: union rows (0,1) (0,2) (1,2) | (0,1) | (0,1) ...
    assert batch.frame_box_offsets.tolist() == [0, 3, 5, 7, 9, 11]
    assert batch.frame_union_offsets.tolist() == [0, 3, 4, 5, 6, 7]
    assert batch.union_rows(batch.pair_idx).tolist() == [0, 1, 3, 4, 5, 6]
    assert batch.union_rows(torch.tensor([[1, 2], [2, 1], [2, 0]])).tolist() == [2, 2, 1]
    assert batch.union_maps[2].item() == -12.0  # video 0, boxes (1, 2) of frame 0
    assert batch.boxes.dtype == torch.float32 and batch.pair_idx.dtype == torch.int64
    assert batch.spatial.dtype == torch.float32 and batch.relation_mask.dtype == torch.bool


def test_gt_targets_agree_with_sttran_structure() -> None:
    """Targets per pair equal the object's labels as VideoGT.to_sttran lists them."""
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(6):
        frame = []
        for _ in range(int(rng.integers(1, 4))):
            spatial = sorted(rng.choice(6, size=int(rng.integers(0, 3)), replace=False).tolist())
            contacting = sorted(
                rng.choice(17, size=int(rng.integers(0, 4)), replace=False).tolist()
            )
            frame.append(
                (int(rng.integers(2, 37)), BOX_A, int(rng.integers(0, 3)), spatial, contacting)
            )
        frames.append(frame)
    sample = make_sample(0, [P0] * 6, frames)
    batch = collate([sample])
    expected = [obj for frame in sample.gt.to_sttran() for obj in frame[1:]]
    assert len(expected) == batch.num_pairs
    for row, obj in enumerate(expected):
        assert batch.labels[batch.pair_idx[row, 1]].item() == obj["class"]
        assert [batch.attention[row].item()] == obj["attention_relationship"]
        assert torch.nonzero(batch.spatial[row]).flatten().tolist() == obj["spatial_relationship"]
        assert (
            torch.nonzero(batch.contacting[row]).flatten().tolist()
            == obj["contacting_relationship"]
        )


def _with_det(sample: VideoSample, boxes: list[list[float]], pairs: list[list[int]]) -> VideoSample:
    n = len(boxes)
    dists = np.full((n, 36), 0.01, dtype=np.float32)
    dists[np.arange(n), np.array([1, 5, 7, 9, 1][:n]) - 1] = 0.4
    counts = np.bincount(np.array(boxes, dtype=np.int64)[:, 0], minlength=sample.gt.num_frames)
    det = VideoFeatures(
        frame_keys=sample.gt.frame_keys,
        boxes=np.array(boxes, dtype=np.float32),
        box_features=np.zeros((n, 3), dtype=np.float32),
        pair_idx=np.array(pairs, dtype=np.int64),
        im_idx=np.array(boxes, dtype=np.int64)[np.array(pairs)[:, 0], 0],
        union_maps=np.zeros((int(union_counts(counts, True).sum()), 1, 1, 1), np.float32),
        union_offsets=np.concatenate([[0], np.cumsum(union_counts(counts, True))]),
        union_diagonal=True,
        scores=np.linspace(0.9, 0.5, n).astype(np.float32),
        class_dists=dists,
    )
    return dataclasses.replace(sample, det=det)


def test_det_assignment_by_iou(two_videos: list[VideoSample]) -> None:
    sample = _with_det(
        two_videos[0],
        [
            [0, *P0],  # the person of frame 0
            [0, 11, 11, 31, 31],  # object A, IoU 0.83 (+1 convention)
            [0, 40, 40, 60, 60],  # overlaps B with IoU 0.17: no match
            [1, 40, 40, 90, 90],  # B's box, but B is in frame 0: frame 1 has only A
            [1, 10, 10, 30, 30],  # object A of frame 1, exactly
        ],
        [[0, 1], [0, 2], [0, 3], [0, 4], [0, 0]],
    )
    batch = collate([sample], section="det")
    assert batch.section == "det"
    assert batch.labels.tolist() == [1, 5, 7, 9, 1]
    np.testing.assert_allclose(batch.scores.numpy(), np.linspace(0.9, 0.5, 5), rtol=1e-6)
    assert batch.class_dists is not None and batch.class_dists.shape == (5, 36)
    assert batch.object_targets.tolist() == [1, 5, -1, -1, 5]
    # Pair 3 is (frame-0 person, frame-1 box): its object matches frame 1's A; pair 4's object is
    # the person itself (assigned to a GT person, not an object): no targets.
    assert batch.relation_mask.tolist() == [True, False, False, True, False]
    assert batch.attention.tolist() == [0, -1, -1, 1, -1]
    assert torch.nonzero(batch.spatial).tolist() == [[0, 1], [3, 0], [3, 5]]
    assert torch.nonzero(batch.contacting).tolist() == [[0, 2], [0, 4]]


def test_box_iou_plus_one_convention() -> None:
    iou = box_iou(
        np.array([[0, 0, 9, 9]]), np.array([[0, 0, 9, 9], [5, 0, 14, 9], [20, 20, 30, 30]])
    )
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])
    assert box_iou(np.zeros((0, 4)), np.zeros((2, 4))).shape == (0, 2)


def test_split_predictions_round_trip(two_videos: list[VideoSample]) -> None:
    third = make_sample(2, [P0], [[(4, BOX_C, 1, [], [3]), (6, BOX_A, 0, [2], [])]])
    samples = [*two_videos, third]
    batch = collate(samples)
    predictions = {
        "boxes": batch.boxes,
        "labels": batch.labels,
        "scores": batch.scores,
        "pred_labels": batch.labels + 100,
        "pred_scores": batch.scores / 2,
        "im_idx": batch.im_idx,
        "pair_idx": batch.pair_idx,
        "attention_distribution": torch.randn(batch.num_pairs, 3, requires_grad=True),
        "attention_probabilities": torch.rand(batch.num_pairs, 3),
        "spatial_distribution": batch.spatial,
        "contacting_distribution": batch.contacting,
        "unlisted": torch.zeros(batch.num_pairs),
    }
    split = split_predictions(batch, predictions)
    assert len(split) == 3
    for (gt, pred), sample, b0, p0 in zip(
        split, samples, batch.box_offsets[:-1], batch.pair_offsets[:-1], strict=True
    ):
        assert gt is sample.gt
        assert set(pred) == set(BOX_PREDICTION_KEYS) | set(PAIR_PREDICTION_KEYS)
        assert not any(t.requires_grad for t in pred.values())
        np.testing.assert_array_equal(pred["boxes"].numpy(), sample.features.boxes)
        np.testing.assert_array_equal(pred["pair_idx"].numpy(), sample.features.pair_idx)
        np.testing.assert_array_equal(pred["im_idx"].numpy(), sample.features.im_idx)
        n, p = sample.features.num_boxes, sample.features.num_pairs
        assert torch.equal(pred["pred_labels"], batch.labels[b0 : b0 + n] + 100)
        assert torch.equal(pred["spatial_distribution"], batch.spatial[p0 : p0 + p])
        assert torch.equal(
            pred["attention_distribution"],
            predictions["attention_distribution"].detach()[p0 : p0 + p],
        )
        # The same video collated alone gives the same per-video dict.
        alone = collate([sample])
        ((_, single),) = split_predictions(
            alone, {"boxes": alone.boxes, "pair_idx": alone.pair_idx, "im_idx": alone.im_idx}
        )
        for key in ("boxes", "pair_idx", "im_idx"):
            assert torch.equal(single[key], pred[key])
    assert torch.equal(predictions["boxes"], batch.boxes)  # inputs are not modified


def test_split_predictions_checks_rows(two_videos: list[VideoSample]) -> None:
    batch = collate(two_videos)
    with pytest.raises(ValueError, match="'attention_distribution' has 2 rows"):
        split_predictions(batch, {"attention_distribution": torch.zeros(2, 3)})


def test_video_without_pairs(two_videos: list[VideoSample]) -> None:
    sample = _with_det(two_videos[0], [[0, *P0]], [[0, 0]])
    empty = dataclasses.replace(
        sample.det,
        pair_idx=np.zeros((0, 2), np.int64),
        im_idx=np.zeros(0, np.int64),
    )
    other = _with_det(two_videos[1], [[0, *P0], [0, *BOX_C]], [[0, 1]])
    batch = collate([dataclasses.replace(sample, det=empty), other], section="det")
    assert batch.pair_offsets == (0, 0, 1)
    assert batch.pair_idx.tolist() == [[1, 2]]
    assert batch.im_idx.tolist() == [2]
    split = split_predictions(batch, {"pair_idx": batch.pair_idx, "boxes": batch.boxes})
    assert split[0][1]["pair_idx"].shape == (0, 2)
    assert split[1][1]["pair_idx"].tolist() == [[0, 1]]


def test_collate_errors(two_videos: list[VideoSample]) -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        collate([])
    with pytest.raises(ValueError, match="section"):
        collate(two_videos, section="rpn")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="no 'det' feature section"):
        collate(two_videos, section="det")
    bare = dataclasses.replace(two_videos[0], features=None)
    with pytest.raises(DataError, match="no 'gt' feature section"):
        collate([bare])
    features = two_videos[0].features
    shifted = dataclasses.replace(features, frame_keys=features.frame_keys[::-1])
    with pytest.raises(DataError, match="frame_keys"):
        collate([dataclasses.replace(two_videos[0], features=shifted)])
    dropped = dataclasses.replace(features, boxes=features.boxes[:-1])
    with pytest.raises(DataError, match="person then each visible object"):
        collate([dataclasses.replace(two_videos[0], features=dropped)])
    reversed_pairs = dataclasses.replace(features, pair_idx=features.pair_idx[:, ::-1].copy())
    with pytest.raises(DataError, match="pairs must be"):
        collate([dataclasses.replace(two_videos[0], features=reversed_pairs)])


def test_to_and_dataloader(two_videos: list[VideoSample]) -> None:
    batch = collate(two_videos)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved.gts is batch.gts
    assert torch.equal(moved.pair_idx, batch.pair_idx)
    assert moved.device == torch.device("cpu")
    loader = DataLoader(two_videos, batch_size=2, collate_fn=collate)
    (loaded,) = list(loader)
    assert isinstance(loaded, Batch) and torch.equal(loaded.boxes, batch.boxes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
def test_pin_memory(two_videos: list[VideoSample]) -> None:
    loader = DataLoader(two_videos, batch_size=2, collate_fn=collate, pin_memory=True)
    (batch,) = list(loader)
    assert isinstance(batch, Batch)
    assert batch.boxes.is_pinned() and batch.relation_mask.is_pinned()
    on_device = batch.to("cuda")
    assert on_device.pair_idx.is_cuda and torch.equal(on_device.pair_idx.cpu(), batch.pair_idx)


def test_dataloader_pinning_hook_uses_batch_pin_memory(
    two_videos: list[VideoSample], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DataLoader(pin_memory=True) pins a Batch through Batch.pin_memory (checked without CUDA by
    standing in for Tensor.pin_memory)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned: list[tuple[int, ...]] = []

    def fake_pin(self: torch.Tensor, *args: object) -> torch.Tensor:
        pinned.append(tuple(self.shape))
        return self.clone()

    batch = collate(two_videos)
    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    result = pin_memory(batch)
    assert isinstance(result, Batch) and result is not batch
    assert torch.equal(result.pair_idx, batch.pair_idx) and result.gts is batch.gts
    assert len(pinned) == 17  # every tensor field but class_dists (None in these samples)

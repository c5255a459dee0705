"""extract_video: the per-frame records of each store section, their shapes and dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m3sgg.detection import modes
from m3sgg.detection.extract import extract_video, union_table_pairs
from m3sgg.detection.faster_rcnn import ActionGenomeDetector


def test_union_table_pairs() -> None:
    assert union_table_pairs(3, diagonal=False).tolist() == [[0, 1], [0, 2], [1, 2]]
    assert union_table_pairs(2, diagonal=True).tolist() == [[0, 0], [0, 1], [1, 1]]


def _video(frames: int = 2) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    gen = np.random.default_rng(0)
    images = [gen.integers(0, 256, (12, 20, 3), dtype=np.uint8) for _ in range(frames)]
    boxes = [
        np.array([[1.0, 1, 8, 10], [5, 2, 15, 9], [10, 4, 19, 11]], dtype=np.float32)[: 2 + f % 2]
        for f in range(frames)
    ]
    labels = [np.array([1, 4, 9])[: 2 + f % 2] for f in range(frames)]
    return images, boxes, labels


@pytest.fixture
def confident(tiny_detector: ActionGenomeDetector) -> ActionGenomeDetector:
    with torch.no_grad():
        tiny_detector.cls_score.weight.mul_(4)  # probabilities over 0.1: sgdet keeps boxes
        tiny_detector.bbox_pred.weight.mul_(0.05)  # moderate deltas, as a trained detector's
        tiny_detector.rpn.bbox_pred.weight.mul_(0.05)
    return tiny_detector


def test_sections_shapes_and_dtypes(confident: ActionGenomeDetector) -> None:
    images, boxes, labels = _video()
    records = extract_video(
        confident, images, boxes, labels, sections=("gt", "det", "det_train"), batch_frames=2
    )
    assert len(records) == 2
    d, c = confident.config.resnet.head_channels, confident.config.resnet.base_channels
    for f, record in enumerate(records):
        gt = record["gt"]
        k = len(boxes[f])
        np.testing.assert_array_equal(gt["boxes"], boxes[f])
        assert gt["box_features"].shape == (k, d) and gt["box_features"].dtype == np.float32
        assert gt["class_dists"].shape == (k, 36) and gt["class_dists"].dtype == np.float32
        assert gt["pairs"].tolist() == [[0, j] for j in range(1, k)]
        assert gt["union_maps"].shape == (k * (k - 1) // 2, c, 7, 7)
        assert gt["union_maps"].dtype == np.float16
        det = record["det"]
        n = det["boxes"].shape[0]
        assert det["box_features"].shape == (n, d) and det["class_dists"].shape == (n, 36)
        assert det["scores"].shape == (n,) and det["scores"].dtype == np.float32
        assert det["union_maps"].shape == (n * (n + 1) // 2, c, 7, 7)  # with the diagonal
        assert det["pairs"].dtype == np.int64 and det["pairs"].shape[1] == 2
        train = record["det_train"]
        m = train["boxes"].shape[0]
        assert m >= n  # detections, then supplied ground-truth boxes
        assert train["labels"].dtype == np.int64 and train["labels"].shape == (m,)
        assert train["union_maps"].shape == (m * (m - 1) // 2, c, 7, 7)
        p = train["pairs"].shape[0]
        assert train["pair_targets"].shape == (p,) and p == k - 1  # every object is paired
        assert sorted(train["pair_targets"].tolist()) == list(range(k - 1))


def test_records_equal_the_mode_functions_and_do_not_depend_on_batching(
    confident: ActionGenomeDetector,
) -> None:
    images, boxes, labels = _video(3)
    one = extract_video(confident, images, boxes, labels, ("gt", "det"), batch_frames=1)
    four = extract_video(confident, images, boxes, labels, ("gt", "det"), batch_frames=2)
    for a, b in zip(one, four, strict=True):
        for section in ("gt", "det"):
            for name, value in a[section].items():
                np.testing.assert_allclose(b[section][name], value, rtol=1e-3, atol=1e-5)
    # Frame 1 by hand: its base map, GT features and the union map of boxes 0 and 1.
    from m3sgg.detection.image import prepare_frames

    x, info = prepare_frames(images)
    with torch.no_grad():
        base = confident.base(x[1:2])
        frame = torch.zeros(3, dtype=torch.long)
        gt = modes.gt_box_outputs(confident, base, torch.from_numpy(boxes[1]), frame, info[0, 2])
        maps = modes.union_maps(
            confident, base, torch.from_numpy(boxes[1]), frame, torch.tensor([[0, 1]]), info[0, 2]
        )
    np.testing.assert_allclose(one[1]["gt"]["box_features"], gt.features.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        one[1]["gt"]["union_maps"][0].astype(np.float32), maps[0].numpy(), rtol=1e-3, atol=1e-3
    )  # stored as float16: 11 significant bits
    assert "class_dists" in one[0]["gt"]
    bare = extract_video(confident, images[:1], boxes[:1], labels[:1], gt_class_dists=False)
    assert "class_dists" not in bare[0]["gt"] and set(bare[0]) == {"gt"}


def test_unknown_section_is_refused(tiny_detector: ActionGenomeDetector) -> None:
    with pytest.raises(ValueError, match="unknown sections"):
        extract_video(tiny_detector, [], [], [], sections=("predcls",))

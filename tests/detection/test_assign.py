"""sgdet training inputs: matching detections to the ground truth and supplying missed boxes."""

from __future__ import annotations

import numpy as np
import torch

from m3sgg.detection.assign import assign_frame, box_overlaps, training_frame
from m3sgg.detection.faster_rcnn import ActionGenomeDetector
from m3sgg.detection.modes import FrameDetections


def test_box_overlaps_plus_one_sizes() -> None:
    # 10x10 boxes (0..9) shifted by 1: intersection 9 x 9 = 81, union 100 + 100 - 81 = 119.
    iou = box_overlaps(np.array([[0.0, 0, 9, 9]]), np.array([[1.0, 1, 10, 10], [50.0, 50, 60, 60]]))
    np.testing.assert_allclose(iou, [[81 / 119, 0.0]])


def test_assign_found_taken_and_supplied() -> None:
    dets = np.array([[0, 0, 9, 9], [20, 20, 29, 29], [21, 21, 30, 30], [100, 100, 110, 110]], float)
    gt = np.array([[0, 0, 9, 9], [20, 20, 29, 29], [20, 20, 29, 29], [200, 200, 210, 210]], float)
    labels = np.array([1, 4, 9, 7])
    out = assign_frame(dets, gt, labels)
    # Person -> det 0; object 1 -> det 1 (IoU 1); object 2's best (det 1) is taken: next best
    # det 2 (IoU 81 / 119); object 3 overlaps nothing: supplied.
    assert out.found == [(0, 0), (1, 1), (2, 2)]
    assert out.supplied == [3]
    # Det 2 first takes the class of its best gt (object 1, the first of the tie), then the
    # class of the object it was found for (9); det 3 matches nothing.
    assert out.assigned_labels.tolist() == [1, 4, 9, 0]


def test_assign_reuses_a_taken_detection_when_no_other_exists() -> None:
    dets = np.array([[0.0, 0, 9, 9]])
    gt = np.array([[0.0, 0, 9, 9], [0.0, 0, 9, 9]])
    out = assign_frame(dets, gt, np.array([1, 5]))
    assert out.found == [(0, 0), (1, 0)] and out.supplied == []
    assert out.assigned_labels.tolist() == [5]


def test_no_detections_supplies_everything() -> None:
    out = assign_frame(
        np.zeros((0, 4)), np.array([[0.0, 0, 9, 9], [5.0, 5, 8, 8]]), np.array([1, 3])
    )
    assert out.found == [] and out.supplied == [0, 1] and out.assigned_labels.shape == (0,)


def _detections(boxes: torch.Tensor, features: torch.Tensor) -> FrameDetections:
    k = boxes.shape[0]
    return FrameDetections(
        boxes=boxes,
        nms_labels=torch.full((k,), 2),
        nms_scores=torch.linspace(0.9, 0.5, k),
        features=features,
        class_dists=torch.full((k, 36), 1 / 36),
        labels=torch.full((k,), 2),
        scores=torch.full((k,), 1 / 36),
    )


def test_training_frame_supplies_boxes_and_keeps_the_subject_quirk(
    tiny_detector: ActionGenomeDetector,
) -> None:
    gen = torch.Generator().manual_seed(4)
    dim = tiny_detector.config.resnet.head_channels
    base = torch.randn(1, tiny_detector.config.resnet.base_channels, 5, 7, generator=gen)
    dets = torch.tensor([[10.0, 10, 19, 19], [40.0, 0, 49, 9], [60.0, 30, 69, 39]])
    det_features = torch.randn(3, dim, generator=gen)
    # Ground truth: the person matches nothing (supplied), object 1 matches det 0, object 2
    # matches nothing (supplied).
    gt = np.array([[1.0, 1, 5, 5], [10.0, 10, 19, 19], [30.0, 50, 35, 55]])
    scale = torch.tensor(1.5)
    with torch.no_grad():
        out = training_frame(
            tiny_detector, base, scale, _detections(dets, det_features), gt, np.array([1, 4, 9])
        )
        supplied = torch.tensor([[0.0, 1.5, 1.5, 7.5, 7.5], [0.0, 45, 75, 52.5, 82.5]])
        expected_features = tiny_detector.box_features(base, supplied)
    # Boxes: the 3 detections, then the supplied person and object 2 (x 1.5 / 1.5).
    torch.testing.assert_close(out.boxes, torch.cat([dets, torch.tensor(gt[[0, 2]]).float()]))
    assert out.labels.tolist() == [4, 0, 0, 1, 9]
    torch.testing.assert_close(out.scores, torch.tensor([0.9, 0.7, 0.5, 1.0, 1.0]))
    torch.testing.assert_close(out.features[:3], det_features)
    torch.testing.assert_close(out.features[3:], expected_features)
    assert out.class_dists.shape == (5, 36)
    # Entries: object 1 (det 0), then the supplied person and object 2 (boxes 3 and 4). The
    # person is entry 1, so the subject is box 1 (a detection), as in the original.
    assert out.pairs.tolist() == [[1, 0], [1, 4]]
    assert out.pair_targets.tolist() == [1, 2]

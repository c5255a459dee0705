"""Per-mode outputs of the detector: GT box features, union maps, sgdet's per-class rules."""

from __future__ import annotations

import torch

from m3sgg.detection import modes
from m3sgg.detection.faster_rcnn import ActionGenomeDetector
from m3sgg.ops.roi_align import roi_align


def test_all_pairs() -> None:
    assert modes.all_pairs(3).tolist() == [[0, 1], [0, 2], [1, 2]]
    assert modes.all_pairs(1).shape == (0, 2)


def test_gt_features_and_union_maps_pool_the_scaled_boxes(
    tiny_detector: ActionGenomeDetector,
) -> None:
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(2, tiny_detector.config.resnet.base_channels, 6, 9, generator=gen)
    boxes = torch.tensor([[2.0, 4.0, 30.0, 20.0], [10.0, 1.0, 40.0, 12.0], [0.0, 0.0, 5.0, 5.0]])
    frame = torch.tensor([0, 0, 1])
    scale = torch.tensor(2.5)
    with torch.no_grad():
        out = modes.gt_box_outputs(tiny_detector, base, boxes, frame, scale, class_dists=True)
        # By hand: boxes x 2.5 in resized pixels, 7x7 adaptive RoIAlign at 1/16, then the head.
        rois = torch.tensor(
            [[0.0, 5, 10, 75, 50], [0.0, 25, 2.5, 100, 30], [1.0, 0, 0, 12.5, 12.5]]
        )
        pooled = roi_align(base, rois, 7, spatial_scale=1 / 16, sampling_ratio=0, aligned=False)
        expected = tiny_detector.head(pooled)
        torch.testing.assert_close(out.features, expected)
        assert out.class_dists is not None and out.class_dists.shape == (3, 36)
        torch.testing.assert_close(out.class_dists.sum(1), torch.ones(3))
        # Union of boxes 0 and 1: (2, 1, 40, 20) -> x 2.5 = (5, 2.5, 100, 50), on frame 0.
        maps = modes.union_maps(tiny_detector, base, boxes, frame, torch.tensor([[0, 1]]), scale)
        union = torch.tensor([[0.0, 5, 2.5, 100, 50]])
        hand = roi_align(base, union, 7, spatial_scale=1 / 16, sampling_ratio=0, aligned=False)
        torch.testing.assert_close(maps, hand)
    assert modes.gt_box_outputs(tiny_detector, base, boxes, frame, scale).class_dists is None


def test_sgdet_rules_by_hand(tiny_detector: ActionGenomeDetector) -> None:
    probs = torch.zeros(4, 37)
    boxes = torch.zeros(4, 37, 4)
    # Two persons far apart: NMS keeps both, then only the best person survives (roi 0).
    probs[0, 1], boxes[0, 1] = 0.6, torch.tensor([0.0, 0, 10, 10])
    probs[1, 1], boxes[1, 1] = 0.5, torch.tensor([50.0, 50, 60, 60])
    # Class 5: rois 3 and 2 overlap (IoU 100 / 142 = 0.70 > 0.4 with +1 sizes): 2 is suppressed;
    # roi 1's class-5 box is far away and stays. Order: descending score within the class.
    probs[2, 5], boxes[2, 5] = 0.3, torch.tensor([0.0, 0, 10, 10])
    probs[3, 5], boxes[3, 5] = 0.35, torch.tensor([1.0, 1, 11, 11])
    probs[1, 5], boxes[1, 5] = 0.2, torch.tensor([100.0, 100, 110, 110])
    # Class 7 at exactly 0.1 and below it: no candidate (the rule is > 0.1).
    probs[3, 7], probs[2, 7] = 0.1, 0.09
    # A high background score does not make a candidate.
    probs[2, 0] = 0.9
    features = torch.randn(4, tiny_detector.config.resnet.head_channels)
    with torch.no_grad():
        det = modes._frame_detections(
            tiny_detector, probs, boxes.reshape(4, -1), features, modes.SgdetRules()
        )
        dists = tiny_detector.class_distributions(features[[0, 3, 1]])
    assert det.nms_labels.tolist() == [1, 5, 5]
    torch.testing.assert_close(det.nms_scores, torch.tensor([0.6, 0.35, 0.2]))
    torch.testing.assert_close(
        det.boxes, torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [100, 100, 110, 110]])
    )
    torch.testing.assert_close(det.features, features[[0, 3, 1]])
    torch.testing.assert_close(det.class_dists, dists)
    # Labels and scores re-taken from the arg-max of the distribution (not the NMS class).
    assert det.labels.tolist() == (dists.argmax(1) + 1).tolist()
    torch.testing.assert_close(det.scores, dists.max(1).values)


def test_no_candidates_gives_empty_detections(tiny_detector: ActionGenomeDetector) -> None:
    probs = torch.full((3, 37), 1 / 37)
    with torch.no_grad():
        det = modes._frame_detections(
            tiny_detector,
            probs,
            torch.zeros(3, 148),
            torch.zeros(3, tiny_detector.config.resnet.head_channels),
            modes.SgdetRules(),
        )
    assert det.boxes.shape == (0, 4) and det.class_dists.shape == (0, 36)
    assert det.labels.shape == (0,)


def test_only_every_tenth_frame_is_clipped(tiny_detector: ActionGenomeDetector) -> None:
    with torch.no_grad():
        tiny_detector.bbox_pred.weight.mul_(20)  # wide boxes that leave the image
        tiny_detector.cls_score.weight.mul_(4)  # confident classes: candidates over 0.1
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(1, 3, 64, 96, generator=gen) * 50
    im_info = torch.tensor([[64.0, 96.0, 2.0]])
    with torch.no_grad():
        clipped, _ = modes.detect(tiny_detector, images, im_info, first_frame=20)
        free, _ = modes.detect(tiny_detector, images, im_info, first_frame=21)
    assert clipped[0].boxes.shape[0] > 0 and free[0].boxes.shape[0] > 0
    # Clipped frames stay inside the image ((W - 1, H - 1) / scale in frame pixels) ...
    assert clipped[0].boxes[:, 0::2].max() <= 95 / 2 and clipped[0].boxes[:, 1::2].max() <= 63 / 2
    # ... the others do not (only clamped at 0, as the original).
    assert free[0].boxes.min() >= 0
    assert free[0].boxes[:, 0::2].max() > 95 / 2 or free[0].boxes[:, 1::2].max() > 63 / 2

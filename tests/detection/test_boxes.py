"""Anchors, delta decoding, clipping and union boxes on hand-computed cases."""

from __future__ import annotations

import math

import torch

from m3sgg.detection.boxes import (
    base_anchors,
    clip_boxes,
    decode_boxes,
    shifted_anchors,
    union_boxes,
)


def test_base_anchors_of_faster_rcnn_scales() -> None:
    # The nine anchors of py-faster-rcnn for scales (8, 16, 32), ratios (0.5, 1, 2): the MATLAB
    # table its generate_anchors quotes, shifted by -1 pixel (MATLAB's 1-based coordinates).
    # First row by hand: ratio 0.5 gives 23 x 12 (round(sqrt(512)), round(11.5) half to even),
    # scale 8 gives 184 x 96 around 7.5: (7.5 - 91.5, 7.5 - 47.5, 7.5 + 91.5, 7.5 + 47.5).
    matlab = [
        [-83, -39, 100, 56],
        [-175, -87, 192, 104],
        [-359, -183, 376, 200],
        [-55, -55, 72, 72],
        [-119, -119, 136, 136],
        [-247, -247, 264, 264],
        [-35, -79, 52, 96],
        [-79, -167, 96, 184],
        [-167, -343, 184, 360],
    ]
    expected = torch.tensor(matlab).float() - 1
    torch.testing.assert_close(base_anchors(scales=(8, 16, 32)), expected)


def test_default_anchors_of_the_ag_detector() -> None:
    anchors = base_anchors()  # scales (4, 8, 16, 32), ratios (0.5, 1, 2): 12 anchors
    assert anchors.shape == (12, 4)
    # Ratio 0.5: w = round(sqrt(256 / 0.5)) = 23, h = round(11.5) = 12 (half to even);
    # scale 4 -> 92 x 48 around the centre 7.5: (7.5 - 45.5, 7.5 - 23.5, 7.5 + 45.5, 7.5 + 23.5).
    torch.testing.assert_close(anchors[0], torch.tensor([-38.0, -16.0, 53.0, 31.0]))
    # Ratio 1, scale 4: 64 x 64 -> (7.5 - 31.5, ..., 7.5 + 31.5).
    torch.testing.assert_close(anchors[4], torch.tensor([-24.0, -24.0, 39.0, 39.0]))


def test_shifted_anchors_are_cell_major_x_inner() -> None:
    anchors = torch.tensor([[0.0, 0, 3, 3], [1.0, 1, 2, 2]])
    out = shifted_anchors(anchors, height=2, width=3, stride=16)
    assert out.shape == (2 * 3 * 2, 4)
    torch.testing.assert_close(out[2], torch.tensor([16.0, 0, 19, 3]))  # cell (y=0, x=1)
    torch.testing.assert_close(out[7], torch.tensor([1.0, 17, 2, 18]))  # cell (1, 0), anchor 1
    torch.testing.assert_close(out[11], torch.tensor([33.0, 17, 34, 18]))  # cell (1, 2), anchor 1


def test_decode_boxes_by_hand() -> None:
    box = torch.tensor([[0.0, 0.0, 9.0, 19.0]])  # w = 10, h = 20, centre (5, 10)
    # Zero delta: centre +/- size/2 = (0, 0, 10, 20) (the +1 convention's offset).
    torch.testing.assert_close(
        decode_boxes(box, torch.zeros(1, 4)), torch.tensor([[0.0, 0, 10, 20]])
    )
    # dx 0.1 -> centre x 6; dy -0.2 -> centre y 6; dw log 2 -> w 20; dh 0 -> h 20.
    delta = torch.tensor([[0.1, -0.2, math.log(2.0), 0.0]])
    torch.testing.assert_close(decode_boxes(box, delta), torch.tensor([[-4.0, -4.0, 16.0, 16.0]]))
    # Class-specific: two quadruples per box, batched [B, R, 4k].
    both = decode_boxes(box[None], torch.cat([torch.zeros(1, 4), delta], 1)[None])
    torch.testing.assert_close(both, torch.tensor([[[0.0, 0, 10, 20, -4, -4, 16, 16]]]))


def test_clip_boxes_per_image() -> None:
    boxes = torch.tensor(
        [[[-5.0, 3, 120, 70, 10, -1, 50, 200]], [[-5.0, 3, 120, 70, 10, -1, 50, 200]]]
    )
    heights, widths = torch.tensor([[60.0], [100.0]]), torch.tensor([[100.0], [30.0]])
    out = clip_boxes(boxes, heights, widths)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 3, 99, 59, 10, 0, 50, 59]))
    torch.testing.assert_close(out[1, 0], torch.tensor([0.0, 3, 29, 70, 10, 0, 29, 99]))


def test_union_boxes() -> None:
    boxes = torch.tensor([[0.0, 5, 10, 20], [4.0, 1, 30, 8], [2.0, 2, 3, 3]])
    pairs = torch.tensor([[0, 1], [2, 0]])
    expected = torch.tensor([[0.0, 1, 30, 20], [0.0, 2, 10, 20]])
    torch.testing.assert_close(union_boxes(boxes, pairs), expected)

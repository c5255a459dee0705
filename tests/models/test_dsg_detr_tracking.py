"""DSG-DETR object sequences: the sgcls tracker on hand-built videos, grouping, positions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from m3sgg.models.dsg_detr.tracking import (
    frame_number,
    group_by_key,
    sequence_positions,
    track_batch,
    track_video,
)
from m3sgg.models.matching import HungarianMatcher

C = 8  # classes
FEAT = {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": [0.0, 0.0, 1.0]}


def video(frames: list[list[tuple[list[float], int, str]]]) -> tuple[torch.Tensor, ...]:
    """Per frame a list of (xyxy box, class, feature name) → boxes, frame, dists, features."""
    boxes, frame, dists, feats = [], [], [], []
    for f, objects in enumerate(frames):
        for box, cls, feat in objects:
            boxes.append(box)
            frame.append(f)
            dists.append([0.9 if k == cls else 0.1 / (C - 1) for k in range(C)])
            feats.append(FEAT[feat])
    return (
        torch.tensor(boxes).reshape(-1, 4),
        torch.tensor(frame, dtype=torch.int64),
        torch.tensor(dists).reshape(-1, C),
        torch.tensor(feats).reshape(-1, 3),
    )


PERSON = ([40.0, 10.0, 60.0, 90.0], 0, "c")


def test_two_objects_crossing_keep_their_identities() -> None:
    # A moves right, B moves left; at frame 2 A's box is nearer B's last box than its own
    # (box cost favours the swap by 0.02 + GIoU), but class and feature costs (1.5) forbid it
    a = [[10.0, 40.0, 30.0, 60.0], [40.0, 40.0, 60.0, 60.0], [70.0, 40.0, 90.0, 60.0]]
    b = [[70.0, 40.0, 90.0, 60.0], [42.0, 40.0, 62.0, 60.0], [10.0, 40.0, 30.0, 60.0]]
    frames = [
        [(a[0], 3, "a"), (b[0], 5, "b")],
        [(b[1], 5, "b"), (a[1], 3, "a")],  # order within the frame swapped
        [(a[2], 3, "a"), (b[2], 5, "b")],
    ]
    seq = track_video(*video(frames), [0, 1, 2], (100, 100))
    # boxes: A0 B0 | B1 A1 | A2 B2 -> A is sequence 0, B sequence 1
    assert seq.tolist() == [0, 1, 1, 0, 0, 1]


def test_a_disappearance_longer_than_the_expiry_starts_a_new_sequence() -> None:
    obj = ([10.0, 10.0, 30.0, 30.0], 3, "a")
    # person in every frame; the object at frame numbers 10 and 70, absent at 30 and 61:
    # unmatched at 61, 61 - 10 = 51 >= 50 -> its track ends; at 70 it opens sequence 2
    frames = [[PERSON, obj], [PERSON], [PERSON], [PERSON, obj]]
    seq = track_video(*video(frames), [10, 30, 61, 70], (100, 100))
    assert seq.tolist() == [0, 1, 0, 0, 0, 2]
    # absent at 30 and 59 (59 - 10 = 49 < 50): still alive, so it is matched again at 100,
    # 90 frame numbers after its last update (expiry is checked only on unmatched frames)
    seq = track_video(*video(frames), [10, 30, 59, 100], (100, 100))
    assert seq.tolist() == [0, 1, 0, 0, 0, 1]


def test_a_class_switch_joins_only_when_the_features_agree() -> None:
    box = [10.0, 10.0, 30.0, 30.0]
    # class 3 then 6: class cost 1, feature cost 0 < 0.5 -> accepted
    seq = track_video(*video([[(box, 3, "a")], [(box, 6, "a")]]), [0, 1], (100, 100))
    assert seq.tolist() == [0, 0]
    # class and features both change: both costs 1 -> refused, a new sequence
    seq = track_video(*video([[(box, 3, "a")], [(box, 6, "b")]]), [0, 1], (100, 100))
    assert seq.tolist() == [0, 1]
    # features change but the class stays: class cost 0 -> accepted
    seq = track_video(*video([[(box, 3, "a")], [(box, 3, "b")]]), [0, 1], (100, 100))
    assert seq.tolist() == [0, 0]


def test_a_track_compares_with_the_mean_of_its_boxes() -> None:
    box = [10.0, 10.0, 30.0, 30.0]
    # the track holds classes 3, 3, 3 then sees 6 with new features: class cost 1 -> refused;
    # with classes 3, 6, 6 its mean one-hot is (1/3, 2/3): cos = (2/3)/sqrt(5/9) = 0.894,
    # class cost 0.106 < 0.5 -> a class-6 box with new features is accepted
    frames = [[(box, 3, "a")], [(box, 3, "a")], [(box, 3, "a")], [(box, 6, "b")]]
    assert track_video(*video(frames), [0, 1, 2, 3], (100, 100)).tolist() == [0, 0, 0, 1]
    frames = [[(box, 3, "a")], [(box, 6, "a")], [(box, 6, "a")], [(box, 6, "b")]]
    assert track_video(*video(frames), [0, 1, 2, 3], (100, 100)).tolist() == [0, 0, 0, 0]


def test_boxes_outside_the_image_stay_alone_and_update_no_track() -> None:
    inside = [10.0, 10.0, 30.0, 30.0]
    outside = [-2.0, 10.0, 18.0, 30.0]  # x1 < 0
    # an outside box starts no track: the same object inside next frame opens a new sequence
    seq = track_video(*video([[(outside, 3, "a")], [(inside, 3, "a")]]), [0, 1], (100, 100))
    assert seq.tolist() == [0, 1]
    # matched to a live track it joins the sequence but does not update the track: at frame
    # number 60 the track (last updated at 0) is unmatched, 60 >= 50 -> ends; at 65 a new one
    frames = [
        [PERSON, (inside, 3, "a")],
        [PERSON, (outside, 3, "a")],
        [PERSON],
        [PERSON, (inside, 3, "a")],
    ]
    seq = track_video(*video(frames), [0, 40, 60, 65], (100, 100))
    assert seq.tolist() == [0, 1, 0, 1, 0, 0, 2]
    # the same with the second box inside: the track is updated at 40, alive at 60, joined at 65
    frames[1][1] = (inside, 3, "a")
    seq = track_video(*video(frames), [0, 40, 60, 65], (100, 100))
    assert seq.tolist() == [0, 1, 0, 1, 0, 0, 1]


def test_beyond_the_bottom_edge_is_outside_with_the_height_and_width_the_right_way() -> None:
    # image 50 high, 200 wide: a box reaching x2 = 150 is inside, y2 = 60 is outside
    wide = [100.0, 10.0, 150.0, 40.0]
    tall = [10.0, 20.0, 40.0, 60.0]
    frames = [[(wide, 3, "a"), (tall, 4, "b")], [(wide, 3, "a"), (tall, 4, "b")]]
    seq = track_video(*video(frames), [0, 1], (50, 200))
    assert seq.tolist() == [0, 1, 0, 2]


class RecordingMatcher(HungarianMatcher):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[dict, dict]] = []

    def forward(self, outputs, targets):  # type: ignore[override]
        self.calls.append((dict(outputs), dict(targets)))
        return super().forward(outputs, targets)


def test_the_matcher_gets_xywh_boxes_scaled_by_height_then_width_the_original_s_swap() -> None:
    box = [20.0, 10.0, 60.0, 30.0]  # xywh (20, 10, 40, 20)
    matcher = RecordingMatcher()
    track_video(*video([[(box, 3, "a")], [(box, 3, "a")]]), [0, 1], (100, 400), matcher=matcher)
    ((outputs, targets),) = matcher.calls
    # (w, h) = (H, W) = (100, 400): x and widths / 100, y and heights / 400
    assert outputs["boxes"][0].tolist() == pytest.approx([0.2, 0.025, 0.4, 0.05])
    assert targets["boxes"][0].tolist() == pytest.approx([0.2, 0.025, 0.4, 0.05])
    assert outputs["dists"].tolist() == [[0, 0, 0, 1, 0, 0, 0, 0]]  # the arg-max as one-hot


def test_batch_tracking_equals_one_video_at_a_time() -> None:
    g = torch.Generator().manual_seed(3)
    videos = []
    for frames in (4, 1, 6):
        n_per = torch.randint(1, 4, (frames,), generator=g)
        frame = torch.repeat_interleave(torch.arange(frames), n_per)
        xy = torch.rand(len(frame), 2, generator=g) * 60
        boxes = torch.cat([xy, xy + 5 + torch.rand(len(frame), 2, generator=g) * 30], 1)
        dists = torch.rand(len(frame), C, generator=g)
        feats = torch.rand(len(frame), 3, generator=g)
        videos.append((boxes, frame, dists, feats, list(range(0, 20 * frames, 20)), (100, 100)))
    alone = [track_video(*v) for v in videos]
    frame_offsets = [0, 4, 5, 11]
    box_offsets = [0]
    for v in videos:
        box_offsets.append(box_offsets[-1] + len(v[1]))
    batch_boxes = torch.cat(
        [
            torch.cat([(v[1] + frame_offsets[i]).float()[:, None], v[0]], 1)
            for i, v in enumerate(videos)
        ]
    )
    together = track_batch(
        batch_boxes,
        box_offsets,
        frame_offsets,
        torch.cat([v[2] for v in videos]),
        torch.cat([v[3] for v in videos]),
        [v[4] for v in videos],
        [v[5] for v in videos],
    )
    base, want = 0, []
    for ids in alone:
        want.append(ids + base)
        base += int(ids.max()) + 1
    assert together.tolist() == torch.cat(want).tolist()
    assert (
        track_batch(
            batch_boxes,
            box_offsets,
            frame_offsets,
            torch.cat([v[2] for v in videos]),
            torch.cat([v[3] for v in videos]),
            [v[4] for v in videos],
            [v[5] for v in videos],
        ).tolist()
        == together.tolist()
    )  # deterministic


def test_boxes_must_come_in_frame_order_and_within_the_frames() -> None:
    boxes, frame, dists, feats = video([[PERSON], [PERSON]])
    with pytest.raises(ValueError, match="ordered by frame"):
        track_video(boxes, frame.flip(0), dists, feats, [0, 1], (100, 100))
    with pytest.raises(ValueError, match="outside the given frames"):
        track_video(boxes, frame, dists, feats, [0], (100, 100))


def test_group_by_key_and_positions_by_hand() -> None:
    video_of = torch.tensor([0, 0, 1, 1, 0])
    labels = torch.tensor([3, 1, 3, 3, 3])
    # tuples (0,3) (0,1) (1,3) (1,3) (0,3); ascending: (0,1)=0 (0,3)=1 (1,3)=2
    seq = group_by_key(video_of, labels)
    assert seq.tolist() == [1, 0, 2, 2, 1]
    assert sequence_positions(seq).tolist() == [0, 0, 0, 1, 1]
    seq = torch.tensor([0, 1, 0, 0, 1, 0])
    frames = torch.tensor([0, 0, 0, 2, 5, 7])
    # sequence 0: frames 0, 0, 2, 7 -> 0, 0, 1, 2; sequence 1: frames 0, 5 -> 0, 1
    assert sequence_positions(seq, frames).tolist() == [0, 0, 0, 1, 1, 2]
    assert sequence_positions(torch.zeros(0, dtype=torch.int64)).numel() == 0


def test_frame_numbers_from_keys() -> None:
    assert frame_number("50N4E.mp4/000682.png") == 682
    assert frame_number("toy_0003/12") == 12
    with pytest.raises(ValueError, match="frame number"):
        frame_number("50N4E.mp4/cover.png")


class PerFrame(HungarianMatcher):
    """A matcher with its own ``forward``: the tracker calls it once per frame."""

    def __init__(self, *weights: float) -> None:
        super().__init__(*weights)
        self.calls = 0

    def forward(self, outputs, targets):  # type: ignore[no-untyped-def, override]
        self.calls += 1
        return super().forward(outputs, targets)


@pytest.mark.parametrize("weights", [(), (1.0, 0.2, 2.0, 0.0)])
def test_prepared_terms_give_the_tracks_of_the_per_frame_matcher(weights) -> None:
    """The stock HungarianMatcher runs on terms prepared once per video; the same matcher
    called once per frame gives the same sequences on random videos with exact ties
    (duplicated boxes and features), boxes outside the image and expiring tracks."""
    g = torch.Generator().manual_seed(8)
    differences = calls = 0
    for trial in range(60):
        frames = int(torch.randint(1, 25, (1,), generator=g))
        counts = torch.randint(0, 6, (frames,), generator=g)
        frame = torch.repeat_interleave(torch.arange(frames), counts)
        n = len(frame)
        xy = torch.rand(n, 2, generator=g) * 120 - 10
        boxes = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 60], 1)
        dup = torch.rand(n, generator=g) < 0.3
        boxes[1:][dup[1:]] = boxes[:-1][dup[1:]]
        cls = torch.randint(0, 4, (n,), generator=g)
        dists = F.one_hot(cls, C).float() + torch.rand(n, C, generator=g) * 0.1
        feats = torch.randn(n, (3, 64)[trial % 2], generator=g)
        feats[1:][dup[1:]] = feats[:-1][dup[1:]]
        numbers = torch.cumsum(torch.randint(1, 40, (frames,), generator=g), 0).tolist()
        args = (boxes, frame, dists, feats, numbers, (100.0, 110.0))
        per_frame = PerFrame(*weights)
        prepared = track_video(*args, matcher=HungarianMatcher(*weights))
        differences += not torch.equal(prepared, track_video(*args, matcher=per_frame))
        calls += per_frame.calls
    assert differences == 0 and calls > 100

"""STKET's prior and key-frame selection: vectorised rules equal a per-relation loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m3sgg.models.stket.selection import (
    contact_sets,
    key_frame_sources,
    prior_sources,
    state_holders,
)

NUM_CLASSES = 37


def loop_reference(
    video_frames: list[int],
    frame: list[int],
    label: list[int],
    scores: list[float] | None,
    window: int,
) -> tuple[list[int], list[int], list[list[int]]]:
    """The original's walk over relations with per-video dicts (``lib/transformer.py``): which
    relation holds each state, the previous frame rule, the key-frame chain."""
    current, previous, keys = [], [], []
    start = 0
    r = 0
    for frames in video_frames:
        score: dict[int, list[float]] = {}
        holder: dict[int, list[int | None]] = {}
        while r < len(frame) and frame[r] < start + frames:
            f, lab = frame[r] - start, label[r]
            if lab not in score:
                score[lab] = [0.0] * frames
                holder[lab] = [None] * frames
            if scores is None:
                score[lab][f] = 1.0
                holder[lab][f] = r
            elif scores[r] > score[lab][f]:
                score[lab][f] = scores[r]
                holder[lab][f] = r
            current.append(holder[lab][f])
            seen = [i for i in range(f) if score[lab][i] != 0]
            back = seen[-1] if seen else f
            back = back if f - back <= 2 else f
            previous.append(holder[lab][back])
            chain = [f]
            for i in reversed(seen):
                if chain[-1] - i <= 2:
                    chain.append(i)
                if len(chain) == window:
                    break
            keys.append([holder[lab][c] for c in reversed(chain)])
            r += 1
        start += frames
    return current, previous, keys


def random_batch(seed: int, ties: bool) -> tuple[list[int], list[int], list[int], list[float]]:
    rng = np.random.default_rng(seed)
    video_frames = [int(n) for n in rng.integers(1, 9, size=rng.integers(1, 5))]
    frame, label = [], []
    start = 0
    for frames in video_frames:
        for f in range(frames):
            for _ in range(int(rng.integers(1, 5))):
                frame.append(start + f)
                label.append(int(rng.choice([2, 3, 4, 5])))  # few labels: repeats and gaps
        start += frames
    raw = rng.random(len(frame))
    scores = (np.round(raw * 4) / 4 + 0.05 if ties else raw + 0.01).tolist()
    return video_frames, frame, label, scores


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("scored", [False, True])
@pytest.mark.parametrize("window", [2, 3, 4])
def test_vectorised_selection_equals_the_loop(seed: int, scored: bool, window: int):
    video_frames, frame, label, scores = random_batch(seed, ties=seed % 2 == 0)
    frame_video = torch.repeat_interleave(
        torch.arange(len(video_frames)), torch.tensor(video_frames)
    )
    f, lab = torch.tensor(frame), torch.tensor(label)
    s = torch.tensor(scores) if scored else None
    current, previous, keys = loop_reference(
        video_frames, frame, label, scores if scored else None, window
    )
    got_current, got_previous = prior_sources(f, lab, s, frame_video, NUM_CLASSES)
    assert got_current.tolist() == current
    assert got_previous.tolist() == previous
    rows, used = key_frame_sources(f, lab, s, frame_video, NUM_CLASSES, window)
    assert used.tolist() == [len(k) for k in keys]
    for r, k in enumerate(keys):
        assert rows[r, : len(k)].tolist() == k
        assert (rows[r, len(k) :] == -1).all()


def test_scored_holders_keep_the_first_best_by_hand():
    # one (frame, label) group: 0.5, then 0.7 takes over, an equal 0.7 does not, 0.2 does not;
    # another label in the same frame keeps its own holder
    frame = torch.tensor([0, 0, 0, 0, 0])
    label = torch.tensor([3, 3, 3, 3, 4])
    scores = torch.tensor([0.5, 0.7, 0.7, 0.2, 0.1])
    assert state_holders(frame, label, scores).tolist() == [0, 1, 1, 1, 4]
    assert state_holders(frame, label, None).tolist() == [0, 1, 2, 3, 4]


def test_key_frames_stop_at_a_gap_of_three_by_hand():
    # one video of 6 frames; label 3 in frames 0, 1, 2 and 5; label 4 only in frame 5
    frame = torch.tensor([0, 1, 2, 5, 5])
    label = torch.tensor([3, 3, 3, 3, 4])
    frame_video = torch.zeros(6, dtype=torch.int64)
    rows, used = key_frame_sources(frame, label, None, frame_video, NUM_CLASSES, 4)
    assert used.tolist() == [1, 2, 3, 1, 1]
    assert rows[2].tolist() == [0, 1, 2, -1]  # oldest first, own frame last
    assert rows[3].tolist() == [3, -1, -1, -1]  # frame 2 is three frames back: not a key frame
    previous = prior_sources(frame, label, None, frame_video, NUM_CLASSES)[1]
    assert previous.tolist() == [0, 0, 1, 3, 4]  # no previous frame (or too far): its own


def test_key_frames_never_cross_into_the_previous_video():
    frame = torch.tensor([0, 1, 2])  # video 0: frames 0-1; video 1: frames 2-3
    label = torch.tensor([3, 3, 3])
    frame_video = torch.tensor([0, 0, 1, 1])
    used = key_frame_sources(frame, label, None, frame_video, NUM_CLASSES, 4)[1]
    assert used.tolist() == [1, 2, 1]
    assert prior_sources(frame, label, None, frame_video, NUM_CLASSES)[1].tolist() == [0, 0, 2]


def test_contact_sets_by_hand():
    contact = torch.tensor(
        [
            [0.9, 0.0, 0.85] + [0.0] * 5 + [0.95] + [0.0] * 8,  # arg-max 8: {8}
            [0.9, 0.0, 0.85] + [0.0] * 5 + [0.80] + [0.0] * 8,  # {0, 2}; 8 is dropped
            [0.1] * 17,  # nothing above: empty
        ]
    )
    sets = contact_sets(contact, 0.8)
    assert [torch.nonzero(row).flatten().tolist() for row in sets] == [[8], [0, 2], []]
    gt = torch.zeros(3, 17)
    gt[0, [8, 12]] = 1
    assert torch.nonzero(contact_sets(contact, 1.0, gt)[0]).flatten().tolist() == [8, 12]
    with pytest.raises(ValueError, match="ground-truth"):
        contact_sets(contact, 1.0)

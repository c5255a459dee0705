"""Property-based tests (hypothesis) of the readers, the collate function and the metrics.

- Reader: any valid Action Genome annotation (random videos, frames, persons, visible and
  invisible objects, labels, splits) written as the real pickles reads without error, and what it
  keeps matches the protocol computed independently here (frames, videos, objects, relations).
- Collate: any list of videos collates into a batch whose offsets and indices are consistent,
  and ``split_predictions`` gives every video back its own boxes, pairs and rows.
- Metrics: for any valid predictions, every recall lies in [0, 1], R@K and mR@K never decrease
  with K, and the result does not depend on the order of the pairs or of the videos.

Hypothesis draws the structure (how many videos, frames, objects, which labels); the continuous
values (scores, logits, boxes) come from numpy generators seeded by a drawn integer, so equal
scores (ties, whose order the metric documents as generation order) have probability zero.
Examples are derandomized (the same in every CI run); ``M3SGG_PROPERTY_EXAMPLES`` scales their
number (default 1).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from m3sgg.data.action_genome import ActionGenome, VideoSample, clear_annotation_cache
from m3sgg.data.collate import collate, split_predictions
from m3sgg.data.features import VideoFeatures, union_counts
from m3sgg.data.structures import VideoGT
from m3sgg.metrics.action_genome import ActionGenomeRecallSuite
from m3sgg.vocab import (
    AG_OBJECT_CLASSES,
    AG_PREDICATES,
    GROUP_SIZES,
    PREDICATE_GROUPS,
    PREDICATE_OFFSETS,
    squash,
)

SCALE = float(os.environ.get("M3SGG_PROPERTY_EXAMPLES", "1"))


def examples(n: int) -> settings:
    return settings(
        max_examples=max(1, int(n * SCALE)),
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


OBJECT_NAMES = AG_OBJECT_CLASSES[2:]
GROUP_NAMES = {
    group: AG_PREDICATES[PREDICATE_OFFSETS[group] : PREDICATE_OFFSETS[group] + GROUP_SIZES[group]]
    for group in PREDICATE_GROUPS
}

# --------------------------------------------------------------------------------------- reader


@st.composite
def ag_objects(draw: st.DrawFn) -> dict[str, Any]:
    """One entry of ``object_bbox_and_relationship.pkl`` (split set by the frame)."""
    visible = draw(st.sampled_from([True, True, True, False]))  # mostly visible
    if not visible:
        return {
            "class": draw(st.sampled_from(OBJECT_NAMES)),
            "bbox": None,
            "attention_relationship": None,
            "spatial_relationship": None,
            "contacting_relationship": None,
            "visible": False,
        }
    coordinate = st.floats(0, 500, allow_nan=False)
    size = st.floats(0, 300, allow_nan=False)
    relation = {
        group: draw(st.lists(st.sampled_from(names), max_size=3))
        for group, names in GROUP_NAMES.items()
    }
    relation["attention"] = [draw(st.sampled_from(GROUP_NAMES["attention"]))]
    return {
        "class": draw(st.sampled_from(OBJECT_NAMES)),
        "bbox": (draw(coordinate), draw(coordinate), draw(size), draw(size)),
        "attention_relationship": relation["attention"],
        "spatial_relationship": relation["spatial"],
        "contacting_relationship": relation["contacting"],
        "visible": True,
    }


@st.composite
def ag_annotations(draw: st.DrawFn) -> tuple[dict, dict]:
    """``(objects, persons)``: the two pickles' dicts for 1-4 videos of 3-7 frames."""
    objects: dict[str, list] = {}
    persons: dict[str, dict] = {}
    names = st.text("ABCDEFXYZ0123", min_size=3, max_size=5)
    videos = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    for video in videos:
        split = draw(st.sampled_from(["train", "test"]))
        frames = draw(st.lists(st.integers(0, 9999), min_size=3, max_size=7, unique=True))
        for frame in frames:
            key = f"{video}.mp4/{frame:06d}.png"
            entries = draw(
                st.lists(ag_objects(), min_size=draw(st.sampled_from([1, 1, 1, 0])), max_size=3)
            )
            for entry in entries:
                entry["metadata"] = {"tag": key, "set": split}
            objects[key] = entries
            rows = draw(st.sampled_from([1, 1, 1, 0, 2]))  # usually one person box
            x, y = draw(st.floats(0, 400)), draw(st.floats(0, 400))
            box = [x, y, x + draw(st.floats(0, 200)), y + draw(st.floats(0, 200))]
            persons[key] = {
                "bbox": np.array([box] * rows, dtype=np.float32).reshape(rows, 4),
                "bbox_size": (480, 270),
                "bbox_mode": "xyxy",
            }
    return objects, persons


def write_ag(root: Path, objects: dict, persons: dict) -> Path:
    annotations = root / "annotations"
    annotations.mkdir(parents=True)
    (annotations / "object_classes.txt").write_text(
        "\n".join(squash(n) for n in AG_OBJECT_CLASSES[1:]) + "\n"
    )
    (annotations / "relationship_classes.txt").write_text(
        "\n".join(squash(n) for n in AG_PREDICATES) + "\n"
    )
    (annotations / "object_bbox_and_relationship.pkl").write_bytes(pickle.dumps(objects, 4))
    (annotations / "person_bbox.pkl").write_bytes(pickle.dumps(persons, 4))
    return root


def expected_protocol(objects: dict, persons: dict, split: str) -> dict[str, Any]:
    """The STTran filtering, written plainly: which frames, objects and relations stay."""
    by_video: dict[str, list[str]] = {}
    for key in sorted(objects, key=lambda k: tuple(k.split("/", 1))):
        entries = objects[key]
        visible = [o for o in entries if o["visible"]]
        in_split = bool(entries) and entries[0]["metadata"]["set"] == split
        if in_split and visible and len(persons[key]["bbox"]):
            by_video.setdefault(key.split("/")[0], []).append(key)
    kept = {v: keys for v, keys in by_video.items() if len(keys) > 2}
    frames = [k for v in sorted(kept) for k in kept[v]]
    visible = [o for k in frames for o in objects[k] if o["visible"]]
    relations = {
        group: sum(len(o[f"{group}_relationship"]) for o in visible) for group in PREDICATE_GROUPS
    }
    return {"videos": sorted(kept), "frames": frames, "objects": visible, "relations": relations}


@examples(40)
@given(data=ag_annotations())
def test_reader_keeps_what_the_protocol_keeps(data: tuple[dict, dict]) -> None:
    objects, persons = data
    clear_annotation_cache()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_ag(Path(tmp), objects, persons)
        kept = 0
        for split in ("train", "test"):
            dataset = ActionGenome(root, split)
            check_split(dataset, objects, persons, expected_protocol(objects, persons, split))
            kept += len(dataset)
        event(f"videos kept: {min(kept, 2)}{'+' if kept >= 2 else ''}")


def check_split(dataset: ActionGenome, objects: dict, persons: dict, expected: dict) -> None:
    stats = dataset.stats()
    assert dataset.video_ids == expected["videos"]
    assert dataset.frame_keys() == expected["frames"]
    assert stats["objects"] == len(expected["objects"])
    assert stats["relations"] == expected["relations"]
    assert sum(stats["object_classes"].values()) == stats["objects"]
    for index in range(len(dataset)):
        gt = dataset[index].gt
        assert gt.num_frames > 2 and gt.frame_keys[0].startswith(gt.video_id + "/")
        for f, key in enumerate(gt.frame_keys):
            np.testing.assert_array_equal(gt.person_boxes[f], persons[key]["bbox"][0])
            visible = [o for o in objects[key] if o["visible"]]
            mine = np.flatnonzero(gt.obj_frame == f)
            classes = [OBJECT_NAMES[c - 2] for c in gt.obj_class[mine]]
            assert classes == [o["class"] for o in visible]
            xywh = np.array([o["bbox"] for o in visible], dtype=np.float64)
            np.testing.assert_array_equal(gt.obj_boxes[mine, :2], xywh[:, :2])
            np.testing.assert_allclose(gt.obj_boxes[mine, 2:], xywh[:, :2] + xywh[:, 2:])
        assert gt.rel_obj.shape == gt.rel_pred.shape
        assert ((gt.rel_pred >= 0) & (gt.rel_pred < len(AG_PREDICATES))).all()


# -------------------------------------------------------------------------------------- videos


@dataclass(frozen=True)
class VideoShape:
    """How many visible objects each frame of a video has, and a seed for its values."""

    objects: tuple[int, ...]
    seed: int


video_shapes = st.builds(
    VideoShape,
    st.lists(st.integers(0, 4), min_size=1, max_size=5).map(tuple),
    st.integers(0, 2**32 - 1),
)


def make_video(index: int, shape: VideoShape, dim: int = 8) -> VideoSample:
    """A video in the reader's form: GT plus its 'gt' feature section (person, then objects)."""
    rng = np.random.default_rng(shape.seed)
    frames = len(shape.objects)
    counts = np.asarray(shape.objects, dtype=np.int64)
    total = int(counts.sum())
    xy = rng.uniform(0, 300, size=(frames + total, 2))
    wh = rng.uniform(1, 200, size=(frames + total, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    person_boxes, obj_boxes = boxes[:frames].astype(np.float32), boxes[frames:]
    obj_frame = np.repeat(np.arange(frames), counts)
    rel_obj, rel_pred = [], []
    for o in range(total):
        rel_obj.append(o)
        rel_pred.append(int(rng.integers(0, 3)))
        for p in rng.choice(np.arange(3, 26), size=int(rng.integers(0, 4)), replace=False):
            rel_obj.append(o)
            rel_pred.append(int(p))
    order = np.lexsort((np.asarray(rel_pred), np.asarray(rel_obj))) if rel_obj else []
    video_id = f"v{index}.mp4"
    gt = VideoGT(
        video_id=video_id,
        frame_keys=tuple(f"{video_id}/{f:06d}.png" for f in range(frames)),
        person_boxes=person_boxes,
        obj_frame=obj_frame.astype(np.int64),
        obj_class=rng.integers(2, len(AG_OBJECT_CLASSES), size=total).astype(np.int64),
        obj_boxes=obj_boxes,
        rel_obj=np.asarray(rel_obj, dtype=np.int64)[order],
        rel_pred=np.asarray(rel_pred, dtype=np.int64)[order],
    )
    # feature rows per frame: the person, then its objects; pairs (person, object j)
    rows, pairs, pair_frames = [], [], []
    start = 0
    for f in range(frames):
        rows.append(np.r_[f, person_boxes[f]])
        rows += [np.r_[f, obj_boxes[o]] for o in np.flatnonzero(obj_frame == f)]
        pairs += [(start, start + 1 + j) for j in range(counts[f])]
        pair_frames += [f] * int(counts[f])
        start += 1 + int(counts[f])
    n, p = frames + total, len(pairs)
    features = VideoFeatures(
        frame_keys=gt.frame_keys,
        boxes=np.asarray(rows, dtype=np.float32).reshape(n, 5),
        box_features=rng.standard_normal((n, dim)).astype(np.float32),
        pair_idx=np.asarray(pairs, dtype=np.int64).reshape(p, 2),
        im_idx=np.asarray(pair_frames, dtype=np.int64),
        union_maps=rng.standard_normal((int(union_counts(counts + 1, False).sum()), 2, 1, 1)),
        union_offsets=np.concatenate([[0], np.cumsum(union_counts(counts + 1, False))]),
        union_diagonal=False,
    )
    return VideoSample(index=index, video_id=video_id, gt=gt, features=features)


def random_predictions(batch: Any, seed: int) -> dict[str, torch.Tensor]:
    """What a model returns for a batch: its boxes and pairs, continuous random scores."""
    g = torch.Generator().manual_seed(seed)
    pairs = batch.num_pairs
    return {
        "boxes": batch.boxes.clone(),
        "labels": batch.labels.clone(),
        "scores": batch.scores.clone(),
        "pred_labels": batch.labels.clone(),
        "pred_scores": torch.rand(batch.num_boxes, generator=g),
        "im_idx": batch.im_idx.clone(),
        "pair_idx": batch.pair_idx.clone(),
        "attention_distribution": torch.randn(pairs, 3, generator=g),
        "spatial_distribution": torch.rand(pairs, 6, generator=g),
        "contacting_distribution": torch.rand(pairs, 17, generator=g),
    }


@examples(40)
@given(shapes=st.lists(video_shapes, min_size=1, max_size=4), seed=st.integers(0, 2**31 - 1))
def test_collate_then_split_gives_every_video_its_own_rows(
    shapes: list[VideoShape], seed: int
) -> None:
    samples = [make_video(i, shape) for i, shape in enumerate(shapes)]
    batch = collate(samples)
    assert batch.num_videos == len(samples)
    assert batch.num_frames == sum(s.gt.num_frames for s in samples)
    assert batch.num_boxes == sum(s.features.num_boxes for s in samples)
    assert batch.num_pairs == sum(s.features.num_pairs for s in samples)
    # pairs of a video are contiguous, and index boxes and frames of that same video
    pair_video = batch.pair_video.numpy()
    assert (np.diff(pair_video) >= 0).all()
    # each pair's union row lies in its own frame's table, one row per pair of the frame
    rows = batch.union_rows(batch.pair_idx)
    assert (rows >= batch.frame_union_offsets[batch.im_idx]).all()
    assert (rows < batch.frame_union_offsets[batch.im_idx + 1]).all()
    assert len(torch.unique(rows)) == batch.num_pairs
    assert len(batch.union_maps) == batch.frame_union_offsets[-1]
    assert (batch.box_video.numpy()[batch.pair_idx.numpy()] == pair_video[:, None]).all()
    assert (batch.frame_video.numpy()[batch.im_idx.numpy()] == pair_video).all()
    assert batch.relation_mask.all() and (batch.attention >= 0).all()

    predictions = random_predictions(batch, seed)
    pieces = split_predictions(batch, predictions)
    assert len(pieces) == len(samples)
    pair_start = box_start = 0
    for sample, (gt, pred) in zip(samples, pieces, strict=True):
        features = sample.features
        assert gt is sample.gt
        np.testing.assert_array_equal(pred["boxes"].numpy(), features.boxes)
        np.testing.assert_array_equal(pred["pair_idx"].numpy(), features.pair_idx)
        np.testing.assert_array_equal(pred["im_idx"].numpy(), features.im_idx)
        p, n = features.num_pairs, features.num_boxes
        for key in ("attention_distribution", "spatial_distribution", "contacting_distribution"):
            assert torch.equal(pred[key], predictions[key][pair_start : pair_start + p])
        assert torch.equal(
            pred["pred_scores"], predictions["pred_scores"][box_start : box_start + n]
        )
        pair_start, box_start = pair_start + p, box_start + n


# ------------------------------------------------------------------------------------- metrics

KS = (1, 3, 10, 20, 50, 100)


def evaluate(pieces: list[tuple[VideoGT, dict[str, torch.Tensor]]], mode: str) -> dict[str, Any]:
    metric = ActionGenomeRecallSuite(mode, ks=KS)
    for piece in pieces:
        metric.update(piece)
    return metric.compute()


def permute_pairs(pred: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    order = torch.randperm(pred["pair_idx"].shape[0], generator=torch.Generator().manual_seed(seed))
    pair_keys = ("im_idx", "pair_idx", "attention_distribution", "spatial_distribution")
    pair_keys += ("contacting_distribution",)
    return {k: (v[order] if k in pair_keys else v) for k, v in pred.items()}


def assert_same_metrics(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, dict):
            assert value.keys() == b[key].keys(), key
            for k in value:
                np.testing.assert_allclose(value[k], b[key][k], rtol=0, atol=1e-12, err_msg=key)
        else:
            np.testing.assert_allclose(value, b[key], rtol=0, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("mode", ["predcls", "sgcls"])
@examples(30)
@given(
    shapes=st.lists(video_shapes.filter(lambda s: sum(s.objects) > 0), min_size=1, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_recall_is_bounded_monotone_in_k_and_order_free(
    mode: str, shapes: list[VideoShape], seed: int
) -> None:
    samples = [make_video(i, shape) for i, shape in enumerate(shapes)]
    batch = collate(samples)
    pieces = split_predictions(batch, random_predictions(batch, seed))
    result = evaluate(pieces, mode)
    for constraint in ("with", "semi", "no"):
        recalls = [result[f"{constraint}/R@{k}"] for k in KS]
        means = [result[f"{constraint}/mR@{k}"] for k in KS]
        per_predicate = np.array([result[f"{constraint}/per_predicate"][k] for k in KS])
        for values in (recalls, means, per_predicate):
            values = np.asarray(values)
            assert ((values >= 0) & (values <= 1)).all(), (constraint, values)
            assert (np.diff(values, axis=0) >= 0).all(), (constraint, values)

    shuffled = [(gt, permute_pairs(pred, seed + i)) for i, (gt, pred) in enumerate(pieces)]
    assert_same_metrics(evaluate(shuffled, mode), result)
    assert_same_metrics(evaluate(pieces[::-1], mode), result)

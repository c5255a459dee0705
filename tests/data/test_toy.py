"""The toy Action Genome generator: real formats, every quirk, learnable, deterministic."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from m3sgg.data.action_genome import ActionGenome
from m3sgg.data.features import FeatureStore, union_index
from m3sgg.data.toy import make_toy_action_genome
from m3sgg.errors import DataError
from m3sgg.vocab import AG_OBJECT_CLASSES, AG_PREDICATES, squash


def raw(root: Path) -> tuple[dict, dict]:
    ann = root / "annotations"
    with open(ann / "person_bbox.pkl", "rb") as fh:
        persons = pickle.load(fh)
    with open(ann / "object_bbox_and_relationship.pkl", "rb") as fh:
        objects = pickle.load(fh)
    return persons, objects


def reference_videos(root: Path, split: str, min_box: float | None = None) -> dict[str, list]:
    """The protocol written out plainly, frame by frame, from the raw pickles."""
    persons, objects = raw(root)
    cls = {name: i for i, name in enumerate(AG_OBJECT_CLASSES)}
    pred = {name: i for i, name in enumerate(AG_PREDICATES)}
    videos: dict[str, list] = {}
    for key in sorted(objects):
        objs = objects[key]
        if not objs or objs[0]["metadata"]["set"] != split or len(persons[key]["bbox"]) == 0:
            continue
        kept = []
        for o in objs:
            if not o["visible"]:
                continue
            x, y, w, h = o["bbox"]
            if min_box is not None and (w < min_box or h < min_box):
                continue
            labels = [
                pred[n]
                for g in ("attention", "spatial", "contacting")
                for n in o[f"{g}_relationship"]
            ]
            kept.append((cls[o["class"]], [x, y, x + w, y + h], labels))
        if kept:
            videos.setdefault(key.split("/")[0], []).append((key, persons[key]["bbox"][0], kept))
    return {v: frames for v, frames in videos.items() if len(frames) > 2}


def assert_matches_reference(ds: ActionGenome, ref: dict[str, list]) -> None:
    assert ds.video_ids == sorted(ref)
    for sample in ds:
        gt, frames = sample.gt, ref[sample.video_id]
        assert gt.frame_keys == tuple(k for k, _, _ in frames)
        np.testing.assert_array_equal(gt.person_boxes, [p for _, p, _ in frames])
        objs = [o for _, _, kept in frames for o in kept]
        assert gt.obj_frame.tolist() == [f for f, (_, _, kept) in enumerate(frames) for _ in kept]
        assert gt.obj_class.tolist() == [c for c, _, _ in objs]
        np.testing.assert_array_equal(
            gt.obj_boxes, np.array([b for _, b, _ in objs]).reshape(-1, 4)
        )
        assert gt.rel_obj.tolist() == [i for i, (_, _, lab) in enumerate(objs) for _ in lab]
        assert gt.rel_pred.tolist() == [p for _, _, lab in objs for p in lab]


# ------------------------------------------------------------------------------------------------
# Round trip through the reader


def test_reader_round_trip(toy_root):
    train = ActionGenome(toy_root, "train", features=toy_root / "features")
    test = ActionGenome(toy_root, "test", features=toy_root / "features")
    # 24 videos, every 4th (v % 4 == 1) in test, every 5th (v % 5 == 4) too short: 15 + 5 kept
    assert (len(train), len(test)) == (15, 5)
    assert_matches_reference(train, reference_videos(toy_root, "train"))
    assert_matches_reference(test, reference_videos(toy_root, "test"))
    _, objects = raw(toy_root)
    assert len({k.split("/")[0] for k in objects}) == 24
    stats = train.stats()
    assert stats["frames"] == len(train.frame_keys()) and stats["objects"] > stats["frames"]
    assert sum(stats["predicates"].values()) == sum(stats["relations"].values())


def test_small_box_filter_round_trip(toy_root):
    for split in ("train", "test"):
        ds = ActionGenome(toy_root, split, filter_small_boxes=True, features=toy_root / "features")
        assert_matches_reference(ds, reference_videos(toy_root, split, min_box=16.0))
        for sample in ds:  # the store rows follow the filter
            np.testing.assert_allclose(
                sample.features.boxes[sample.features.pair_idx[:, 1], 1:],
                sample.gt.obj_boxes,
                rtol=1e-6,
            )
    plain = ActionGenome(toy_root, "train").stats()["objects"]
    assert ActionGenome(toy_root, "train", filter_small_boxes=True).stats()["objects"] < plain


def test_store_matches_annotations(toy_root):
    ds = ActionGenome(toy_root, "train", features=toy_root / "features")
    for sample in ds:
        gt, feats, det = sample.gt, sample.features, sample.det
        offsets = gt.object_offsets()
        for f in range(gt.num_frames):
            rows = np.flatnonzero(feats.boxes[:, 0] == f)
            np.testing.assert_array_equal(feats.boxes[rows[0], 1:], gt.person_boxes[f])
            np.testing.assert_allclose(
                feats.boxes[rows[1:], 1:], gt.obj_boxes[offsets[f] : offsets[f + 1]], rtol=1e-6
            )
            pairs = feats.pair_idx[feats.im_idx == f]
            assert (pairs[:, 0] == rows[0]).all() and pairs[:, 1].tolist() == rows[1:].tolist()
        assert det is not None and det.frame_keys == gt.frame_keys
        assert det.boxes[:, 0].min() == 0
        assert det.class_dists.shape[1] == len(AG_OBJECT_CLASSES) - 1  # classes 1..36
        np.testing.assert_allclose(det.class_dists.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(feats.class_dists.sum(axis=1), 1.0, rtol=1e-5)
        # det_train: every GT object of a frame is a pair (found or supplied), person first.
        train = sample.det_train
        assert train is not None and train.num_pairs == gt.num_objects
        assert sorted(zip(train.im_idx, train.pair_targets, strict=True)) == [
            (int(f), int(o - offsets[f])) for o, f in enumerate(gt.obj_frame)
        ]
        box_class = train.labels[train.pair_idx[:, 1]]
        np.testing.assert_array_equal(
            box_class, gt.obj_class[offsets[train.im_idx] + train.pair_targets]
        )
    store = FeatureStore(toy_root / "features")
    assert (store.object_dim, store.union_channels, store.union_size) == (64, 8, 7)
    assert store.num_classes == 37 and store.sections == ("gt", "det", "det_train")


def test_detections_are_imperfect_but_informative(toy_root):
    ds = ActionGenome(toy_root, "train", features=toy_root / "features")
    n_gt = n_det = hits = person_hits = frames = 0
    for sample in ds:
        det, gt = sample.det, sample.gt
        n_gt += gt.num_objects
        n_det += det.num_boxes - gt.num_frames  # minus the person detection of each frame
        first = np.concatenate([[True], np.diff(det.boxes[:, 0]) > 0])
        person_hits += int((det.class_dists[first].argmax(axis=1) == 0).sum())  # person first
        frames += gt.num_frames
        for b in np.flatnonzero(~first):  # a detection overlapping a GT box: same class mostly
            f = int(det.boxes[b, 0])
            same = gt.obj_boxes[gt.obj_frame == f]
            if len(same) and np.abs(same - det.boxes[b, 1:]).max(axis=1).min() < 20:
                o = np.flatnonzero(gt.obj_frame == f)[
                    np.abs(same - det.boxes[b, 1:]).max(1).argmin()
                ]
                hits += int(det.class_dists[b].argmax() + 1 == gt.obj_class[o])
    assert n_det != n_gt  # misses and false positives
    assert hits > 0.5 * n_gt and person_hits > 0.8 * frames


# ------------------------------------------------------------------------------------------------
# The on-disk format and its quirks


def test_format_and_quirks(toy_root):
    ann = toy_root / "annotations"
    assert ann.joinpath("object_classes.txt").read_text().split() == [
        squash(c) for c in AG_OBJECT_CLASSES[1:]
    ]
    assert "closetcabinet" in ann.joinpath("object_classes.txt").read_text()
    assert ann.joinpath("relationship_classes.txt").read_text().split() == [
        squash(p) for p in AG_PREDICATES
    ]
    persons, objects = raw(toy_root)
    assert list(persons) == list(objects)
    assert list(objects) != sorted(objects)  # the release's order is not sorted either
    assert ann.joinpath("frame_list.txt").read_text().split() == sorted(objects)
    ks = {len(p["bbox"]) for p in persons.values()}
    assert ks == {0, 1, 2}
    for p in persons.values():
        assert p["bbox"].dtype == np.float32 and p["bbox"].shape[1] == 4
        assert p["bbox_mode"] == "xyxy" and p["bbox_size"] in ((480, 270), (480, 360), (270, 480))
        assert (p["bbox"][:, 2:] >= p["bbox"][:, :2]).all()
    entries = [o for objs in objects.values() for o in objs]
    visible = [o for o in entries if o["visible"]]
    hidden = [o for o in entries if not o["visible"]]
    assert hidden and all(o["bbox"] is None for o in hidden)
    assert all(isinstance(o["bbox"], tuple) and len(o["bbox"]) == 4 for o in visible)
    assert all(len(o["attention_relationship"]) == 1 for o in visible)
    assert any(o["spatial_relationship"] == [] for o in visible)
    assert any(o["contacting_relationship"] == [] for o in visible)
    assert any(len(o["spatial_relationship"]) > 1 for o in visible)
    assert any(len(o["contacting_relationship"]) > 1 for o in visible)
    names = {o["class"] for o in entries}
    assert names <= set(AG_OBJECT_CLASSES[2:])
    readable = {
        n
        for o in visible
        for g in ("attention", "spatial", "contacting")
        for n in o[f"{g}_relationship"]
    }
    assert readable <= set(AG_PREDICATES) and any("_" in n for n in readable)
    assert {o["metadata"]["set"] for o in entries} == {"train", "test"}
    assert all(o["metadata"]["tag"] == k for k, objs in objects.items() for o in objs)
    assert any(min(o["bbox"][2:]) < 16 for o in visible)  # for the small-box filter
    usable: dict[str, int] = {}  # frames with a person and a visible object, per video
    for k, objs in objects.items():
        ok = len(persons[k]["bbox"]) > 0 and any(o["visible"] for o in objs)
        usable[k.split("/")[0]] = usable.get(k.split("/")[0], 0) + ok
    assert sum(n <= 2 for n in usable.values()) == 4  # the short videos the protocol drops
    assert any(len(p["bbox"]) == 0 for p in persons.values())  # frames without a person
    assert "toy" in (toy_root / "README.txt").read_text().lower()


# ------------------------------------------------------------------------------------------------
# Determinism, options


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path, toy_root):
    again = make_toy_action_genome(tmp_path / "again")
    assert tree(again) == tree(toy_root)
    other = make_toy_action_genome(tmp_path / "other", seed=1)
    a, b = tree(other), tree(toy_root)
    assert a.keys() == b.keys()
    assert (
        a["annotations/object_bbox_and_relationship.pkl"]
        != b["annotations/object_bbox_and_relationship.pkl"]
    )
    assert a["features/gt/box_features.bin"] != b["features/gt/box_features.bin"]


def test_options_and_overwrite(tmp_path):
    root = tmp_path / "small"
    t = time.perf_counter()
    make_toy_action_genome(
        root, videos=6, seed=3, object_dim=16, union_channels=4, with_detections=False
    )
    assert time.perf_counter() - t < 10
    manifest = json.loads((root / "features" / "manifest.json").read_text())
    assert (manifest["object_dim"], manifest["union_channels"]) == (16, 4)
    assert list(manifest["sections"]) == ["gt"]
    sample = ActionGenome(root, "train", features=root / "features")[0]
    assert sample.det is None and sample.features.box_features.shape[1] == 16
    with pytest.raises(DataError, match="not empty"):
        make_toy_action_genome(root, videos=6, seed=3)
    before = tree(root)
    make_toy_action_genome(root, videos=6, seed=4, overwrite=True)
    after = tree(root)
    assert after != before and "features/det/class_dists.bin" in after
    (root / "mine.txt").write_text("kept")
    make_toy_action_genome(root, videos=6, seed=4, overwrite=True)
    assert (root / "mine.txt").read_text() == "kept"
    with pytest.raises(ValueError, match="videos"):
        make_toy_action_genome(tmp_path / "x", videos=0)


def test_videos_none_means_default(tmp_path, toy_root):
    root = make_toy_action_genome(tmp_path / "d", videos=None, with_detections=False)
    assert (root / "annotations" / "person_bbox.pkl").read_bytes() == (
        toy_root / "annotations" / "person_bbox.pkl"
    ).read_bytes()


# ------------------------------------------------------------------------------------------------
# Learnable signal


def test_features_carry_signal(tmp_path):
    """Nearest-class-mean on object features and least squares on union features beat priors."""
    root = make_toy_action_genome(tmp_path / "big", videos=80, seed=5, with_detections=False)

    def collect(split):
        xs, ys, us, ps = [], [], [], []
        for s in ActionGenome(root, split, features=root / "features"):
            xs.append(s.features.box_features[s.features.pair_idx[:, 1]])
            ys.append(s.gt.obj_class)
            feats = s.features
            counts = feats.box_counts()
            rows = feats.union_offsets[feats.im_idx] + union_index(
                feats.pair_idx[:, 0] - (np.cumsum(counts) - counts)[feats.im_idx],
                feats.pair_idx[:, 1] - (np.cumsum(counts) - counts)[feats.im_idx],
                counts[feats.im_idx],
                False,
            )
            us.append(feats.union_maps[rows].reshape(len(rows), -1))
            multi = np.zeros((s.gt.num_objects, 26))
            multi[s.gt.rel_obj, s.gt.rel_pred] = 1
            ps.append(multi)
        return [np.concatenate(a) for a in (xs, ys, us, ps)]

    x_tr, y_tr, u_tr, p_tr = collect("train")
    x_te, y_te, u_te, p_te = collect("test")
    classes = np.unique(y_tr)
    means = np.stack([x_tr[y_tr == c].mean(axis=0) for c in classes])
    dist = ((x_te[:, None, :] - means[None]) ** 2).sum(-1)
    accuracy = (classes[dist.argmin(axis=1)] == y_te).mean()
    majority = (y_te == np.bincount(y_tr).argmax()).mean()
    assert accuracy > 2 * majority and accuracy < 0.999

    w, *_ = np.linalg.lstsq(np.c_[u_tr, np.ones(len(u_tr))], p_tr, rcond=None)
    scores = np.c_[u_te, np.ones(len(u_te))] @ w
    attention = (scores[:, :3].argmax(1) == p_te[:, :3].argmax(1)).mean()
    prior = p_te[:, :3].mean(0).max()
    assert attention > prior + 0.2


def test_dataset_pickles_for_worker_processes(toy_root):
    ds = ActionGenome(toy_root, "test", features=toy_root / "features")
    clone = pickle.loads(pickle.dumps(ds))
    a, b = ds[2], clone[2]
    assert a.gt.frame_keys == b.gt.frame_keys
    np.testing.assert_array_equal(a.gt.rel_pred, b.gt.rel_pred)
    np.testing.assert_array_equal(a.features.union_maps, b.features.union_maps)

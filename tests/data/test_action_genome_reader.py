"""The Action Genome reader against hand-made folders with every quirk of the release."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from m3sgg.data.action_genome import ActionGenome, VideoSample, read_class_file
from m3sgg.data.features import FeatureStoreWriter, FrameFeatures, union_pairs
from m3sgg.errors import ConfigError, DataError
from m3sgg.vocab import AG_OBJECT_CLASSES, AG_PREDICATES, squash

CLS = {name: i for i, name in enumerate(AG_OBJECT_CLASSES)}
PRED = {name: i for i, name in enumerate(AG_PREDICATES)}


def three_frames(ag, video="AAAAA.mp4", split="train", start=1):
    return ag.frames(video, range(start, start + 3), split=split)


# ------------------------------------------------------------------------------------------------
# Names, boxes, relations


def test_spellings_boxes_and_relations(ag):
    key0 = "VID01.mp4/000010.png"
    objects = {
        key0: [
            ag.obj(
                "paper/notebook",
                (10.5, 20.25, 30.0, 40.0),
                ["not_looking_at"],
                ["in_front_of", "on_the_side_of"],
                ["have_it_on_the_back", "sitting_on"],
                key=key0,
            ),
            ag.obj("sofa/couch", visible=False, key=key0),
            ag.obj("closet/cabinet", (0, 0, 5, 6), ["unsure"], [], [], key=key0),
        ],
        **ag.frames(
            "VID01.mp4",
            [11, 12],
            cls="phone/camera",
            att=["looking_at"],
            spa=["beneath"],
            con=["not_contacting", "other_relationship"],
        ),
    }
    persons = {k: ag.person() for k in objects}
    persons[key0] = ag.person([[5, 6, 50, 60], [0, 0, 1, 1]])  # two rows: the first is used
    ds = ActionGenome(ag.write(objects, persons), "train")
    assert len(ds) == 1 and ds.video_ids == ["VID01.mp4"]
    sample = ds[0]
    assert isinstance(sample, VideoSample) and sample.features is None and sample.det is None
    gt = sample.gt
    assert gt.video_id == sample.video_id == "VID01.mp4" and sample.index == 0
    assert gt.frame_keys == (key0, "VID01.mp4/000011.png", "VID01.mp4/000012.png")
    assert gt.person_boxes.dtype == np.float32
    np.testing.assert_array_equal(gt.person_boxes[0], [5, 6, 50, 60])
    np.testing.assert_array_equal(gt.person_boxes[1], ag.PERSON[0])
    assert gt.obj_frame.tolist() == [0, 0, 1, 2]
    assert gt.obj_class.tolist() == [
        CLS["paper/notebook"],
        CLS["closet/cabinet"],
        CLS["phone/camera"],
        CLS["phone/camera"],
    ]
    assert gt.obj_boxes.dtype == np.float64
    np.testing.assert_array_equal(gt.obj_boxes[0], [10.5, 20.25, 40.5, 60.25])  # xywh -> xyxy
    np.testing.assert_array_equal(gt.obj_boxes[1], [0, 0, 5, 6])
    np.testing.assert_array_equal(gt.obj_boxes[2], [10, 20, 40, 60])
    assert gt.rel_obj.tolist() == [0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert gt.rel_pred.tolist() == [
        PRED["not_looking_at"],
        PRED["in_front_of"],
        PRED["on_the_side_of"],
        PRED["have_it_on_the_back"],
        PRED["sitting_on"],
        PRED["unsure"],
        *[PRED["looking_at"], PRED["beneath"], PRED["not_contacting"], PRED["other_relationship"]]
        * 2,
    ]
    # the metrics' view: group-local labels per object
    frames = gt.to_sttran()
    assert frames[0][1]["spatial_relationship"] == [2, 4]
    assert frames[0][1]["contacting_relationship"] == [4, 10]
    assert frames[0][2]["spatial_relationship"] == [] == frames[0][2]["contacting_relationship"]


def test_class_files_accept_either_spelling_and_blank_tail(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("\r\n".join(["person", "bag", "cup/glass/bottle"]) + "\r\n\r\n")
    assert read_class_file(path, ["person", "bag", "cup/glass/bottle"])[2] == "cup/glass/bottle"


def test_squashed_names_inside_pickles_are_accepted(ag):
    objects = ag.frames(
        "V.mp4",
        [1, 2, 3],
        cls="cupglassbottle",
        att=["lookingat"],
        spa=["infrontof"],
        con=["drinkingfrom"],
    )
    gt = ActionGenome(ag.write(objects), "train")[0].gt
    assert set(gt.obj_class.tolist()) == {CLS["cup/glass/bottle"]}
    assert gt.rel_pred.tolist()[:3] == [
        PRED["looking_at"],
        PRED["in_front_of"],
        PRED["drinking_from"],
    ]


# ------------------------------------------------------------------------------------------------
# Filtering protocol, split, order


def test_filtering_protocol(ag):
    objects = {}
    # A: 5 frames, 2 unusable (no person; only invisible objects) -> 3 kept: video kept
    objects.update(ag.frames("AAAAA.mp4", range(1, 6)))
    objects["AAAAA.mp4/000002.png"] = [ag.obj(visible=False), ag.obj("bag", visible=False)]
    # B: 4 frames, 2 unusable (no person; empty object list) -> 2 kept: dropped (needs > 2)
    objects.update(ag.frames("BBBBB.mp4", range(1, 5)))
    objects["BBBBB.mp4/000004.png"] = []
    # C: exactly 3 frames -> kept; D: 2 frames -> dropped
    objects.update(ag.frames("CCCCC.mp4", range(1, 4)))
    objects.update(ag.frames("DDDDD.mp4", range(1, 3)))
    persons = {k: ag.person() for k in objects}
    persons["AAAAA.mp4/000004.png"] = ag.person(np.zeros((0, 4)))
    persons["BBBBB.mp4/000001.png"] = ag.person(np.zeros((0, 4)))
    ds = ActionGenome(ag.write(objects, persons), "train")
    assert ds.video_ids == ["AAAAA.mp4", "CCCCC.mp4"]
    assert ds.frame_keys() == [
        "AAAAA.mp4/000001.png",
        "AAAAA.mp4/000003.png",
        "AAAAA.mp4/000005.png",
        "CCCCC.mp4/000001.png",
        "CCCCC.mp4/000002.png",
        "CCCCC.mp4/000003.png",
    ]
    stats = ds.stats()
    assert (stats["videos"], stats["frames"], stats["objects"]) == (2, 6, 6)
    assert stats["relations"] == {"attention": 6, "spatial": 6, "contacting": 6}
    assert stats["object_classes"]["cup/glass/bottle"] == 6 and stats["object_classes"]["bag"] == 0
    assert stats["predicates"]["holding"] == 6 and len(stats["predicates"]) == 26


def test_split_comes_from_metadata_and_order_is_sorted(ag):
    objects = {}
    # written in reverse order: the reader sorts frames within videos and videos by id
    for video, split in (
        ("ZZZZZ.mp4", "test"),
        ("MMMMM.mp4", "train"),
        ("BBBBB.mp4", "test"),
        ("AAAAA.mp4", "train"),
    ):
        for n in (30, 7, 12, 100):
            key = f"{video}/{n:06d}.png"
            objects[key] = [ag.obj(split=split, key=key)]
    root = ag.write(objects)
    train, test = ActionGenome(root, "train"), ActionGenome(root, "test")
    assert train.video_ids == ["AAAAA.mp4", "MMMMM.mp4"]
    assert test.video_ids == ["BBBBB.mp4", "ZZZZZ.mp4"]
    assert test[1].gt.frame_keys == tuple(f"ZZZZZ.mp4/{n:06d}.png" for n in (7, 12, 30, 100))
    assert test[-1].video_id == "ZZZZZ.mp4"
    with pytest.raises(IndexError):
        test[2]
    assert [s.video_id for s in train] == train.video_ids
    with pytest.raises(ConfigError, match="split"):
        ActionGenome(root, "val")
    with pytest.raises(ConfigError, match="min_box_size"):
        ActionGenome(root, "train", filter_small_boxes=True, min_box_size=float("nan"))


def test_small_box_filter(ag):
    objects = {}
    for n in range(1, 4):
        key = f"AAAAA.mp4/{n:06d}.png"
        objects[key] = [
            ag.obj("bag", (0, 0, 15.9, 100), key=key),  # narrow: dropped
            ag.obj("bed", (0, 0, 16, 16), key=key),  # exactly 16: kept
            ag.obj("book", (0, 0, 100, 3), key=key),  # flat: dropped
        ]
    # B: its third frame holds only a small object -> 2 frames left -> video dropped
    objects.update(ag.frames("BBBBB.mp4", range(1, 3)))
    objects["BBBBB.mp4/000003.png"] = [ag.obj(bbox=(5, 5, 4, 4))]
    root = ag.write(objects)
    plain = ActionGenome(root, "train")
    assert plain.video_ids == ["AAAAA.mp4", "BBBBB.mp4"] and plain.stats()["objects"] == 12
    filtered = ActionGenome(root, "train", filter_small_boxes=True)
    assert filtered.video_ids == ["AAAAA.mp4"]
    gt = filtered[0].gt
    assert (
        gt.obj_class.tolist() == [CLS["bed"]] * 3
        and gt.rel_obj.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    )
    loose = ActionGenome(root, "train", filter_small_boxes=True, min_box_size=3)
    assert loose.stats()["objects"] == 12
    strict = ActionGenome(root, "train", filter_small_boxes=True, min_box_size=17)
    assert len(strict) == 0 and strict.stats()["frames"] == 0


def test_require_frames(ag):
    objects = {**ag.frames("AAAAA.mp4", range(1, 5)), **ag.frames("BBBBB.mp4", range(1, 5))}
    root = ag.write(objects)
    for key in [
        "AAAAA.mp4/000001.png",
        "AAAAA.mp4/000002.png",
        "AAAAA.mp4/000004.png",
        "BBBBB.mp4/000001.png",
        "BBBBB.mp4/000003.png",
    ]:
        (root / "frames" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "frames" / key).write_bytes(b"png")
    assert len(ActionGenome(root, "train")) == 2  # files not looked at by default
    ds = ActionGenome(root, "train", require_frames=True)
    assert ds.frame_keys() == [
        "AAAAA.mp4/000001.png",
        "AAAAA.mp4/000002.png",
        "AAAAA.mp4/000004.png",
    ]


def test_changed_files_are_read_again(ag):
    root = ag.write(three_frames(ag))
    assert ActionGenome(root, "train").stats()["objects"] == 3
    ActionGenome(root, "test")  # served from the cache
    ag.write({**three_frames(ag), **three_frames(ag, "BBBBB.mp4")})
    assert ActionGenome(root, "train").stats()["objects"] == 6


def test_samples_are_copies(ag):
    ds = ActionGenome(ag.write(three_frames(ag)), "train")
    ds[0].gt.obj_boxes[:] = -1
    assert (ds[0].gt.obj_boxes >= 0).all()


# ------------------------------------------------------------------------------------------------
# Errors: one line naming the file and the field


def error_of(root, split="train", **kw) -> DataError:
    with pytest.raises(DataError) as info:
        ActionGenome(root, split, **kw)
    return info.value


OBJ_PKL = "object_bbox_and_relationship.pkl"
KEY = "AAAAA.mp4/000002.png"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (dict(cls="cup"), f"frame '{KEY}' object 1 class", "unknown object class 'cup'"),
        (dict(cls="person"), f"frame '{KEY}' object 1 class", "person is not an object"),
        (
            dict(att=["staring_at"]),
            f"frame '{KEY}' object 1 attention_relationship",
            "unknown attention predicate 'staring_at'",
        ),
        (
            dict(con=["holding", "in_front_of"]),
            f"frame '{KEY}' object 1 contacting_relationship",
            "unknown contacting predicate 'in_front_of'",
        ),
        (dict(spa=None), f"frame '{KEY}' object 1 spatial_relationship", "expected a list"),
        (dict(bbox=None), f"frame '{KEY}' object 1 bbox", "visible object without a box"),
        (dict(bbox=(1.0, float("nan"), 3.0, 4.0)), f"frame '{KEY}' object 1 bbox", "non-finite"),
        (dict(bbox=(1.0, 2.0, -3.0, 4.0)), f"frame '{KEY}' object 1 bbox", "negative width"),
        (dict(bbox=(1.0, 2.0, 3.0)), f"frame '{KEY}' object 1 bbox", "expected an (x, y, w, h)"),
        (dict(split="val"), f"frame '{KEY}' object 0 metadata.set", "'train' or 'test'"),
    ],
)
def test_bad_object_fields(ag, change, field, words):
    objects = three_frames(ag)
    change = dict(change)
    split = change.pop("split", "train")
    objects[KEY] = [ag.obj("bag", key=KEY, split=split), ag.obj(key=KEY, **change)]
    err = error_of(ag.write(objects))
    assert err.path.endswith(OBJ_PKL) and err.field == field and words in err.message
    assert str(err).startswith(err.path) and "\n" not in str(err)


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        ("not a list", f"frame '{KEY}'", "expected a list of objects"),
        (["not a dict"], f"frame '{KEY}' object 0", "expected an object dict"),
        ([{"class": "bag"}], f"frame '{KEY}' object 0 metadata", "missing metadata"),
    ],
)
def test_bad_frame_records(ag, entry, field, words):
    objects = three_frames(ag)
    objects[KEY] = entry
    err = error_of(ag.write(objects))
    assert err.path.endswith(OBJ_PKL) and err.field == field and words in err.message


def test_wrong_top_level_types(ag):
    root = ag.write(three_frames(ag))
    with open(root / "annotations" / OBJ_PKL, "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    err = error_of(root)
    assert err.path.endswith(OBJ_PKL) and err.field == "top level" and "found list" in err.message
    root = ag.write(three_frames(ag), persons=[])
    err = error_of(root)
    assert err.path.endswith("person_bbox.pkl") and err.field == "top level"


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        (None, f"frame '{KEY}'", "has no entry"),
        ({"box": 1}, f"frame '{KEY}'", "expected a dict with 'bbox'"),
        ({"bbox": "xyxy"}, f"frame '{KEY}' bbox", "expected a (k, 4) xyxy array"),
        ({"bbox": np.array([[np.inf, 0, 1, 1]], np.float32)}, f"frame '{KEY}' bbox", "non-finite"),
        ({"bbox": np.array([[5, 0, 1, 1]], np.float32)}, f"frame '{KEY}' bbox", "x2 < x1"),
    ],
)
def test_bad_person_entries(ag, entry, field, words):
    objects = three_frames(ag)
    persons = {k: ag.person() for k in objects}
    if entry is None:
        del persons[KEY]
    else:
        persons[KEY] = entry
    err = error_of(ag.write(objects, persons))
    assert err.path.endswith("person_bbox.pkl") and err.field == field and words in err.message


def test_person_box_as_list_is_accepted(ag):
    objects = three_frames(ag)
    persons = {k: {"bbox": [[1.0, 2.0, 3.0, 4.0]]} for k in objects}
    gt = ActionGenome(ag.write(objects, persons), "train")[0].gt
    np.testing.assert_array_equal(gt.person_boxes, [[1, 2, 3, 4]] * 3)


def test_missing_files(ag, tmp_path):
    err = error_of(tmp_path / "nowhere")
    assert "annotations" in err.path and "not found" in err.message
    root = ag.write(three_frames(ag))
    (root / "annotations" / "person_bbox.pkl").unlink()
    err = error_of(root)
    assert err.path.endswith("person_bbox.pkl") and "not found" in err.message
    (root / "annotations" / "object_classes.txt").unlink()
    err = error_of(root)
    assert err.path.endswith("object_classes.txt") and "not found" in err.message


def test_class_files_with_a_wrong_line(ag):
    lines = [squash(c) for c in AG_OBJECT_CLASSES[1:]]
    lines[10] = "cupglass"
    err = error_of(ag.write(three_frames(ag), class_lines=lines))
    assert err.path.endswith("object_classes.txt") and err.field == "line 11"
    assert "'cupglassbottle'" in err.message and "'cupglass'" in err.message
    err = error_of(
        ag.write(three_frames(ag), predicate_lines=[squash(p) for p in AG_PREDICATES[:-1]])
    )
    assert err.path.endswith("relationship_classes.txt") and err.field == "line 26"
    assert "expected 26 names, found 25" in err.message


def test_truncated_pickle(ag):
    root = ag.write(three_frames(ag))
    path = root / "annotations" / OBJ_PKL
    path.write_bytes(path.read_bytes()[:-40])
    err = error_of(root)
    assert err.path.endswith(OBJ_PKL) and "truncated" in err.message


# ------------------------------------------------------------------------------------------------
# Feature store


def write_store(
    path: Path,
    ds: ActionGenome,
    extra_boxes: dict[str, int] | None = None,
    skip: str | None = None,
    dim: int = 4,
) -> Path:
    """A store matching ``ds`` (box features = box coordinates; union map of boxes (i, j) of a
    frame: channel 0 = 10 * i + j), optionally off by some boxes."""
    extra_boxes = extra_boxes or {}
    with FeatureStoreWriter(path, object_dim=dim, union_channels=1, union_size=1) as writer:
        for sample in ds:
            gt = sample.gt
            for f, key in enumerate(gt.frame_keys):
                if key == skip:
                    continue
                boxes = np.concatenate(
                    [gt.person_boxes[f : f + 1], gt.obj_boxes[gt.obj_frame == f]]
                )
                boxes = np.concatenate([boxes, np.zeros((extra_boxes.get(key, 0), 4))])
                n = len(boxes) - 1
                pairs = np.stack([np.zeros(n, int), np.arange(1, n + 1)], axis=1)
                _, first, second = union_pairs(np.array([n + 1]), diagonal=False)
                maps = (10 * first + second).astype(np.float32).reshape(-1, 1, 1, 1)
                dists = np.full((n + 1, 36), 1 / 36, np.float32)
                writer.add_frame(
                    key, FrameFeatures(boxes, boxes.astype(np.float32), pairs, maps, dists)
                )
    return path


def test_features_attach_and_match(ag, tmp_path):
    root = ag.write({**three_frames(ag), **three_frames(ag, "BBBBB.mp4")})
    store = write_store(tmp_path / "store", ActionGenome(root, "train"))
    ds = ActionGenome(root, "train", features=store)
    sample = ds[1]
    assert sample.det is None and sample.features.frame_keys == sample.gt.frame_keys
    np.testing.assert_array_equal(sample.features.boxes[:, 1:][1::2], sample.gt.obj_boxes)


def test_features_missing_frame(ag, tmp_path):
    root = ag.write(three_frames(ag))
    store = write_store(tmp_path / "store", ActionGenome(root, "train"), skip=KEY)
    err = error_of(root, features=store)
    assert KEY in err.message and "has no frame" in err.message


def test_features_box_count_mismatch(ag, tmp_path):
    root = ag.write(three_frames(ag))
    store = write_store(tmp_path / "store", ActionGenome(root, "train"), extra_boxes={KEY: 1})
    err = error_of(root, features=store)
    assert err.path == os.fspath(store) and err.field == f"frame '{KEY}'"
    assert "holds 3 boxes" in err.message and "1 person + 1 visible objects" in err.message


def test_features_follow_the_small_box_filter(ag, tmp_path):
    objects = {}
    for n in range(1, 4):
        key = f"AAAAA.mp4/{n:06d}.png"
        objects[key] = [
            ag.obj("bag", (1, 1, 5, 50), key=key),
            ag.obj("bed", (2, 2, 20, 20), key=key),
            ag.obj("box", visible=False, key=key),
            ag.obj("book", (3, 3, 2, 2), key=key),
        ]
    root = ag.write(objects)
    store = write_store(tmp_path / "store", ActionGenome(root, "train"))
    sample = ActionGenome(root, "train", features=store, filter_small_boxes=True)[0]
    feats, gt = sample.features, sample.gt
    assert gt.obj_class.tolist() == [CLS["bed"]] * 3
    assert feats.num_boxes == 6 and feats.num_pairs == 3
    np.testing.assert_array_equal(feats.box_features[1::2], gt.obj_boxes)  # features = boxes
    np.testing.assert_array_equal(feats.pair_idx, [[0, 1], [2, 3], [4, 5]])
    assert feats.im_idx.tolist() == [0, 1, 2]
    # Store boxes per frame: person 0, bag 1, bed 2, book 3; only (person, bed) = row "2" stays.
    assert feats.union_maps.reshape(-1).tolist() == [2.0, 2.0, 2.0]
    assert feats.union_offsets.tolist() == [0, 1, 2, 3]


def test_image_size_from_the_first_frame_bbox_size(ag):
    objects = {**three_frames(ag), **three_frames(ag, video="BBBBB.mp4")}
    persons = {k: ag.person() for k in objects}
    first_b = "BBBBB.mp4/000001.png"
    persons[first_b] = {**persons[first_b], "bbox_size": (640, 360.5)}  # (w, h)
    for key in [k for k in objects if k.startswith("BBBBB")][1:]:
        persons[key] = {**persons[key], "bbox_size": (1, 1)}  # later frames are not read
    ds = ActionGenome(ag.write(objects, persons), "train")
    sizes = {ds[i].video_id: ds[i].gt.image_size for i in range(len(ds))}
    assert sizes == {"AAAAA.mp4": (270.0, 480.0), "BBBBB.mp4": (360.5, 640.0)}


@pytest.mark.parametrize("size", [None, (0, 270), "big", (480,)])
def test_image_size_is_none_without_a_usable_bbox_size(ag, size):
    objects = three_frames(ag)
    persons = {k: ag.person() for k in objects}
    for key in persons:
        persons[key] = {**persons[key], "bbox_size": size}
    ds = ActionGenome(ag.write(objects, persons), "train")
    assert ds[0].gt.image_size is None

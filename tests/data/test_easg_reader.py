"""EASG reader: vocabularies, both views with every quirk of the release, and bad input."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from m3sgg.data.easg import (
    EASG,
    FRAME_TYPES,
    EASGVocab,
    load_vocab,
    read_labels,
    strip_instance,
)
from m3sgg.errors import ConfigError, DataError
from m3sgg.vocab import EASG_RELATIONS

VERBS = ("take", "cut", "wash")  # file order, deliberately unsorted
OBJECTS = ("TABLE", "knife", "onion", "table")
ROI_DIM, VERB_DIM = 4, 3
REL = {name: i for i, name in enumerate(EASG_RELATIONS)}


def write_vocab(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "verbs.txt").write_text("\n".join(VERBS) + "\n")
    (root / "objects.txt").write_text("\n".join(OBJECTS) + "\n")
    (root / "relationships.txt").write_text("\n".join(EASG_RELATIONS) + "\n")


def box(left: float, top: float, width: float, height: float) -> dict[str, float]:
    return {"left": left, "top": top, "width": width, "height": height}


def master_data() -> dict[str, Any]:
    """clipA (train, 200x100): every master quirk; clipB: val."""
    return {
        "clipA": {
            "split": "train",
            "W": 200,
            "H": 100,
            "graphs": [
                {
                    "graph_uid": "u1",
                    "pre": 90,
                    "pnr": 100,
                    "post": 110,
                    "triplets": [
                        ["CW", "verb", "cut"],
                        ["cutting", "dobj", "knife:1"],  # verb_node spelled differently
                        ["cut", "with", "knife:1"],  # same object, second edge
                        ["cut", "dobj", "knife:2"],  # second instance of the class
                        ["cut", "dobj", "knife:1"],  # verbatim repeat
                        ["Cut", "dobj", "knife:1"],  # repeat with another verb_node
                        ["cut", "on", "onion"],  # never grounded
                        ["cut", "with", "spork:1"],  # not in objects.txt
                        ["cut", "in", "table"],  # lower-case table, grounded only in post
                    ],
                    "groundings": {
                        "pre": {},  # empty frame type
                        "pnr": {
                            "knife:1": box(20, 10, 40, 20),
                            "knife:2": box(100, 50, 20, 10),
                            "hand:1": box(0, 0, 10, 10),  # not a triplet object
                            "TABLE": box(0, 0, 200, 100),  # other class than "table"
                        },
                        "post": {"table": box(50, 25, 100, 50)},
                    },
                },
                {
                    "graph_uid": "u2",
                    "pre": 1,
                    "pnr": 2,
                    "post": 3,
                    "triplets": [],
                    "groundings": {},
                },
                {
                    "graph_uid": "u3",
                    "pre": 1,
                    "pnr": 2,
                    "post": 3,
                    "triplets": [["CW", "verb", "take"], ["take", "dobj", "spork:1"]],
                    "groundings": {"pnr": {"spork:1": box(0, 0, 5, 5)}},
                },
                {
                    "graph_uid": "u4",
                    "pre": None,
                    "pnr": 300,
                    "post": 310,
                    "triplets": [["CW", "verb", "take"], ["take", "from", "TABLE"]],
                    # no "groundings" key at all
                },
            ],
        },
        "clipB": {
            "split": "val",
            "W": 100,
            "H": 100,
            "graphs": [
                {
                    "graph_uid": "u5",
                    "pre": 5,
                    "pnr": 6,
                    "post": 7,
                    "triplets": [["CW", "verb", "wash"], ["wash", "in", "onion"]],
                    "groundings": {"pre": {"onion": box(10, 10, 10, 10)}},
                }
            ],
        },
    }


def write_master(root: Path, data: Any, name: str = "EASG_unict_master_final.json") -> Path:
    write_vocab(root)
    path = root / name
    path.write_text(json.dumps(data))
    return path


def f32(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)


def feat(value: float, k: int = 1) -> np.ndarray:
    return np.full((k, ROI_DIM), value, dtype=np.float32)


def sgg_data() -> tuple[dict, dict, dict]:
    """(easg_train.pkl, roi_feats_train.pkl, verb_features.pt) with every SGG quirk."""
    knife1 = {"pnr": f32([[0.1, 0.1, 0.2, 0.2]]), "pre": f32([[0.0, 0.0, 0.5, 0.5]])}
    knife1_feat = {"pnr": feat(1.0), "pre": feat(5.0)}
    easg = {
        # two annotations on one PNR frame with different verbs: split by verb
        "clip-a_000100": {
            "annotations": {
                "aidA1": [
                    {"obj": "knife", "bbox": knife1, "verb": "cut", "rel": "dobj"},
                    {"obj": "knife", "bbox": knife1, "verb": "cut", "rel": "with"},
                    {
                        "obj": "knife",
                        "bbox": {"pnr": f32([[0.5, 0.5, 0.1, 0.1]])},
                        "verb": "cut",
                        "rel": "dobj",
                    },
                    {"obj": "onion", "bbox": {}, "verb": "cut", "rel": "on"},
                    {"obj": "knife", "bbox": knife1, "verb": "cut", "rel": "dobj"},  # repeat
                ],
                "aidA2": [
                    {
                        "obj": "TABLE",
                        "bbox": {"post": f32([[0.2, 0.2, 0.2, 0.2]])},
                        "verb": "take",
                        "rel": "from",
                    },
                ],
            },
            "clip_frame_number": {"pre": 90, "pnr": 100, "post": 110},
        },
        # two annotations with the same verb: one sample
        "clip_b_000200": {
            "annotations": {
                "aidB1": [
                    {
                        "obj": "table",
                        "bbox": {"pre": f32([[0.1, 0.1, 0.1, 0.1], [0.6, 0.6, 0.2, 0.2]])},
                        "verb": "wash",
                        "rel": "in",
                    },
                ],
                "aidB2": [
                    {
                        "obj": "knife",
                        "bbox": {"post": f32([[0.3, 0.3, 0.1, 0.1]])},
                        "verb": "wash",
                        "rel": "with",
                    },
                ],
            },
            "clip_frame_number": {"pre": 190, "pnr": 200, "post": 210},
        },
    }
    roi = {
        "clip-a_000100": {
            "aidA1": [knife1_feat, knife1_feat, {"pnr": feat(3.0)}, {}, knife1_feat],
            "aidA2": [{"post": feat(7.0)}],
        },
        "clip_b_000200": {
            "aidB1": [{"pre": np.concatenate([feat(2.0), feat(4.0)])}],
            "aidB2": [{"post": feat(9.0)}],
        },
    }
    verbs = {
        "aidA1": torch.tensor([1.0, 0.0, 0.0]),
        "aidA2": torch.tensor([0.0, 1.0, 0.0]),
        "aidB1": torch.tensor([1.0, 2.0, 3.0]),
        "aidB2": torch.tensor([3.0, 4.0, 5.0]),
    }
    return easg, roi, verbs


def write_sgg(root: Path, easg: Any, roi: Any = None, verbs: Any = None) -> Path:
    write_vocab(root)
    (root / "easg_train.pkl").write_bytes(pickle.dumps(easg))
    if roi is not None:
        (root / "roi_feats_train.pkl").write_bytes(pickle.dumps(roi))
    if verbs is not None:
        torch.save(verbs, root / "verb_features.pt")
    return root


def open_sgg(root: Path, features: bool = True) -> EASG:
    return EASG(root, "train", features=features, roi_dim=ROI_DIM, verb_dim=VERB_DIM)


def by_id(ds: EASG) -> dict:
    return {s.gt.graph_id: s for s in ds}


def edge_names(sample, i: int) -> set[str]:
    return {EASG_RELATIONS[r] for r in np.flatnonzero(sample.gt.edges[i])}


# -- vocabularies ----------------------------------------------------------------------------


def test_labels_keep_file_order_and_case(tmp_path):
    path = tmp_path / "objects.txt"
    path.write_bytes(b"table\r\nTABLE\r\ncutting board\r\n")
    assert read_labels(path) == ("table", "TABLE", "cutting board")
    path.write_text("b\na")  # no final newline
    assert read_labels(path) == ("b", "a")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a\nb\na\n", 3, "duplicate label 'a' (first on line 1)"),
        ("a\n\nb\n", 2, "empty label"),
        ("a\n  \nb\n", 2, "empty label"),
        ("a\nb\n\n", 3, "empty label"),
    ],
)
def test_bad_label_file_names_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "verbs.txt"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_labels(path)
    assert str(err.value) == f"{path}: line {line}: {message}"


def test_vocab_from_files_only(tmp_path):
    write_vocab(tmp_path)
    vocab = load_vocab(tmp_path)
    verbs, objects, relations = vocab
    assert (verbs, objects, relations) == (VERBS, OBJECTS, EASG_RELATIONS)
    assert vocab.object_index["TABLE"] != vocab.object_index["table"]
    assert vocab == EASGVocab(VERBS, OBJECTS, EASG_RELATIONS)
    (tmp_path / "objects.txt").unlink()
    with pytest.raises(DataError, match=r"objects\.txt: file not found"):
        load_vocab(tmp_path)


def test_strip_instance():
    assert strip_instance("knife:12") == "knife"
    assert strip_instance("knife") == "knife"
    assert strip_instance("a:b") == "a:b"


# -- master view -----------------------------------------------------------------------------


def test_master_quirks(tmp_path):
    write_master(tmp_path, master_data())
    ds = EASG(tmp_path, "train", source="master", vocab="files")
    assert ds.features is False and len(ds) == 2
    samples = by_id(ds)
    assert list(samples) == ["u1", "u4"]
    s = samples["u1"]
    assert ds.vocab.verbs[s.gt.verb] == "cut" and s.clip_id == "clipA"
    assert s.annotation_ids == ("u1",) and s.frame_numbers.tolist() == [90, 100, 110]
    # instances merged, classes ascending: knife (1), onion (2), table (3); spork dropped
    assert [OBJECTS[o] for o in s.gt.objects] == ["knife", "onion", "table"]
    assert [edge_names(s, i) for i in range(3)] == [{"dobj", "with"}, {"on"}, {"in"}]
    assert s.gt.num_triplets == 4
    assert s.boxes.dtype == np.float32 and s.boxes.shape == (3, 3, 4)
    # knife in pnr: enclosing box of knife:1 (20,10,60,30) and knife:2 (100,50,120,60) in 200x100
    np.testing.assert_allclose(s.boxes[0, 1], [0.1, 0.1, 0.6, 0.6], atol=1e-7)
    np.testing.assert_allclose(s.boxes[2, 2], [0.25, 0.25, 0.75, 0.75], atol=1e-7)
    assert s.grounded.tolist() == [[False, True, False], [False] * 3, [False, False, True]]
    assert s.frame_mask.tolist() == [False, True, True]
    assert s.obj_features is None and s.verb_feature is None
    u4 = samples["u4"]
    assert [OBJECTS[o] for o in u4.gt.objects] == ["TABLE"]  # not "table"
    assert u4.frame_numbers.tolist() == [-1, 300, 310]
    assert np.isnan(u4.boxes).all()

    st = ds.stats()
    assert st["graphs"] == 2 and st["objects"] == 4 and st["triplets"] == 5
    assert st["verbs"] == {"take": 1, "cut": 1}
    assert st["object_classes"] == {"TABLE": 1, "knife": 1, "onion": 1, "table": 1}
    assert st["relations"] == {"dobj": 1, "from": 1, "in": 1, "on": 1, "with": 1}
    assert st["dropped_objects"] == {"spork": 2} and st["dropped_triplets"] == 2
    assert st["skipped_graphs"] == {"no_triplets": 1, "no_objects": 1}
    assert st["duplicate_triplets"] == 2
    assert st["ignored_groundings"] == 2  # hand:1 and TABLE in u1
    assert st["vocab_source"] == "files" and "vocabulary" not in st
    assert st["dropped_verbs"] == {} and st["dropped_edges"] == {}
    json.dumps(st)  # the CLI prints it as JSON

    val = EASG(tmp_path, "val", source="master")
    assert [s.gt.graph_id for s in val] == ["u5"]
    np.testing.assert_allclose(val[0].boxes[0, 0], [0.1, 0.1, 0.2, 0.2], atol=1e-7)


def test_master_file_names(tmp_path):
    write_master(tmp_path, master_data(), name="EASG_unict_master_final_upd.json")
    assert EASG(tmp_path, "val", source="master").path.name == "EASG_unict_master_final_upd.json"
    other = write_master(tmp_path / "x", {}, name="mine.json")
    assert len(EASG(tmp_path, "val", source="master", master_json=other)) == 0
    write_vocab(tmp_path / "empty")
    with pytest.raises(DataError, match=r"EASG_unict_master_final\.json: file not found"):
        EASG(tmp_path / "empty", source="master")


def test_arguments(tmp_path):
    write_master(tmp_path, master_data())
    with pytest.raises(ConfigError, match="split"):
        EASG(tmp_path, "test")
    with pytest.raises(ConfigError, match="source"):
        EASG(tmp_path, source="json")
    with pytest.raises(ConfigError, match="source='sgg'"):
        EASG(tmp_path, source="master", features=True)
    with pytest.raises(DataError, match="EASG folder not found"):
        EASG(tmp_path / "missing")


def _mutate(path: str, value: Any):
    """A function setting ``data[path...] = value`` (path of keys/indices separated by '/')."""

    def apply(data: Any) -> Any:
        keys = [int(k) if k.isdigit() else k for k in path.split("/")]
        target = data
        for key in keys[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
        return data

    return apply


_DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda d: [d], "top level", "expected a dict, got list"),
        (_mutate("clipA/split", "test"), "clip 'clipA' split", "split must be one of"),
        (_mutate("clipA/W", 0), "clip 'clipA' W", "positive frame size"),
        (_mutate("clipA/H", "100"), "clip 'clipA' H", "positive frame size"),
        (_mutate("clipA/graphs", {}), "clip 'clipA' graphs", "expected a list, got dict"),
        (_mutate("clipA/graphs/0/triplets/1", ["cut", "dobj"]),
         "clip 'clipA' graphs[0] triplets[1]", "expected [node, edge, node]"),
        (_mutate("clipA/graphs/0/triplets/0", ["cut", "dobj", "onion"]),
         "clip 'clipA' graphs[0] triplets", "no ['CW', 'verb', v] triplet"),
        (_mutate("clipA/graphs/0/triplets/2", ["CW", "verb", "take"]),
         "clip 'clipA' graphs[0] triplets[2]", "second verb 'take'"),
        (_mutate("clipA/graphs/0/groundings/pnr/knife:1/width", float("nan")),
         "clip 'clipA' graphs[0] groundings['pnr']['knife:1']", "NaN"),
        (_mutate("clipA/graphs/0/groundings/pnr/knife:2/height", -1),
         "clip 'clipA' graphs[0] groundings['pnr']['knife:2']", "negative width or height"),
        (_mutate("clipA/graphs/0/groundings/pnr/knife:2/left", _DELETE),
         "clip 'clipA' graphs[0] groundings['pnr']['knife:2'] left", "expected a number"),
        (_mutate("clipA/graphs/0/groundings/mid", {}),
         "clip 'clipA' graphs[0] groundings", "unknown frame type 'mid'"),
        (_mutate("clipA/graphs/0/groundings/post", ["table"]),
         "clip 'clipA' graphs[0] groundings['post']", "expected a dict, got list"),
        (_mutate("clipA/graphs/3/graph_uid", "u1"),
         "clip 'clipA' graphs[3] graph_uid", "graph_uid 'u1' repeats"),
        (_mutate("clipA/graphs/0/graph_uid", 7), "clip 'clipA' graphs[0] graph_uid",
         "expected a string id"),
        (_mutate("clipA/graphs/0/pnr", 100.5), "clip 'clipA' graphs[0] pnr",
         "integer frame number"),
    ],
)  # fmt: skip
def test_master_bad_input(tmp_path, mutate, field, message):
    path = write_master(tmp_path, mutate(master_data()))
    with pytest.raises(DataError) as err:
        EASG(tmp_path, "train", source="master")
    assert err.value.path == str(path)
    assert err.value.field == field
    assert message in err.value.message
    assert str(err.value).startswith(f"{path}: {field}: ")


def unknown_names_data() -> dict[str, Any]:
    """The master fixture with names the vocabulary files do not list: a verb ("slice", u4's,
    first seen in clipA after cut and take) and two edges ("beside" on a known object, "under"
    only on an unknown one)."""
    data = master_data()
    data["clipA"]["graphs"][0]["triplets"].append(["cut", "beside", "onion"])
    data["clipA"]["graphs"][0]["triplets"].append(["cut", "under", "spork"])
    data["clipA"]["graphs"][3]["triplets"][0] = ["CW", "verb", "slice"]
    return data


def test_master_vocab_by_first_appearance_like_the_release_reader(tmp_path):
    write_master(tmp_path, unknown_names_data())
    ds = EASG(tmp_path, "train", source="master")  # vocab="annotations" is the default
    # verbs over both splits in JSON order: cut (u1), take (u3), slice (u4), wash (clipB)
    assert ds.vocab.verbs == ("cut", "take", "slice", "wash")
    # edges of known objects in order: u1 dobj, with, (with spork: unknown object), on, in,
    # beside (under: only on spork); u4 from; clipB in
    assert ds.vocab.relations == ("dobj", "with", "on", "in", "beside", "from")
    assert ds.vocab.objects == OBJECTS  # objects.txt, as the release reader's object file
    samples = by_id(ds)
    assert list(samples) == ["u1", "u4"]  # nothing stopped at "slice" or "beside"
    u1, u4 = samples["u1"], samples["u4"]
    assert u1.gt.verb == 0 and u4.gt.verb == 2
    assert [OBJECTS[o] for o in u1.gt.objects] == ["knife", "onion", "table"]
    names = [{ds.vocab.relations[r] for r in np.flatnonzero(u1.gt.edges[i])} for i in range(3)]
    assert names == [{"dobj", "with"}, {"on", "beside"}, {"in"}]
    assert u1.gt.edges.shape == (3, 6)
    st = ds.stats()
    assert st["vocab_source"] == "annotations"
    assert st["vocabulary"] == {
        "verbs": list(ds.vocab.verbs),
        "relations": list(ds.vocab.relations),
    }
    assert st["dropped_objects"] == {"spork": 3}
    assert "dropped_edges" not in st and "dropped_verbs" not in st
    val = EASG(tmp_path, "val", source="master")
    assert val.vocab == ds.vocab  # both splits index alike
    assert val.vocab.verbs[val[0].gt.verb] == "wash"


def test_master_against_the_files_drops_and_counts_unknown_names(tmp_path):
    write_master(tmp_path, unknown_names_data())
    ds = EASG(tmp_path, "train", source="master", vocab="files")
    assert ds.vocab.verbs == VERBS and ds.vocab.relations == EASG_RELATIONS
    assert [s.gt.graph_id for s in ds] == ["u1"]  # u4 ("slice") skipped, not an error
    u1 = ds[0]
    assert [edge_names(u1, i) for i in range(3)] == [{"dobj", "with"}, {"on"}, {"in"}]
    st = ds.stats()
    assert st["dropped_verbs"] == {"slice": 1}
    assert st["skipped_graphs"] == {"no_triplets": 1, "no_objects": 1, "unknown_verb": 1}
    # "beside" on onion is an unlisted edge; "under" goes with its unknown object
    assert st["dropped_edges"] == {"beside": 1}
    assert st["dropped_objects"] == {"spork": 3}
    assert st["dropped_triplets"] == 4


def test_vocab_argument(tmp_path):
    write_master(tmp_path, master_data())
    with pytest.raises(ConfigError, match="vocab must be one of"):
        EASG(tmp_path, source="master", vocab="json")
    with pytest.raises(ConfigError, match="vocab='files'"):
        EASG(tmp_path, source="sgg", vocab="annotations")


def test_master_invalid_json(tmp_path):
    write_vocab(tmp_path)
    path = tmp_path / "EASG_unict_master_final.json"
    path.write_text('{"clipA": {"split": "train",\n "W": }')
    with pytest.raises(DataError, match=r"final\.json: line 2 column 7: not valid JSON"):
        EASG(tmp_path, source="master")


# -- SGG view --------------------------------------------------------------------------------


def test_sgg_quirks_and_features(tmp_path):
    ds = open_sgg(write_sgg(tmp_path, *sgg_data()))
    samples = by_id(ds)
    assert list(samples) == ["clip-a_000100:cut", "clip-a_000100:take", "clip_b_000200"]
    assert [s.index for s in ds] == [0, 1, 2]

    cut = samples["clip-a_000100:cut"]
    assert cut.clip_id == "clip-a" and cut.annotation_ids == ("aidA1",)
    assert cut.frame_numbers.tolist() == [90, 100, 110]
    assert [OBJECTS[o] for o in cut.gt.objects] == ["knife", "onion"]
    assert [edge_names(cut, i) for i in range(2)] == [{"dobj", "with"}, {"on"}]
    # knife: pre from knife1 only; pnr = enclosing box of the two instances
    np.testing.assert_allclose(cut.boxes[0, 0], [0.0, 0.0, 0.5, 0.5])
    np.testing.assert_allclose(cut.boxes[0, 1], [0.1, 0.1, 0.6, 0.6], rtol=1e-6)
    assert cut.grounded.tolist() == [[True, True, False], [False, False, False]]
    assert cut.obj_features.shape == (2, 3, ROI_DIM) and cut.obj_features.dtype == np.float32
    # mean over the distinct instances: knife1 (1.0, repeated in three entries) and knife2 (3.0)
    np.testing.assert_allclose(cut.obj_features[0, :, 0], [5.0, 2.0, 0.0])
    assert not cut.obj_features[1].any()  # ungrounded onion
    np.testing.assert_allclose(cut.verb_feature, [1.0, 0.0, 0.0])

    take = samples["clip-a_000100:take"]
    assert [OBJECTS[o] for o in take.gt.objects] == ["TABLE"]
    np.testing.assert_allclose(take.boxes[0, 2], [0.2, 0.2, 0.4, 0.4])

    merged = samples["clip_b_000200"]
    assert merged.annotation_ids == ("aidB1", "aidB2")
    assert [OBJECTS[o] for o in merged.gt.objects] == ["knife", "table"]
    np.testing.assert_allclose(merged.boxes[1, 0], [0.1, 0.1, 0.8, 0.8], rtol=1e-6)  # k = 2
    np.testing.assert_allclose(merged.obj_features[1, 0], np.full(ROI_DIM, 3.0))
    np.testing.assert_allclose(merged.obj_features[0, 2], np.full(ROI_DIM, 9.0))
    np.testing.assert_allclose(merged.verb_feature, [2.0, 3.0, 4.0])
    assert merged.verb_feature.dtype == np.float32

    st = ds.stats()
    assert st["graphs"] == 3 and st["objects"] == 5 and st["triplets"] == 6
    assert st["duplicate_triplets"] == 1
    assert st["split_graphs"] == 1 and st["merged_annotations"] == 1
    assert st["verbs"] == {"take": 1, "cut": 1, "wash": 1}
    assert st["relations"] == {"dobj": 1, "from": 1, "in": 1, "on": 1, "with": 2}


def test_sgg_without_features_needs_no_feature_files(tmp_path):
    easg, _, _ = sgg_data()
    ds = open_sgg(write_sgg(tmp_path, easg), features=False)
    assert len(ds) == 3 and ds[0].obj_features is None and ds[0].verb_feature is None
    with pytest.raises(DataError, match=r"roi_feats_train\.pkl: file not found"):
        open_sgg(tmp_path)


def test_sgg_and_master_agree(tmp_path):
    """The SGG view of the master fixture's u1 gives the same graph."""
    write_master(tmp_path, master_data())
    master = EASG(tmp_path, "train", source="master", vocab="files")[0]
    knife1, knife2 = f32([[0.1, 0.1, 0.2, 0.2]]), f32([[0.5, 0.5, 0.1, 0.1]])
    entries = [
        {"obj": "knife", "bbox": {"pnr": knife1}, "verb": "cut", "rel": "dobj"},
        {"obj": "knife", "bbox": {"pnr": knife1}, "verb": "cut", "rel": "with"},
        {"obj": "knife", "bbox": {"pnr": knife2}, "verb": "cut", "rel": "dobj"},
        {"obj": "knife", "bbox": {"pnr": knife1}, "verb": "cut", "rel": "dobj"},
        {"obj": "knife", "bbox": {"pnr": knife1}, "verb": "cut", "rel": "dobj"},
        {"obj": "onion", "bbox": {}, "verb": "cut", "rel": "on"},
        {"obj": "table", "bbox": {"post": f32([[0.25, 0.25, 0.5, 0.5]])}, "verb": "cut",
         "rel": "in"},
    ]  # fmt: skip
    record = {"annotations": {"u1": entries},
              "clip_frame_number": {"pre": 90, "pnr": 100, "post": 110}}  # fmt: skip
    sgg = open_sgg(write_sgg(tmp_path, {"clipA_000100": record}), features=False)[0]
    assert sgg.gt.graph_id == "clipA_000100" and sgg.annotation_ids == ("u1",)
    assert sgg.gt.verb == master.gt.verb
    np.testing.assert_array_equal(sgg.gt.objects, master.gt.objects)
    np.testing.assert_array_equal(sgg.gt.edges, master.gt.edges)
    np.testing.assert_allclose(sgg.boxes, master.boxes, atol=1e-6)
    np.testing.assert_array_equal(sgg.frame_numbers, master.frame_numbers)


KEY_A = "clip-a_000100"
A1 = f"graph {KEY_A!r} annotations['aidA1']"


@pytest.mark.parametrize(
    ("target", "mutate", "file", "field", "message"),
    [
        ("easg", lambda d: list(d), "easg_train.pkl", "top level", "expected a dict, got list"),
        ("easg", lambda d: {"nokey": d[KEY_A]}, "easg_train.pkl", "graph 'nokey'",
         "key is not '<clip_id>_<pnr frame>'"),
        ("easg", _mutate(f"{KEY_A}/annotations", []), "easg_train.pkl",
         f"graph {KEY_A!r} annotations", "expected a dict, got list"),
        ("easg", _mutate(f"{KEY_A}/clip_frame_number/pnr", "x"), "easg_train.pkl",
         f"graph {KEY_A!r} clip_frame_number pnr", "integer frame number"),
        ("easg", _mutate(f"{KEY_A}/annotations/aidA1/1/verb", "slice"), "easg_train.pkl",
         f"{A1}[1] verb", "'slice' is not in verbs.txt"),
        ("easg", _mutate(f"{KEY_A}/annotations/aidA1/1/obj", "spork"), "easg_train.pkl",
         f"{A1}[1] obj", "'spork' is not in objects.txt"),
        ("easg", _mutate(f"{KEY_A}/annotations/aidA1/1/rel", "beside"), "easg_train.pkl",
         f"{A1}[1] rel", "'beside' is not in relationships.txt"),
        ("easg", _mutate(f"{KEY_A}/annotations/aidA1/1/obj", None), "easg_train.pkl",
         f"{A1}[1] obj", "expected a string"),
        ("easg", _mutate(f"{KEY_A}/annotations/aidA1/2/bbox/pnr", f32([[0.1, np.nan, 0.1, 0.1]])),
         "easg_train.pkl", f"{A1}[2] bbox['pnr']", "NaN"),
        ("easg", _mutate(f"{KEY_A}/annotations/aidA1/2/bbox/pnr", f32([[0.1, 0.1, -0.1, 0.1]])),
         "easg_train.pkl", f"{A1}[2] bbox['pnr']", "negative width or height"),
        ("easg", _mutate(f"{KEY_A}/annotations/aidA1/2/bbox/pnr", f32([[0.1, 0.1, 0.1]])),
         "easg_train.pkl", f"{A1}[2] bbox['pnr']", "expected shape (k, 4)"),
        ("easg", _mutate(f"{KEY_A}/annotations/aidA1/2/bbox/mid", f32([[0.1, 0.1, 0.1, 0.1]])),
         "easg_train.pkl", f"{A1}[2] bbox", "unknown frame type 'mid'"),
        ("easg", _mutate(f"{KEY_A}/annotations/aidA1/2/bbox/pnr", "box"),
         "easg_train.pkl", f"{A1}[2] bbox['pnr']", "expected an array of numbers"),
        ("roi", lambda r: (r[KEY_A]["aidA1"].pop(), r)[1], "roi_feats_train.pkl", A1,
         "4 feature entries for 5 annotation entries"),
        ("roi", _mutate(f"{KEY_A}/aidA1/2/pnr", np.zeros((1, ROI_DIM + 1), np.float32)),
         "roi_feats_train.pkl", f"{A1}[2]['pnr']", f"expected shape (1, {ROI_DIM})"),
        ("roi", _mutate(f"{KEY_A}/aidA1/2/pnr", np.zeros((2, ROI_DIM), np.float32)),
         "roi_feats_train.pkl", f"{A1}[2]['pnr']", f"expected shape (1, {ROI_DIM})"),
        ("roi", _mutate(f"{KEY_A}/aidA1/2", {"pre": feat(1.0)}), "roi_feats_train.pkl",
         f"{A1}[2]", "no 'pnr' features for a grounded box"),
        ("roi", _mutate(f"{KEY_A}/aidA1", _DELETE), "roi_feats_train.pkl", A1,
         "no features for this annotation"),
        ("roi", _mutate(KEY_A, _DELETE), "roi_feats_train.pkl", f"graph {KEY_A!r}",
         "no features for this graph"),
        ("verbs", _mutate("aidB2", _DELETE), "verb_features.pt", "'aidB2'",
         "no verb feature for this annotation"),
        ("verbs", _mutate("aidA1", torch.zeros(VERB_DIM + 1)), "verb_features.pt", "'aidA1'",
         f"expected shape ({VERB_DIM},)"),
        ("verbs", lambda v: list(v.values()), "verb_features.pt", "top level",
         "expected a dict, got list"),
    ],
)  # fmt: skip
def test_sgg_bad_input(tmp_path, target, mutate, file, field, message):
    parts = dict(zip(("easg", "roi", "verbs"), copy.deepcopy(sgg_data()), strict=True))
    parts[target] = mutate(parts[target])
    write_sgg(tmp_path, parts["easg"], parts["roi"], parts["verbs"])
    with pytest.raises(DataError) as err:
        open_sgg(tmp_path)
    assert err.value.path == str(tmp_path / file)
    assert err.value.field == field
    assert message in err.value.message


def test_sgg_truncated_and_garbage_files(tmp_path):
    write_sgg(tmp_path, *sgg_data())
    path = tmp_path / "easg_train.pkl"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"easg_train\.pkl: pickle: .*truncated"):
        open_sgg(tmp_path)
    write_sgg(tmp_path, *sgg_data())
    verbs = tmp_path / "verb_features.pt"
    verbs.write_bytes(verbs.read_bytes()[:100])
    with pytest.raises(DataError, match=r"verb_features\.pt: not a readable torch file"):
        open_sgg(tmp_path)
    (tmp_path / "easg_train.pkl").unlink()
    with pytest.raises(DataError, match=r"easg_train\.pkl: file not found"):
        open_sgg(tmp_path, features=False)


def test_empty_annotation_and_none_bbox(tmp_path):
    easg, roi, verbs = sgg_data()
    easg[KEY_A]["annotations"]["aidA3"] = []
    roi[KEY_A]["aidA3"] = []
    easg[KEY_A]["annotations"]["aidA2"][0]["bbox"] = None
    roi[KEY_A]["aidA2"][0] = {}
    ds = open_sgg(write_sgg(tmp_path, easg, roi, verbs))
    assert ds.stats()["empty_annotations"] == 1 and len(ds) == 3
    assert np.isnan(by_id(ds)[f"{KEY_A}:take"].boxes).all()


def test_frame_types_order():
    assert FRAME_TYPES == ("pre", "pnr", "post")


def test_features_dir_and_missing_verb_file(tmp_path):
    easg, roi, verbs = sgg_data()
    write_sgg(tmp_path / "annts", easg)
    feats = tmp_path / "feats"
    feats.mkdir()
    (feats / "roi_feats_train.pkl").write_bytes(pickle.dumps(roi))
    with pytest.raises(DataError) as err:
        EASG(tmp_path / "annts", features_dir=feats, roi_dim=ROI_DIM, verb_dim=VERB_DIM)
    assert str(err.value) == f"{feats / 'verb_features.pt'}: file not found"
    torch.save(verbs, feats / "verb_features.pt")
    ds = EASG(tmp_path / "annts", features_dir=feats, roi_dim=ROI_DIM, verb_dim=VERB_DIM)
    assert len(ds) == 3 and ds[2].verb_feature is not None

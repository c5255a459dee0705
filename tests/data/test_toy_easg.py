"""Toy EASG: release formats, every quirk present, both views agree, deterministic, learnable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from m3sgg.data.easg import EASG, MASTER_JSON_NAMES, load_vocab
from m3sgg.data.safe_pickle import load_pickle
from m3sgg.data.toy_easg import TOY_OBJECTS, TOY_VERBS, make_toy_easg
from m3sgg.errors import ConfigError, DataError
from m3sgg.vocab import EASG_RELATIONS

FILES = {
    "README.txt",
    MASTER_JSON_NAMES[0],
    "verbs.txt",
    "objects.txt",
    "relationships.txt",
    "easg_train.pkl",
    "easg_val.pkl",
    "roi_feats_train.pkl",
    "roi_feats_val.pkl",
    "verb_features.pt",
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_easg(tmp_path_factory.mktemp("easg_toy"), seed=0)


@pytest.fixture(scope="module")
def master_json(toy) -> dict:
    return json.loads((toy / MASTER_JSON_NAMES[0]).read_text())


def test_layout_and_vocab_files(toy):
    assert {p.name for p in toy.iterdir()} == FILES
    assert sum(p.stat().st_size for p in toy.iterdir()) < 4_000_000
    for name, labels in (("verbs.txt", TOY_VERBS), ("objects.txt", TOY_OBJECTS),
                         ("relationships.txt", EASG_RELATIONS)):  # fmt: skip
        raw = (toy / name).read_bytes()
        assert raw.isascii() and raw.endswith(b"\n")
        assert raw.decode().splitlines() == sorted(labels)  # plain ASCII order
    verbs, objects, relations = load_vocab(toy)
    assert (len(verbs), len(objects), relations) == (20, 40, EASG_RELATIONS)
    assert objects[0] == "TABLE" and "table" in objects  # upper case sorts first


def test_release_formats(toy, master_json):
    clip = next(iter(master_json.values()))
    assert set(clip) == {"split", "W", "H", "graphs"}
    assert set(clip["graphs"][0]) == {"graph_uid", "pre", "pnr", "post", "triplets", "groundings"}
    assert re.fullmatch(r"[0-9a-f]{64}", clip["graphs"][0]["graph_uid"])
    easg = load_pickle(toy / "easg_train.pkl")
    roi = load_pickle(toy / "roi_feats_train.pkl")
    key, record = next(iter(easg.items()))
    assert re.fullmatch(r"[0-9a-f-]{36}_\d{6}", key)
    assert set(record) == {"annotations", "clip_frame_number"}
    aid, entries = next(iter(record["annotations"].items()))
    assert set(entries[0]) == {"obj", "bbox", "verb", "rel"}
    assert len(roi[key][aid]) == len(entries)
    for entry, feats in zip(entries, roi[key][aid], strict=True):
        assert set(entry["bbox"]) == set(feats)
        for ft, xywh in entry["bbox"].items():
            assert xywh.dtype == np.float32 and xywh.shape == (1, 4)
            assert feats[ft].dtype == np.float32 and feats[ft].shape == (1, 1024)
    verbs = torch.load(toy / "verb_features.pt", weights_only=True)
    uids = {g["graph_uid"] for c in master_json.values() for g in c["graphs"]}
    assert set(verbs) == uids
    assert all(v.dtype == torch.float32 and v.shape == (2304,) for v in verbs.values())


def test_every_quirk_occurs(toy, master_json):
    graphs = [g for c in master_json.values() for g in c["graphs"]]
    assert {c["split"] for c in master_json.values()} == {"train", "val"}
    objects = [t for g in graphs for t in g["triplets"] if t[1] != "verb"]
    assert any(re.search(r":\d+$", t[2]) for t in objects)  # instance suffixes
    assert any({"TABLE", "TABLE:1"} & {t[2] for t in objects})
    assert any({"table", "table:1"} & {t[2] for t in objects})
    assert any(  # two instances of one class in a graph
        len({t[2] for t in g["triplets"] if t[2].endswith((":1", ":2"))}) > 1
        and any(t[2].endswith(":2") for t in g["triplets"])
        for g in graphs
    )
    verb_of = {id(g): g["triplets"][0][2] for g in graphs if g["triplets"]}
    assert any(t[0] != verb_of[id(g)] for g in graphs for t in g["triplets"][1:])
    assert any(len(g["triplets"]) != len({tuple(t) for t in g["triplets"]}) for g in graphs)
    assert any(  # one object, two edges
        len({t[1] for t in g["triplets"] if t[2] == name}) > 1
        for g in graphs
        for name in {t[2] for t in g["triplets"][1:]}
    )
    assert any(g["triplets"] == [] for g in graphs)
    assert any(g["groundings"] and "post" not in g["groundings"] for g in graphs)
    assert any(g["groundings"].get("pre") == {} for g in graphs)

    def names(g):
        return {t[2] for t in g["triplets"][1:]}

    def grounded(g):
        return {n for frame in g["groundings"].values() for n in frame}

    assert any(grounded(g) - names(g) for g in graphs)
    assert any(
        {n for n in names(g) if n.split(":")[0] in TOY_OBJECTS} - grounded(g) for g in graphs
    )
    for split in ("train", "val"):
        st = EASG(toy, split, source="master").stats()
        assert st["graphs"] > 0
    train = EASG(toy, "train", source="master").stats()
    assert train["dropped_objects"] and train["duplicate_triplets"] > 0
    assert train["ignored_groundings"] > 0
    assert train["skipped_graphs"]["no_triplets"] > 0 and train["skipped_graphs"]["no_objects"] > 0
    sgg = EASG(toy, "train", features=False).stats()
    assert sgg["split_graphs"] > 0 and sgg["merged_annotations"] > 0
    assert sgg["duplicate_triplets"] > 0


def _merge(samples):
    """The master samples of one SGG sample merged the way the SGG view merges them."""
    objects = np.unique(np.concatenate([s.gt.objects for s in samples]))
    edges = np.zeros((len(objects), len(EASG_RELATIONS)), bool)
    boxes = np.full((len(objects), 3, 4), np.nan, np.float32)
    for s in samples:
        pos = np.searchsorted(objects, s.gt.objects)
        edges[pos] |= s.gt.edges
        lo, hi = boxes[pos, :, :2], boxes[pos, :, 2:]
        boxes[pos, :, :2] = np.fmin(lo, s.boxes[:, :, :2])
        boxes[pos, :, 2:] = np.fmax(hi, s.boxes[:, :, 2:])
    return objects, edges, boxes


@pytest.mark.parametrize("split", ["train", "val"])
def test_both_views_give_the_same_graphs(toy, split):
    master = {s.gt.graph_id: s for s in EASG(toy, split, source="master", vocab="files")}
    sgg = EASG(toy, split)
    assert sorted(a for s in sgg for a in s.annotation_ids) == sorted(master)
    for s in sgg:
        parts = [master[a] for a in s.annotation_ids]
        assert {p.gt.verb for p in parts} == {s.gt.verb}
        assert {p.clip_id for p in parts} == {s.clip_id}
        for p in parts:
            np.testing.assert_array_equal(p.frame_numbers, s.frame_numbers)
        objects, edges, boxes = _merge(parts)
        np.testing.assert_array_equal(s.gt.objects, objects)
        np.testing.assert_array_equal(s.gt.edges, edges)
        np.testing.assert_allclose(s.boxes, boxes, atol=1e-6)
        assert s.obj_features.shape == (len(objects), 3, 1024)
        assert s.verb_feature.shape == (2304,)
        assert (s.obj_features.any(axis=2) == s.grounded).all()


def test_deterministic_per_seed(tmp_path):
    a = make_toy_easg(tmp_path / "a", clips=6, seed=3)
    b = make_toy_easg(tmp_path / "b", clips=6, seed=3)
    c = make_toy_easg(tmp_path / "c", clips=6, seed=4)
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "verb_features.pt").read_bytes() != (c / "verb_features.pt").read_bytes()
    assert (a / MASTER_JSON_NAMES[0]).read_bytes() != (c / MASTER_JSON_NAMES[0]).read_bytes()


def test_folder_and_arguments(tmp_path):
    out = make_toy_easg(tmp_path / "t", clips=2)
    assert {c["split"] for c in json.loads((out / MASTER_JSON_NAMES[0]).read_text()).values()} == {
        "train",
        "val",
    }
    with pytest.raises(DataError, match="not empty"):
        make_toy_easg(out, clips=2)
    (out / "notes.txt").write_text("mine")
    make_toy_easg(out, clips=3, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert len(EASG(out, "val")) > 0
    with pytest.raises(ConfigError, match="clips >= 2"):
        make_toy_easg(tmp_path / "u", clips=1)
    with pytest.raises(DataError, match="not a folder"):
        make_toy_easg(out / "notes.txt")
    default = make_toy_easg(tmp_path / "d", clips=None)
    assert len(json.loads((default / MASTER_JSON_NAMES[0]).read_text())) == 16


def _objects(ds):
    """Per grounded object: verb feature, mean RoI feature, verb, class, edges."""
    rows = []
    for s in ds:
        for i in np.flatnonzero(s.grounded.any(axis=1)):
            mean = s.obj_features[i][s.grounded[i]].mean(axis=0)
            rows.append((s.verb_feature, mean, s.gt.verb, s.gt.objects[i], s.gt.edges[i]))
    return [np.array(col) for col in zip(*rows, strict=True)]


def _nearest_centroid_accuracy(x_train, y_train, x_val, y_val):
    labels = np.unique(y_train)
    centroids = np.stack([x_train[y_train == c].mean(axis=0) for c in labels])
    known = np.isin(y_val, labels)
    dist = ((x_val[known, None, :] - centroids[None]) ** 2).sum(axis=2)
    return (labels[dist.argmin(axis=1)] == y_val[known]).mean()


def test_features_carry_the_labels(toy):
    vt, ft, verb_t, cls_t, edge_t = _objects(EASG(toy, "train"))
    vv, fv, verb_v, cls_v, edge_v = _objects(EASG(toy, "val"))
    assert _nearest_centroid_accuracy(ft, cls_t, fv, cls_v) > 0.9
    assert _nearest_centroid_accuracy(vt, verb_t, vv, verb_v) > 0.9
    # edges are a function of (verb, class)
    seen: dict[tuple[int, int], bytes] = {}
    for v, c, e in zip(np.r_[verb_t, verb_v], np.r_[cls_t, cls_v], np.r_[edge_t, edge_v],
                       strict=True):  # fmt: skip
        assert seen.setdefault((int(v), int(c)), e.tobytes()) == e.tobytes()
    # a linear (ridge) model on the two features predicts val edges far better than the most
    # frequent edge: fitted in closed form, dual form since features outnumber samples
    x = np.concatenate([vt, ft], axis=1).astype(np.float64)
    y = edge_t.astype(np.float64) - edge_t.mean(axis=0)
    alpha = np.linalg.solve(x @ x.T + 1e3 * np.eye(len(x)), y)
    scores = np.concatenate([vv, fv], axis=1) @ (x.T @ alpha) + edge_t.mean(axis=0)
    hit = edge_v[np.arange(len(scores)), scores.argmax(axis=1)].mean()
    frequent = edge_v[:, edge_t.sum(axis=0).argmax()].mean()
    assert hit > 0.5 and hit > frequent + 0.1, (hit, frequent)

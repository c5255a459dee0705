"""The EASG release as downloaded: files found under its root wherever they sit, tensor pickles
read safely, one line saying what was found, used and missing."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from m3sgg.data.easg import EASG
from m3sgg.data.easg_release import MAX_DEPTH, find_easg_files
from m3sgg.errors import DataError
from tests.data.test_easg_reader import (
    ROI_DIM,
    VERB_DIM,
    master_data,
    open_sgg,
    sgg_data,
    write_sgg,
    write_vocab,
)

REPO = Path(__file__).resolve().parents[2]


def as_tensors(roi: dict) -> dict:
    """The RoI features as the release pickles them: torch tensors, not numpy arrays."""
    return {
        key: {
            aid: [{ft: torch.from_numpy(a.copy()) for ft, a in entry.items()} for entry in entries]
            for aid, entries in graph.items()
        }
        for key, graph in roi.items()
    }


def write_release(root: Path) -> Path:
    """The release's folders: annotation archive at the root, the repository's SGG folder, the
    baseline's data folder; a decoy vocabulary inside frames/ that must not be read."""
    easg, roi, verbs = sgg_data()
    sgg = root / "easg-generation" / "annts_in_new_format"
    write_sgg(sgg, easg)
    data = root / "data"
    data.mkdir(parents=True)
    (data / "roi_feats_train.pkl").write_bytes(pickle.dumps(as_tensors(roi), protocol=2))
    torch.save(verbs, data / "verb_features.pt")
    (root / "EASG_unict_master_final_upd.json").write_text(json.dumps(master_data()))
    torch.save({"u1_clipA": torch.zeros(VERB_DIM)}, root / "features_verb.pt")
    frames = root / "frames" / "u1"
    frames.mkdir(parents=True)
    (frames / "clipA_pnr.jpg").write_bytes(b"\xff\xd8")
    (frames / "verbs.txt").write_text("decoy\n")
    return root


def test_release_root_reads_like_a_flat_folder(tmp_path):
    root = write_release(tmp_path / "EASG")
    ds = EASG(root, "train", roi_dim=ROI_DIM, verb_dim=VERB_DIM)
    sgg = root / "easg-generation" / "annts_in_new_format"
    assert ds.path == sgg / "easg_train.pkl"
    assert ds.roi_path == root / "data" / "roi_feats_train.pkl"
    assert ds.verb_path == root / "data" / "verb_features.pt"
    flat = open_sgg(write_sgg(tmp_path / "flat", *sgg_data()))  # numpy pickles, one folder
    assert len(ds) == len(flat) == 3
    for a, b in zip(ds, flat, strict=True):
        assert a.gt.graph_id == b.gt.graph_id and a.gt.verb == b.gt.verb
        np.testing.assert_array_equal(a.gt.edges, b.gt.edges)
        np.testing.assert_array_equal(a.obj_features, b.obj_features)  # from tensors
        np.testing.assert_array_equal(a.verb_feature, b.verb_feature)
        assert a.obj_features.dtype == np.float32
    master = EASG(root, "train", source="master")
    assert master.path == root / "EASG_unict_master_final_upd.json"
    assert [s.gt.graph_id for s in master] == ["u1", "u4"]


def test_the_sgg_folder_alone_is_a_root_too(tmp_path):
    root = write_release(tmp_path / "EASG")
    ds = EASG(root / "easg-generation" / "annts_in_new_format", "train", features=False)
    assert len(ds) == 3


def test_summary_lists_found_unused_and_missing(tmp_path):
    root = write_release(tmp_path / "EASG")
    files = find_easg_files(root)
    assert files.summary(("easg_val.pkl",)) == (
        "found verbs.txt objects.txt relationships.txt easg_train.pkl "
        "(easg-generation/annts_in_new_format), EASG_unict_master_final_upd.json (.), "
        "roi_feats_train.pkl verb_features.pt (data); unused: features_verb.pt (per-graph verb "
        "features of the release's STTran reader; the EASG models read verb_features.pt); "
        "missing: easg_val.pkl"
    )
    assert files.get("verbs.txt") == root / "easg-generation/annts_in_new_format/verbs.txt"


def test_a_missing_file_names_it_and_what_was_found(tmp_path):
    root = write_release(tmp_path / "EASG")
    (root / "data" / "roi_feats_train.pkl").unlink()
    with pytest.raises(DataError) as err:
        EASG(root, "train", roi_dim=ROI_DIM, verb_dim=VERB_DIM)
    message = str(err.value)
    assert message.startswith(f"{root / 'roi_feats_train.pkl'}: file not found (searched {root}")
    assert "EASG_unict_master_final_upd.json (.), verb_features.pt (data)" in message
    assert "\n" not in message
    with pytest.raises(DataError, match=r"easg_val\.pkl: file not found"):
        EASG(root, "val", features=False)


def test_search_depth_is_bounded(tmp_path):
    deep = tmp_path.joinpath(*[f"d{i}" for i in range(MAX_DEPTH + 1)])
    write_vocab(deep)
    assert find_easg_files(tmp_path).found == {}
    assert find_easg_files(tmp_path / "d0").get("verbs.txt") == deep / "verbs.txt"


def test_shallowest_copy_wins(tmp_path):
    write_vocab(tmp_path / "a" / "b")
    write_vocab(tmp_path / "z")
    assert find_easg_files(tmp_path).get("objects.txt") == tmp_path / "z" / "objects.txt"


def inspect(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "m3sgg", "inspect-data", "--dataset", "easg", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_inspect_data_shows_either_view_of_the_release(tmp_path):
    root = write_release(tmp_path / "EASG")
    data = json.loads((root / "EASG_unict_master_final_upd.json").read_text())
    data["clipA"]["graphs"][3]["triplets"][0] = ["CW", "verb", "slice"]  # not in verbs.txt
    data["clipA"]["graphs"][0]["triplets"].append(["cut", "beside", "onion"])  # edge neither
    (root / "EASG_unict_master_final_upd.json").write_text(json.dumps(data))

    master = inspect("--data-path", str(root), "--source", "master", "--json")
    assert master.returncode == 0, master.stderr
    stats = json.loads(master.stdout)
    assert stats["source"] == "master" and stats["graphs"] == 2
    assert stats["vocabulary"]["verbs"] == ["cut", "take", "slice", "wash"]
    assert "beside" in stats["vocabulary"]["relations"]
    assert master.stderr.startswith("EASG files: found verbs.txt")

    files = inspect("--data-path", str(root), "--source", "master", "--vocab", "files", "--json")
    assert files.returncode == 0, files.stderr
    stats = json.loads(files.stdout)
    assert stats["graphs"] == 1 and stats["dropped_verbs"] == {"slice": 1}
    assert stats["dropped_edges"] == {"beside": 1}

    sgg = inspect("--data-path", str(root))  # the default view, as text
    assert sgg.returncode == 0, sgg.stderr
    assert "easg (train split)" in sgg.stdout and "merged_annotations" in sgg.stdout

    wrong = inspect("--data-path", str(root), "--vocab", "files")
    assert (
        wrong.returncode == 2
        and wrong.stderr.count("\n") == 1
        and "--source master" in wrong.stderr
    )


# -- end to end: the toy EASG laid out as the release, trained from its root -----------------


def release_from_toy(flat: Path, root: Path) -> str:
    """Move the toy EASG files into the release's folders: RoI pickles re-written with torch
    tensors, the master JSON given a verb and an edge no vocabulary file lists, features_verb.pt
    and frames/ beside it. Returns the unknown verb."""
    import shutil

    from m3sgg.data.safe_pickle import load_pickle

    sgg = root / "easg-generation" / "annts_in_new_format"
    data = root / "data"
    sgg.mkdir(parents=True)
    data.mkdir()
    for name in ("verbs.txt", "objects.txt", "relationships.txt", "easg_train.pkl", "easg_val.pkl"):
        shutil.copy(flat / name, sgg / name)
    for split in ("train", "val"):
        roi = load_pickle(flat / f"roi_feats_{split}.pkl")
        tensors = {
            key: {
                aid: [{ft: torch.from_numpy(np.asarray(a)) for ft, a in e.items()} for e in entries]
                for aid, entries in graph.items()
            }
            for key, graph in roi.items()
        }
        (data / f"roi_feats_{split}.pkl").write_bytes(pickle.dumps(tensors, protocol=2))
    shutil.copy(flat / "verb_features.pt", data / "verb_features.pt")
    master = json.loads((flat / "EASG_unict_master_final.json").read_text())
    objects = set((flat / "objects.txt").read_text().split())
    graph = next(
        g
        for clip in master.values()
        if clip["split"] == "train"
        for g in clip["graphs"]
        if any(t[0] != "CW" and t[2].split(":")[0] in objects for t in g["triplets"])
    )
    obj = next(t[2] for t in graph["triplets"] if t[0] != "CW" and t[2].split(":")[0] in objects)
    graph["triplets"] = [t for t in graph["triplets"] if t[0] != "CW"]
    graph["triplets"].insert(0, ["CW", "verb", "juggle"])
    graph["triplets"].append(["juggle", "beneath", obj])
    (root / "EASG_unict_master_final_upd.json").write_text(json.dumps(master))
    torch.save({"x_y": torch.zeros(4)}, root / "features_verb.pt")
    (root / "frames" / "g").mkdir(parents=True)
    (root / "frames" / "g" / "c_pnr.jpg").write_bytes(b"\xff\xd8")
    return "juggle"


@pytest.mark.slow
def test_the_release_layout_trains_from_its_root(toy_cache: Path, tmp_path: Path):
    from m3sgg.data.toy_easg import make_toy_easg

    flat = make_toy_easg(tmp_path / "flat", clips=8, seed=1)
    root = tmp_path / "EASG"
    unknown = release_from_toy(flat, root)

    master = EASG(root, "train", source="master")  # never stops at the unknown names
    assert unknown in master.vocab.verbs and "beneath" in master.vocab.relations
    strict = EASG(root, "train", source="master", vocab="files").stats()
    assert strict["dropped_verbs"] == {unknown: 1} and strict["dropped_edges"] == {"beneath": 1}

    env = {**os.environ, "PYTHONPATH": str(REPO), "M3SGG_NO_ENTRY_POINTS": "1"}
    results = {}
    for name, path in (("release", root), ("flat", flat)):
        command = [sys.executable, "-m", "m3sgg", "train", "--dataset", "easg", "--data-path"]
        command += [str(path), "--output", str(tmp_path / "runs"), "--name", name, "--epochs", "1"]
        command += ["--mode", "easgcls", "--videos-per-batch", "4"]
        # the same widths for both: only the flat copy carries the toy README (model.preset auto)
        command += ["--set", "model.preset=toy"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        results[name] = (tmp_path / "runs" / name / "metrics.jsonl").read_text()
        if name == "release":
            line = next(x for x in done.stdout.splitlines() if x.startswith("EASG train split:"))
            assert "easg_train.pkl easg_val.pkl (easg-generation/annts_in_new_format)" in line
            assert "roi_feats_train.pkl roi_feats_val.pkl verb_features.pt (data)" in line
            assert "unused: features_verb.pt" in line
    record = json.loads(results["release"])
    assert "with/R@20" in record["metrics"]
    assert results["release"] == results["flat"]  # tensor pickles read exactly as numpy ones

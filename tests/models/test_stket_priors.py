"""STKET priors: counting equals a brute-force count, the file round-trips, bad files say where."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from m3sgg.data.action_genome import ActionGenome
from m3sgg.data.structures import VideoGT
from m3sgg.data.toy import make_toy_action_genome
from m3sgg.errors import DataError
from m3sgg.models.stket.priors import count_priors, load_priors, save_priors
from m3sgg.vocab import AG_CONTACTING, AG_OBJECT_CLASSES

REPO = Path(__file__).resolve().parents[2]


def _obj(cls: int, att: list[int], spa: list[int], con: list[int]) -> dict:
    return {
        "class": cls,
        "bbox": np.array([0.0, 0.0, 10.0, 10.0]),
        "attention_relationship": att,
        "spatial_relationship": spa,
        "contacting_relationship": con,
    }


def _video(frames: list[list[dict]]) -> VideoGT:
    return VideoGT.from_sttran(
        [
            [{"person_bbox": np.zeros((1, 4)), "frame": f"v.mp4/{t:06d}.png"}, *objs]
            for t, objs in enumerate(frames)
        ]
    )


def brute_force(videos: list[VideoGT]) -> tuple[dict, dict]:
    """Dict-and-loop count of both tables over the STTran structure of each video."""
    instances: dict[int, int] = {}
    carrying: dict[tuple[int, int], int] = {}
    succ: dict[tuple[int, int], int] = {}
    follow: dict[tuple[int, int, int], int] = {}
    for gt in videos:
        frames = gt.to_sttran()
        for t, frame in enumerate(frames):
            for obj in frame[1:]:
                o = obj["class"]
                preds = (
                    set(obj["attention_relationship"])
                    | {3 + s for s in obj["spatial_relationship"]}
                    | {9 + c for c in obj["contacting_relationship"]}
                )
                instances[o] = instances.get(o, 0) + 1
                for p in preds:
                    carrying[o, p] = carrying.get((o, p), 0) + 1
                if t + 1 == len(frames):
                    continue
                for nxt in frames[t + 1][1:]:
                    if nxt["class"] != o:
                        continue
                    nxt_preds = (
                        set(nxt["attention_relationship"])
                        | {3 + s for s in nxt["spatial_relationship"]}
                        | {9 + c for c in nxt["contacting_relationship"]}
                    )
                    for c in set(obj["contacting_relationship"]):
                        succ[o, c] = succ.get((o, c), 0) + 1
                        for p in nxt_preds:
                            follow[o, c, p] = follow.get((o, c, p), 0) + 1
    initial = {(o, p): n / instances[o] for (o, p), n in carrying.items()}
    specific = {(o, c, p): n / succ[o, c] for (o, c, p), n in follow.items()}
    return initial, specific


def assert_matches(priors, initial: dict, specific: dict) -> None:
    expected_initial = np.zeros_like(priors.initial)
    for (o, p), v in initial.items():
        expected_initial[o, p] = v
    expected_specific = np.zeros_like(priors.specific)
    for (o, c, p), v in specific.items():
        expected_specific[o, c, p] = v
    np.testing.assert_allclose(priors.initial, expected_initial, rtol=0, atol=1e-12)
    np.testing.assert_allclose(priors.specific, expected_specific, rtol=0, atol=1e-12)


def test_hand_counted_video():
    # class 5 (book): frame 0 holding+touching, frame 1 holding, frame 2 absent; class 7 once
    gt = _video(
        [
            [_obj(5, [0], [2], [5, 12]), _obj(7, [1], [0, 1], [8])],
            [_obj(5, [1], [2], [5])],
            [_obj(7, [2], [5], [8, 8])],  # a repeated label counts once
        ]
    )
    priors = count_priors([gt])
    # book: 2 instances; looking_at 1, not_looking_at 1, in_front_of 2, holding 2, touching 1
    book = np.zeros(26)
    book[[0, 1]] = 0.5
    book[3 + 2] = 1.0
    book[9 + 5] = 1.0
    book[9 + 12] = 0.5
    np.testing.assert_array_equal(priors.initial[5], book)
    # chair (7): 2 instances in frames 0 and 2: not consecutive, so no successor
    assert priors.initial[7, 9 + 8] == 1.0 and priors.initial[7, 3 + 0] == 0.5
    assert not priors.specific[7].any()
    # book frame 0 -> frame 1: holding and touching each see one successor (not_looking_at,
    # in_front_of, holding)
    successor = np.zeros(26)
    successor[[1, 3 + 2, 9 + 5]] = 1.0
    np.testing.assert_array_equal(priors.specific[5, 5], successor)
    np.testing.assert_array_equal(priors.specific[5, 12], successor)
    assert priors.contacts[5] == (5, 12) and priors.contacts[7] == (8,)
    assert priors.present[5] and priors.present[7] and not priors.present[2]
    assert not priors.initial[:2].any()


def test_toy_training_split_equals_a_brute_force_count(tmp_path: Path):
    root = make_toy_action_genome(tmp_path / "toy", videos=20, seed=4, with_detections=False)
    train = ActionGenome(root, "train")
    videos = [train.video_gt(i) for i in range(len(train))]
    priors = count_priors(videos)
    initial, specific = brute_force(videos)
    assert initial and specific  # the toy data has successors
    assert_matches(priors, initial, specific)
    attention = priors.initial[np.array(priors.present), :3].sum(axis=1)
    np.testing.assert_allclose(attention, 1.0)  # one attention label per toy instance


def test_file_round_trip_in_the_original_layout(tmp_path: Path):
    gt = _video([[_obj(5, [0], [2], [5, 12])], [_obj(5, [1], [2], [5])]])
    priors = count_priors([gt])
    path = save_priors(priors, tmp_path / "priors.json")
    raw = json.loads(path.read_text())
    assert list(raw) == ["5"]
    entry = raw["5"]
    assert entry["obj_cls_name"] == AG_OBJECT_CLASSES[5]
    assert entry["c_rel_idx"] == [5, 12]
    assert entry["c_rel_name"] == [AG_CONTACTING[5], AG_CONTACTING[12]]
    assert len(entry["initial_prior"]) == 26 and len(entry["specific_prior"]) == 2
    back = load_priors(path)
    np.testing.assert_array_equal(back.initial, priors.initial)
    np.testing.assert_array_equal(back.specific, priors.specific)
    assert back.contacts == priors.contacts and back.present == priors.present


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (
            {"c_rel_idx": [5], "initial_prior": [0.0] * 25, "specific_prior": [[0.0] * 26]},
            "5.initial_prior",
        ),
        (
            {"c_rel_idx": [17], "initial_prior": [0.0] * 26, "specific_prior": [[0.0] * 26]},
            "5.c_rel_idx",
        ),
        ({"c_rel_idx": [5], "initial_prior": [0.0] * 26, "specific_prior": []}, "5.specific_prior"),
        ({"c_rel_idx": [5], "initial_prior": [0.0] * 26}, "5.specific_prior"),
        (
            {"c_rel_idx": [5], "initial_prior": [0.0] * 26, "specific_prior": [["x"] * 26]},
            "5.specific_prior[0]",
        ),
    ],
)
def test_malformed_entries_name_the_field(tmp_path: Path, entry: dict, field: str):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"5": entry}))
    with pytest.raises(DataError) as err:
        load_priors(path)
    assert f"{path}: {field}: " in str(err.value)


def test_not_json_and_bad_class_key(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text("{")
    with pytest.raises(DataError, match="not a JSON prior file"):
        load_priors(path)
    path.write_text(json.dumps({"37": {}}))
    with pytest.raises(DataError, match="37: not an object class index"):
        load_priors(path)


def _m3sgg(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "m3sgg", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_builds_imports_and_refuses_with_one_line(tmp_path: Path):
    root = make_toy_action_genome(tmp_path / "toy", videos=12, seed=2, with_detections=False)
    out = tmp_path / "priors.json"
    built = _m3sgg("build-priors", "--data-path", str(root), "--output", str(out))
    assert built.returncode == 0, built.stderr
    train = ActionGenome(root, "train")
    expected = count_priors(train.video_gt(i) for i in range(len(train)))
    np.testing.assert_array_equal(load_priors(out).initial, expected.initial)
    copied = tmp_path / "copy.json"
    imported = _m3sgg("build-priors", "--import-original", str(out), "--output", str(copied))
    assert imported.returncode == 0, imported.stderr
    assert json.loads(copied.read_text()) == json.loads(out.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"3": {"c_rel_idx": []}}))
    refused = _m3sgg("build-priors", "--import-original", str(bad), "--output", str(copied))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "3.initial_prior" in refused.stderr
    assert json.loads(copied.read_text()) == json.loads(out.read_text())  # left as it was

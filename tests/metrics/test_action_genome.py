"""ActionGenomeRecall and its suite: reference vectors, hand-computed cases, invariants."""

from __future__ import annotations

import copy
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError

from m3sgg.data.structures import VideoGT
from m3sgg.errors import ConfigError
from m3sgg.metrics.action_genome import ActionGenomeRecall, ActionGenomeRecallSuite
from m3sgg.metrics.action_genome import recall as ag_recall

REPO = Path(__file__).resolve().parents[2]
MODES = ("predcls", "sgcls", "sgdet")
CONSTRAINTS = ("with", "semi", "no")
VECTOR_KS = (10, 20, 50, 100)
CASES = [f"case_{i:03d}" for i in range(16)]


# --------------------------------------------------------------------------------------------
# Reading the reference vectors
# --------------------------------------------------------------------------------------------


def _sttran(video: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    """A vector video's frames as the STTran list (float32 person box, float64 object boxes)."""
    frames = []
    for frame in video["frames"]:
        info = {
            "frame": frame["frame"],
            "person_bbox": np.asarray(frame["person_bbox"], np.float32),
        }
        objects = [dict(obj, bbox=np.asarray(obj["bbox"], np.float64)) for obj in frame["objects"]]
        frames.append([info, *objects])
    return frames


def _pred(video: Mapping[str, Any], mode: str) -> dict[str, np.ndarray]:
    raw = video["pred"][mode]
    return {
        "boxes": np.asarray(raw["boxes"], np.float32).reshape(-1, 5),
        "labels": np.asarray(raw["labels"], np.int64),
        "scores": np.asarray(raw["scores"], np.float32),
        "pred_labels": np.asarray(raw["pred_labels"], np.int64),
        "pred_scores": np.asarray(raw["pred_scores"], np.float32),
        "im_idx": np.asarray(raw["im_idx"], np.float32),
        "pair_idx": np.asarray(raw["pair_idx"], np.int64).reshape(-1, 2),
        "attention_distribution": np.asarray(raw["attention_distribution"], np.float32).reshape(
            -1, 3
        ),
        "spatial_distribution": np.asarray(raw["spatial_distribution"], np.float32).reshape(-1, 6),
        "contacting_distribution": np.asarray(raw["contacting_distribution"], np.float32).reshape(
            -1, 17
        ),
    }


@pytest.fixture(scope="module")
def vectors(vectors_dir: Path) -> dict[str, Any]:
    """Every AG case as (videos: [(VideoGT, {mode: pred})], raw case) plus the expected values."""
    cases = {}
    for name in CASES:
        case = json.loads((vectors_dir / "ag" / f"{name}.json").read_text())
        videos = [
            (VideoGT.from_sttran(_sttran(v)), {m: _pred(v, m) for m in MODES})
            for v in case["videos"]
        ]
        cases[name] = {"videos": videos, "raw": case}
    expected = json.loads((vectors_dir / "ag_expected.json").read_text())
    return {"cases": cases, "expected": expected}


def _run(metric: Any, videos: list[tuple[Any, Any]]) -> dict[str, Any]:
    metric.reset()
    for video in videos:
        metric.update(video)
    return metric.compute()


def _case_videos(vectors: dict[str, Any], name: str, mode: str) -> list[tuple[VideoGT, dict]]:
    return [(gt, preds[mode]) for gt, preds in vectors["cases"][name]["videos"]]


# --------------------------------------------------------------------------------------------
# Reference vectors
# --------------------------------------------------------------------------------------------


def test_vector_flags_are_as_documented(vectors: dict[str, Any]) -> None:
    """576 (case, mode, constraint, K) entries, 39 tie-sensitive: compared 537, skipped 39."""
    flags = [
        flagged
        for case in vectors["expected"].values()
        for mode in case.values()
        for constraint in mode.values()
        for flagged in constraint["tie_sensitive_frames"].values()
    ]
    flagged = sum(f > 0 for f in flags)
    print(
        f"AG vectors: {len(flags)} entries, compared {len(flags) - flagged}, tie-skipped {flagged}"
    )
    assert len(flags) == 576
    assert flagged == 39


@pytest.mark.parametrize("name", CASES)
def test_reference_vectors(vectors: dict[str, Any], name: str) -> None:
    """R@K, mR@K and the 26 per-predicate recalls of every unflagged entry, within 1e-6."""
    expected = vectors["expected"][name]
    compared = skipped = 0
    tie_differences = []
    for mode in MODES:
        videos = _case_videos(vectors, name, mode)
        for constraint in CONSTRAINTS:
            result = _run(ActionGenomeRecall(mode, constraint), videos)
            want = expected[mode][constraint]
            assert result["frames"] == vectors["cases"][name]["raw"]["n_frames"]
            assert result["frames_without_gt"] == 0
            for k in VECTOR_KS:
                got = (
                    result[f"R@{k}"],
                    result[f"mR@{k}"],
                    np.asarray(result["per_predicate"][k]),
                )
                ref = (
                    want["R"][str(k)],
                    want["mR"][str(k)],
                    np.asarray(want["per_predicate_recall"][str(k)]),
                )
                close = (
                    abs(got[0] - ref[0]) <= 1e-6
                    and abs(got[1] - ref[1]) <= 1e-6
                    and np.abs(got[2] - ref[2]).max() <= 1e-6
                )
                if want["tie_sensitive_frames"][str(k)] > 0:
                    skipped += 1
                    if not close:
                        tie_differences.append((mode, constraint, k))
                    continue
                compared += 1
                where = f"{name} {mode} {constraint} K={k}"
                assert got[0] == pytest.approx(ref[0], abs=1e-6), f"R {where}"
                assert got[1] == pytest.approx(ref[1], abs=1e-6), f"mR {where}"
                np.testing.assert_allclose(got[2], ref[2], rtol=0, atol=1e-6, err_msg=where)
    print(
        f"{name}: compared {compared}, tie-skipped {skipped} "
        f"(of which differ from the reference's tie order: {tie_differences})"
    )
    assert compared + skipped == len(MODES) * len(CONSTRAINTS) * len(VECTOR_KS)


def test_sttran_input_equals_videogt_input(vectors: dict[str, Any]) -> None:
    for name in ("case_000", "case_010", "case_011"):
        raw = vectors["cases"][name]["raw"]["videos"]
        for mode in MODES:
            from_gt = _run(ActionGenomeRecallSuite(mode), _case_videos(vectors, name, mode))
            from_lists = _run(
                ActionGenomeRecallSuite(mode), [(_sttran(v), _pred(v, mode)) for v in raw]
            )
            assert from_lists == from_gt


def test_suite_equals_single_metrics(vectors: dict[str, Any]) -> None:
    for name in ("case_001", "case_002", "case_006", "case_010"):
        for mode in MODES:
            videos = _case_videos(vectors, name, mode)
            suite = _run(ActionGenomeRecallSuite(mode, per_video=True), videos)
            expected_keys = set()
            for constraint in CONSTRAINTS:
                single = _run(ActionGenomeRecall(mode, constraint, per_video=True), videos)
                for key, value in single.items():
                    assert suite[f"{constraint}/{key}"] == value, (name, mode, constraint, key)
                    expected_keys.add(f"{constraint}/{key}")
            assert set(suite) == expected_keys


def test_suite_subset_of_constraints(vectors: dict[str, Any]) -> None:
    videos = _case_videos(vectors, "case_000", "sgdet")
    suite = _run(ActionGenomeRecallSuite("sgdet", constraints=("no", "with")), videos)
    assert {key.split("/")[0] for key in suite} == {"no", "with"}
    assert suite["no/R@20"] == _run(ActionGenomeRecall("sgdet", "no"), videos)["R@20"]


def test_batching_does_not_change_results(vectors: dict[str, Any], monkeypatch) -> None:
    """Videos evaluated one by one, or all in one batch, give bit-identical rows."""
    videos = [v for name in CASES for v in _case_videos(vectors, name, "sgdet")]
    together = _run(ActionGenomeRecallSuite("sgdet", per_video=True), videos)
    monkeypatch.setattr(ag_recall, "_BATCH_SIZE", 1)
    alone = _run(ActionGenomeRecallSuite("sgdet", per_video=True), videos)
    assert alone == together


def test_reset_clears_state(vectors: dict[str, Any]) -> None:
    """Two evaluations in a row give the same numbers (upstream's mR drifted across epochs)."""
    videos = _case_videos(vectors, "case_010", "predcls")
    metric = ActionGenomeRecall("predcls", "with")
    first = _run(metric, videos)
    second = _run(metric, videos)
    assert first == second
    metric.reset()
    with pytest.raises(NotComputableError):
        metric.compute()


def test_recall_is_non_decreasing_in_k(vectors: dict[str, Any]) -> None:
    ks = (1, 2, 5, 10, 20, 50, 100, 500)
    for name in CASES:
        for mode in MODES:
            result = _run(ActionGenomeRecallSuite(mode, ks=ks), _case_videos(vectors, name, mode))
            for constraint in CONSTRAINTS:
                recalls = [result[f"{constraint}/R@{k}"] for k in ks]
                means = [result[f"{constraint}/mR@{k}"] for k in ks]
                assert recalls == sorted(recalls), (name, mode, constraint)
                assert means == sorted(means), (name, mode, constraint)
                assert recalls[0] >= 0.0 and recalls[-1] <= 1.0


def test_per_video_results(vectors: dict[str, Any]) -> None:
    name, mode = "case_010", "sgcls"
    videos = _case_videos(vectors, name, mode)
    result = _run(ActionGenomeRecall(mode, "no", per_video=True), videos)
    per_video = result["per_video"]
    assert list(per_video) == [gt.video_id for gt, _ in videos]
    assert sum(entry["frames"] for entry in per_video.values()) == result["frames"]
    for video in videos:
        alone = _run(ActionGenomeRecall(mode, "no"), [video])
        entry = per_video[video[0].video_id]
        assert entry["frames"] == alone["frames"]
        assert entry["frames_without_gt"] == 0
        for k in VECTOR_KS:
            assert entry[f"R@{k}"] == pytest.approx(alone[f"R@{k}"], abs=1e-15)
    # the overall R@K is the frame-weighted mean of the videos'
    for k in VECTOR_KS:
        weighted = sum(e[f"R@{k}"] * e["frames"] for e in per_video.values()) / result["frames"]
        assert weighted == pytest.approx(result[f"R@{k}"], abs=1e-12)
    assert "per_video" not in _run(ActionGenomeRecall(mode, "no"), videos)


def test_a_video_seen_twice_counts_once(vectors: dict[str, Any]) -> None:
    videos = _case_videos(vectors, "case_000", "predcls")
    once = _run(ActionGenomeRecall("predcls", "semi"), videos)
    twice = _run(ActionGenomeRecall("predcls", "semi"), [*videos, videos[0]])
    assert twice == once


# --------------------------------------------------------------------------------------------
# Hand-made cases
# --------------------------------------------------------------------------------------------

PERSON = [0.0, 0.0, 9.0, 9.0]


def _obj(cls: int, box: list[float], att=(), spa=(), con=()) -> dict[str, Any]:
    return {
        "class": cls,
        "bbox": np.asarray(box, np.float64),
        "attention_relationship": list(att),
        "spatial_relationship": list(spa),
        "contacting_relationship": list(con),
    }


def _frame(video: str, index: int, *objects: dict[str, Any], person=PERSON) -> list[dict]:
    info = {"frame": f"{video}/{index:06d}.png", "person_bbox": np.asarray([person], np.float32)}
    return [info, *objects]


def _prediction(
    boxes: list[list[float]],
    labels: list[int],
    pairs: list[tuple[int, int, int]],
    attention: list[list[float]],
    spatial: list[list[float]],
    contacting: list[list[float]],
    scores: list[float] | None = None,
) -> dict[str, torch.Tensor]:
    """``pairs`` are (frame, subject box, object box); boxes are (frame, x1, y1, x2, y2)."""
    scores = [1.0] * len(boxes) if scores is None else scores
    labels_t = torch.tensor(labels, dtype=torch.int64)
    scores_t = torch.tensor(scores, dtype=torch.float32)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5),
        "labels": labels_t,
        "scores": scores_t,
        "pred_labels": labels_t.clone(),
        "pred_scores": scores_t.clone(),
        "im_idx": torch.tensor([p[0] for p in pairs], dtype=torch.float32),
        "pair_idx": torch.tensor([p[1:] for p in pairs], dtype=torch.int64).reshape(-1, 2),
        "attention_distribution": torch.tensor(attention, dtype=torch.float32).reshape(-1, 3),
        "spatial_distribution": torch.tensor(spatial, dtype=torch.float32).reshape(-1, 6),
        "contacting_distribution": torch.tensor(contacting, dtype=torch.float32).reshape(-1, 17),
    }


def _row(size: int, fill: float, **at: float) -> list[float]:
    row = [fill] * size
    for index, value in at.items():
        row[int(index[1:])] = value
    return row


def _one_object_video() -> tuple[list, dict[str, torch.Tensor]]:
    """One object: GT not_looking_at, above (spatial 0), holding (c5), not_contacting (c8).

    Predicted: softmax([0, 2, 0]) = (0.107, 0.787, 0.107); spatial 0.3 on 'above' (others
    <= 0.2); contacting 0.6 on holding, 0.5 on not_contacting, 0.05 elsewhere.
    """
    gt = [_frame("one.mp4", 0, _obj(7, [20, 0, 29, 9], att=[1], spa=[0], con=[5, 8]))]
    pred = _prediction(
        boxes=[[0, *PERSON], [0, 20, 0, 29, 9]],
        labels=[1, 7],
        pairs=[(0, 0, 1)],
        attention=[[0.0, 2.0, 0.0]],
        spatial=[[0.3, 0.2, 0.1, 0.1, 0.1, 0.1]],
        contacting=[_row(17, 0.05, c5=0.6, c8=0.5)],
    )
    return gt, pred


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        # with: one per row: looking (0.787, hit), holding (0.6, hit), above (0.3, hit)
        ("with", {1: 1 / 4, 2: 2 / 4, 3: 3 / 4, 4: 3 / 4, 10: 3 / 4}),
        # semi: attention argmax only; nothing above 0.9 in the other rows
        ("semi", {1: 1 / 4, 2: 1 / 4, 3: 1 / 4, 4: 1 / 4, 10: 1 / 4}),
        # no: cells 0.787, 0.6, 0.5, 0.3 are the four GT relations
        ("no", {1: 1 / 4, 2: 2 / 4, 3: 3 / 4, 4: 1.0, 10: 1.0}),
    ],
)
def test_hand_computed_constraints(constraint: str, expected: dict[int, float]) -> None:
    gt, pred = _one_object_video()
    result = _run(ActionGenomeRecall("predcls", constraint, ks=tuple(expected)), [(gt, pred)])
    for k, recall in expected.items():
        assert result[f"R@{k}"] == pytest.approx(recall, abs=1e-15), k
    # per predicate at K=10: not_looking_at, above, holding, not_contacting
    hits = {"with": (1, 1, 1, 0), "semi": (1, 0, 0, 0), "no": (1, 1, 1, 1)}[constraint]
    per_predicate = result["per_predicate"][10]
    for predicate, hit in zip((1, 3, 14, 17), hits, strict=True):
        assert per_predicate[predicate] == pytest.approx(hit, abs=1e-9)
    others = [p for p in range(26) if p not in (1, 3, 14, 17)]
    assert all(per_predicate[p] == 0.0 for p in others)
    assert result["mR@10"] == pytest.approx(sum(hits) / 26, abs=1e-9)
    assert result["frames"] == 1 and result["frames_without_gt"] == 0


def test_equal_scores_keep_the_pair_order() -> None:
    """Both pairs predict looking_at with the same score; only the first pair's is right."""
    gt = [
        _frame(
            "tie.mp4",
            0,
            _obj(5, [20, 0, 29, 9], att=[0]),
            _obj(6, [40, 0, 49, 9], att=[1]),
        )
    ]
    pred = _prediction(
        boxes=[[0, *PERSON], [0, 20, 0, 29, 9], [0, 40, 0, 49, 9]],
        labels=[1, 5, 6],
        pairs=[(0, 0, 1), (0, 0, 2)],
        attention=[[3.0, 0.0, 0.0], [3.0, 0.0, 0.0]],
        spatial=[[0.1] * 6, [0.1] * 6],
        contacting=[[0.1] * 17, [0.1] * 17],
    )
    result = _run(ActionGenomeRecall("predcls", "with", ks=(1, 6)), [(gt, pred)])
    assert result["R@1"] == 0.5  # rank 0 is the first pair's row
    assert result["R@6"] == 0.5
    swapped = {**pred, "pair_idx": pred["pair_idx"].flip(0)}
    assert _run(ActionGenomeRecall("predcls", "with", ks=(1,)), [(gt, swapped)])["R@1"] == 0.0


def test_all_zero_row_predicts_predicate_zero() -> None:
    """In ``with``, an all-zero contacting row is the prediction (person, looking_at, object)
    with score 0: it recalls a looking_at the attention row missed."""
    gt = [_frame("zero.mp4", 0, _obj(5, [20, 0, 29, 9], att=[0]))]
    pred = _prediction(
        boxes=[[0, *PERSON], [0, 20, 0, 29, 9]],
        labels=[1, 5],
        pairs=[(0, 0, 1)],
        attention=[[0.0, 0.0, 3.0]],  # unsure
        spatial=[[0.0] * 6],  # (object, looking_at, person): the wrong direction
        contacting=[[0.0] * 17],
    )
    result = _run(ActionGenomeRecall("predcls", "with", ks=(1, 2, 3)), [(gt, pred)])
    assert (result["R@1"], result["R@2"], result["R@3"]) == (0.0, 0.0, 1.0)
    assert _run(ActionGenomeRecall("predcls", "semi"), [(gt, pred)])["R@100"] == 0.0


@pytest.mark.parametrize(
    ("object_box", "recalled"),
    [
        ([0, 0, 9, 19], True),  # +1 convention: inter 100, union 100 + 200 - 100 -> IoU 0.5
        ([0, 0, 9, 20], False),  # union 210 -> IoU 0.476
    ],
)
def test_iou_exactly_one_half_matches(object_box: list[float], recalled: bool) -> None:
    gt = [_frame("iou.mp4", 0, _obj(8, [0, 0, 9, 9], att=[2]), person=[0, 0, 9, 19])]
    pred = _prediction(
        boxes=[[0, 0, 0, 9, 9], [0, *object_box]],  # the person box also has IoU 0.5
        labels=[1, 8],
        pairs=[(0, 0, 1)],
        attention=[[0.0, 0.0, 4.0]],
        spatial=[[0.1] * 6],
        contacting=[[0.1] * 17],
    )
    result = _run(ActionGenomeRecall("sgdet", "with", ks=(1,)), [(gt, pred)])
    assert result["R@1"] == (1.0 if recalled else 0.0)


def test_spatial_relations_point_from_object_to_person() -> None:
    """A spatial GT is recalled by the spatial block, which reverses the (person, object) pair."""
    gt = [_frame("spatial.mp4", 0, _obj(9, [20, 0, 29, 9], spa=[4]))]  # on_the_side_of
    boxes = [[0, *PERSON], [0, 20, 0, 29, 9]]
    rows = {
        "attention": [[0.0, 0.0, 0.0]],
        "spatial": [_row(6, 0.01, c4=0.9)],
        "contacting": [[0.01] * 17],
    }
    forward = _prediction(boxes, [1, 9], [(0, 0, 1)], **rows)
    result = _run(ActionGenomeRecall("predcls", "with", ks=(1, 3)), [(gt, forward)])
    assert result["R@1"] == 1.0  # (object, on_the_side_of, person) ranks first
    # the same scores on a pair given as (object, person): its spatial triplet is
    # (person, on_the_side_of, object), the wrong direction
    backward = _prediction(boxes, [1, 9], [(0, 1, 0)], **rows)
    result = _run(ActionGenomeRecall("predcls", "with", ks=(1, 3)), [(gt, backward)])
    assert result["R@3"] == 0.0


def test_frame_without_predictions_counts_zero() -> None:
    gt = [
        _frame("gap.mp4", 0, _obj(5, [20, 0, 29, 9], att=[0])),
        _frame("gap.mp4", 1, _obj(5, [20, 0, 29, 9], att=[0])),  # no predicted pair
    ]
    pred = _prediction(
        boxes=[[0, *PERSON], [0, 20, 0, 29, 9], [1, *PERSON], [1, 20, 0, 29, 9]],
        labels=[1, 5, 1, 5],
        pairs=[(0, 0, 1)],
        attention=[[2.0, 0.0, 0.0]],
        spatial=[[0.1] * 6],
        contacting=[[0.1] * 17],
    )
    result = _run(ActionGenomeRecall("predcls", "with", ks=(10,), per_video=True), [(gt, pred)])
    assert result["R@10"] == 0.5
    assert result["frames"] == 2 and result["frames_without_gt"] == 0
    assert result["per_video"] == {"gap.mp4": {"R@10": 0.5, "frames": 2, "frames_without_gt": 0}}


def test_video_without_any_pair() -> None:
    gt = [_frame("empty.mp4", 0, _obj(5, [20, 0, 29, 9], att=[0], con=[1]))]
    pred = _prediction([[0, *PERSON]], [1], [], [], [], [])
    for constraint in CONSTRAINTS:
        result = _run(ActionGenomeRecall("sgdet", constraint), [(gt, pred)])
        assert result["R@100"] == 0.0 and result["mR@100"] == 0.0
        assert result["per_predicate"][100][0] == 0.0
        assert result["frames"] == 1


def test_frame_without_gt_is_skipped_and_counted() -> None:
    gt = [
        _frame("skip.mp4", 0, _obj(5, [20, 0, 29, 9], att=[0], con=[2])),
        _frame("skip.mp4", 1, _obj(5, [20, 0, 29, 9])),  # an object without relations
        _frame("skip.mp4", 2),  # no object
    ]
    pred = _prediction(
        boxes=[[0, *PERSON], [0, 20, 0, 29, 9], [1, *PERSON], [1, 20, 0, 29, 9]],
        labels=[1, 5, 1, 5],
        pairs=[(0, 0, 1), (1, 2, 3)],
        attention=[[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]],
        spatial=[[0.1] * 6, [0.1] * 6],
        contacting=[_row(17, 0.1, c2=0.8), [0.9] * 17],
    )
    result = _run(ActionGenomeRecall("predcls", "with", ks=(10,)), [(gt, pred)])
    assert result["frames"] == 1
    assert result["frames_without_gt"] == 2
    assert result["R@10"] == 1.0  # the average runs over the one evaluated frame
    counts = [result["per_predicate"][10][p] for p in (0, 11)]
    assert counts == [pytest.approx(1.0, abs=1e-9)] * 2

    only_empty = [_frame("none.mp4", 0, _obj(5, [20, 0, 29, 9]))]
    metric = ActionGenomeRecall("predcls", "with")
    metric.update((only_empty, _prediction([[0, *PERSON]], [1], [], [], [], [])))
    with pytest.raises(NotComputableError, match="at least one frame with a GT relation"):
        metric.compute()


def test_semi_threshold_is_strict_against_float64() -> None:
    """float32 0.9 (0.89999998) fails ``> 0.9``; 0.90000004 passes."""
    gt = [_frame("semi.mp4", 0, _obj(5, [20, 0, 29, 9], con=[3]))]  # eating

    def recall(value: float) -> float:
        pred = _prediction(
            boxes=[[0, *PERSON], [0, 20, 0, 29, 9]],
            labels=[1, 5],
            pairs=[(0, 0, 1)],
            attention=[[0.0, 0.0, 5.0]],
            spatial=[[0.1] * 6],
            contacting=[_row(17, 0.05, c3=value)],
        )
        return _run(ActionGenomeRecall("predcls", "semi", ks=(100,)), [(gt, pred)])["R@100"]

    assert recall(np.float32(0.9)) == 0.0
    assert recall(np.float32(0.90000004)) == 1.0
    # a contacting row whose first two values are 0 is dropped, whatever else it holds
    pred = _prediction(
        boxes=[[0, *PERSON], [0, 20, 0, 29, 9]],
        labels=[1, 5],
        pairs=[(0, 0, 1)],
        attention=[[0.0, 0.0, 5.0]],
        spatial=[[0.1] * 6],
        contacting=[_row(17, 0.0, c3=0.99)],
    )
    assert _run(ActionGenomeRecall("predcls", "semi"), [(gt, pred)])["R@100"] == 0.0
    assert (
        _run(ActionGenomeRecall("predcls", "semi", semi_threshold=0.5), [(gt, pred)])["R@100"]
        == 0.0
    )
    assert _run(ActionGenomeRecall("predcls", "with"), [(gt, pred)])["R@10"] == 1.0


def test_duplicate_gt_object_is_recalled_by_one_prediction() -> None:
    obj = _obj(5, [20, 0, 29, 9], att=[0])
    gt = [_frame("dup.mp4", 0, obj, copy.deepcopy(obj))]
    pred = _prediction(
        boxes=[[0, *PERSON], [0, 20, 0, 29, 9]],
        labels=[1, 5],
        pairs=[(0, 0, 1)],
        attention=[[2.0, 0.0, 0.0]],
        spatial=[[0.1] * 6],
        contacting=[[0.1] * 17],
    )
    result = _run(ActionGenomeRecall("predcls", "with", ks=(1,)), [(gt, pred)])
    assert result["R@1"] == 1.0
    assert result["per_predicate"][1][0] == pytest.approx(1.0, abs=1e-9)  # 2 hits / 2


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def test_inputs_are_not_modified(vectors: dict[str, Any]) -> None:
    videos = []
    for gt, preds in vectors["cases"]["case_014"]["videos"]:
        pred = {k: torch.from_numpy(v.copy()) for k, v in preds["sgdet"].items()}
        pred["spatial_distribution"] = preds["sgdet"]["spatial_distribution"].copy()  # numpy too
        videos.append((gt, pred))
    before = [
        (
            {k: np.array(getattr(gt, k)) for k in ("person_boxes", "obj_boxes", "rel_pred")},
            {k: (v.clone() if isinstance(v, torch.Tensor) else v.copy()) for k, v in p.items()},
        )
        for gt, p in videos
    ]
    suite = ActionGenomeRecallSuite("sgdet")
    for video in videos:
        suite.update(video)
    for (gt, pred), (gt_before, pred_before) in zip(videos, before, strict=True):
        for key, value in pred.items():
            assert np.array_equal(np.asarray(value), np.asarray(pred_before[key])), key
        for key, value in gt_before.items():
            assert np.array_equal(getattr(gt, key), value), key
    # the metric copied its inputs: changing them before compute() changes nothing
    for _, pred in videos:
        pred["attention_distribution"].mul_(-1)
        pred["spatial_distribution"][:] = 0
    clean = [(gt, pred_before) for (gt, _), (_, pred_before) in zip(videos, before, strict=True)]
    assert suite.compute() == _run(ActionGenomeRecallSuite("sgdet"), clean)


def test_tensors_with_grad_and_float64_are_accepted() -> None:
    gt, pred = _one_object_video()
    expected = _run(ActionGenomeRecall("predcls", "no"), [(gt, pred)])
    logits = pred["attention_distribution"].clone().requires_grad_(True)
    other = {**pred, "attention_distribution": logits}
    other["contacting_distribution"] = pred["contacting_distribution"].double()
    other["im_idx"] = pred["im_idx"].long()
    assert _run(ActionGenomeRecall("predcls", "no"), [(gt, other)]) == expected
    assert logits.grad is None


def test_bfloat16_predictions_equal_their_float32_values() -> None:
    """Autocast outputs: bfloat16 values are read exactly (float32 holds every one of them)."""
    gt, pred = _one_object_video()
    low = {
        key: value.bfloat16() if value.is_floating_point() else value for key, value in pred.items()
    }
    same = {
        key: value.float() if value.is_floating_point() else value for key, value in low.items()
    }
    for constraint in CONSTRAINTS:
        expected = _run(ActionGenomeRecall("predcls", constraint), [(gt, same)])
        assert _run(ActionGenomeRecall("predcls", constraint), [(gt, low)]) == expected


def test_a_rejected_video_leaves_nothing_behind(vectors: dict[str, Any]) -> None:
    """A video refused by update() (here: its pair_idx points past its boxes) adds nothing,
    neither to the pending batch nor to later videos' numbers."""
    videos = _case_videos(vectors, "case_004", "sgdet")
    expected = _run(ActionGenomeRecallSuite("sgdet"), videos)
    bad_gt, bad_pred = videos[0]
    bad_pred = dict(bad_pred)
    pair_idx = torch.as_tensor(bad_pred["pair_idx"]).clone()
    pair_idx[-1, 1] = len(bad_pred["boxes"])
    bad_pred["pair_idx"] = pair_idx
    suite = ActionGenomeRecallSuite("sgdet")
    for i, video in enumerate(videos):
        if i == 1:
            with pytest.raises(ValueError, match="must index the"):
                suite.update((bad_gt, bad_pred))
        suite.update(video)
    assert suite.compute() == expected


def test_pair_order_is_irrelevant_without_ties(vectors: dict[str, Any]) -> None:
    """Permuting the pairs (and the boxes) of a video changes nothing when no scores tie."""
    rng = np.random.default_rng(5)
    for name in ("case_000", "case_001", "case_004", "case_009"):  # no tie-sensitive entry
        for mode in MODES:
            videos = _case_videos(vectors, name, mode)
            reference = _run(ActionGenomeRecallSuite(mode), videos)
            for _ in range(3):
                shuffled = [(gt, _permuted(pred, rng)) for gt, pred in videos]
                assert _run(ActionGenomeRecallSuite(mode), shuffled) == reference, (name, mode)


def _permuted(pred: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    pairs = rng.permutation(pred["im_idx"].shape[0])
    boxes = rng.permutation(pred["boxes"].shape[0])
    new_index = np.empty_like(boxes)
    new_index[boxes] = np.arange(boxes.shape[0])
    out = {k: pred[k][boxes] for k in ("boxes", "labels", "scores", "pred_labels", "pred_scores")}
    for key in (
        "im_idx",
        "attention_distribution",
        "spatial_distribution",
        "contacting_distribution",
    ):
        out[key] = pred[key][pairs]
    out["pair_idx"] = new_index[pred["pair_idx"][pairs]]
    return out


def test_update_checks_pred() -> None:
    gt, pred = _one_object_video()
    metric = ActionGenomeRecall("sgcls", "with")
    with pytest.raises(ValueError, match=r"lacks the keys \['pred_labels'\]"):
        metric.update((gt, {k: v for k, v in pred.items() if k != "pred_labels"}))
    with pytest.raises(ValueError, match=r"pred\['spatial_distribution'\] must have shape"):
        metric.update((gt, {**pred, "spatial_distribution": torch.zeros(1, 5)}))
    with pytest.raises(ValueError, match="must index the 2 boxes"):
        metric.update((gt, {**pred, "pair_idx": torch.tensor([[0, 2]])}))
    with pytest.raises(ValueError, match="integer frame indices"):
        metric.update((gt, {**pred, "im_idx": torch.tensor([0.5])}))
    with pytest.raises(ValueError, match="has 2 rows for 1 pairs"):
        metric.update((gt, {**pred, "attention_distribution": torch.zeros(2, 3)}))
    with pytest.raises(TypeError, match="pair"):
        metric.update(gt)
    with pytest.raises(TypeError, match="VideoGT"):
        metric.update((42, pred))


def test_pairs_outside_the_gt_frames_are_ignored() -> None:
    gt, pred = _one_object_video()
    extra = dict(pred)
    extra["im_idx"] = torch.tensor([0.0, 3.0])
    extra["pair_idx"] = torch.tensor([[0, 1], [0, 1]])
    for key in ("attention_distribution", "spatial_distribution", "contacting_distribution"):
        extra[key] = torch.cat([pred[key], torch.ones_like(pred[key])])
    for constraint in CONSTRAINTS:
        base = _run(ActionGenomeRecall("predcls", constraint), [(gt, pred)])
        assert _run(ActionGenomeRecall("predcls", constraint), [(gt, extra)]) == base


def test_unusual_label_values(vectors: dict[str, Any]) -> None:
    """Huge or negative labels on unmatched detections change nothing (sparse matching keys)."""
    videos = _case_videos(vectors, "case_004", "sgdet")
    reference = _run(ActionGenomeRecallSuite("sgdet"), videos)
    for label in (10**12, -7):
        relabelled = []
        for gt, pred in videos:
            pred = dict(pred)
            labels = pred["pred_labels"].copy()
            unmatched = ~np.isin(labels, np.r_[1, gt.obj_class])
            labels[unmatched] = label
            pred["pred_labels"] = labels
            relabelled.append((gt, pred))
        assert _run(ActionGenomeRecallSuite("sgdet"), relabelled) == reference


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "x"}, "mode must be one of 'predcls', 'sgcls', 'sgdet', got 'x'"),
        (
            {"constraint": "semi-no"},
            "constraint must be one of 'with', 'semi', 'no', got 'semi-no'",
        ),
        ({"constraint": None}, "constraint must be one of"),
        ({"ks": ()}, "ks must be a non-empty sequence of positive ints"),
        ({"ks": (0, 10)}, "ks must be a non-empty sequence of positive ints"),
        ({"ks": (10, 2.5)}, "ks must be a non-empty sequence of positive ints"),
        ({"ks": (True,)}, "ks must be a non-empty sequence of positive ints"),
        ({"ks": "10"}, "ks must be a non-empty sequence of positive ints"),
        ({"ks": (20, 10)}, r"ks must be sorted ascending without repeats, got \[20, 10\]"),
        ({"ks": (10, 10)}, "ks must be sorted ascending without repeats"),
        ({"semi_threshold": 1.5}, r"semi_threshold must be a number in \[0, 1\], got 1.5"),
        ({"semi_threshold": -0.1}, "semi_threshold must be a number in"),
        ({"semi_threshold": "0.9"}, "semi_threshold must be a number in"),
        ({"iou_threshold": 2}, r"iou_threshold must be a number in \[0, 1\], got 2"),
        ({"iou_threshold": True}, "iou_threshold must be a number in"),
        ({"per_video": 1}, "per_video must be a bool, got 1"),
    ],
)
def test_argument_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ActionGenomeRecall(**kwargs)


@pytest.mark.parametrize(
    ("constraints", "message"),
    [
        ((), "constraints must be a non-empty sequence"),
        ("with", "constraints must be a non-empty sequence"),
        (("with", "with"), "constraints must not repeat a value"),
        (("with", "none"), "constraint must be one of 'with', 'semi', 'no', got 'none'"),
    ],
)
def test_suite_argument_validation(constraints: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ActionGenomeRecallSuite("predcls", constraints=constraints)
    with pytest.raises(ConfigError, match="mode must be one of"):
        ActionGenomeRecallSuite("PredCls")


# --------------------------------------------------------------------------------------------
# Engine integration
# --------------------------------------------------------------------------------------------


def test_attached_suite_fills_engine_metrics(vectors: dict[str, Any]) -> None:
    videos = _case_videos(vectors, "case_010", "sgdet")
    evaluator = Engine(lambda engine, batch: {"gt": batch[0], "pred": batch[1]})
    ActionGenomeRecallSuite("sgdet", ks=(20, 50)).attach(evaluator, "ag")
    state = evaluator.run(videos)
    direct = _run(ActionGenomeRecallSuite("sgdet", ks=(20, 50)), videos)
    for key in ("with/R@20", "semi/mR@50", "no/R@50", "with/frames"):
        assert state.metrics[key] == direct[key]
    assert state.metrics["ag"]["no/per_predicate"] == direct["no/per_predicate"]
    # a second run starts from a reset state
    assert evaluator.run(videos).metrics["with/R@20"] == direct["with/R@20"]


# --------------------------------------------------------------------------------------------
# Against the per-frame implementation of the benchmark (its correctness check only)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def benchmark() -> Any:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import metrics_speed
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return metrics_speed


def _random_video(rng: np.random.Generator, name: str, quantised: bool) -> tuple[list, dict]:
    """Detections with jitter, duplicates, wrong labels (also 'person'), reversed pairs, and,
    when ``quantised``, many exactly equal scores and zero rows."""
    frames, boxes, labels, scores, pairs = [], [], [], [], []
    for f in range(int(rng.integers(0, 5))):
        person = rng.integers(0, 40, 2).astype(float)
        person = [*person, *(person + rng.integers(30, 60, 2))]
        objects = []
        for _ in range(int(rng.integers(0, 12))):
            xy = rng.integers(0, 60, 2).astype(float)
            objects.append(
                _obj(
                    int(rng.integers(2, 7)),
                    [*xy, *(xy + rng.integers(5, 60, 2))],
                    att=rng.choice(3, rng.integers(0, 2), replace=False),
                    spa=rng.choice(6, rng.integers(0, 3), replace=False),
                    con=rng.choice(17, rng.integers(0, 3), replace=False),
                )
            )
        frames.append(_frame(name, f, *objects, person=person))
        subject = len(boxes)
        boxes.append([f, *(np.asarray(person) + rng.integers(-3, 4, 4))])
        labels.append(1 if rng.random() > 0.1 else int(rng.integers(2, 7)))
        scores.append(rng.choice([1.0, 0.5, rng.random()]))
        for obj in objects:
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
                boxes.append([f, *(obj["bbox"] + rng.integers(-6, 7, 4))])
                labels.append(obj["class"] if rng.random() > 0.2 else int(rng.integers(1, 7)))
                scores.append(rng.choice([1.0, 0.5, rng.random()]))
                pair = (subject, len(boxes) - 1)
                pairs.append((f, *(pair if rng.random() > 0.1 else pair[::-1])))
    n = len(pairs)
    attention = rng.normal(0, 2, (n, 3))
    spatial, contacting = rng.random((n, 6)), rng.random((n, 17))
    if quantised:
        attention, spatial, contacting = (
            np.round(attention),
            np.round(spatial * 4) / 4,
            np.round(contacting * 4) / 4,
        )
        spatial[rng.random(n) < 0.3, :2] = 0
        contacting[rng.random(n) < 0.3] = 0
        attention[rng.random(n) < 0.2] = [-100.0, -100.0, 100.0]  # softmax exactly (0, 0, 1)
    order = rng.permutation(n)
    pred = _prediction(
        boxes,
        labels,
        [pairs[i] for i in order],
        attention[order].tolist(),
        spatial[order].tolist(),
        contacting[order].tolist(),
        scores,
    )
    return frames, pred


def test_matches_per_frame_reference_on_random_videos(benchmark: Any) -> None:
    """R@K and every per-predicate recall equal those of the benchmark's per-frame version on
    random videos (both rank with stable sorts, so even ties must agree)."""
    ks = (1, 3, 10, 20, 50, 100)
    checked = 0
    for seed in range(24):
        rng = np.random.default_rng(seed)
        videos = [
            _random_video(rng, f"r{seed}_{v}.mp4", quantised=seed % 2 == 0)
            for v in range(int(rng.integers(1, 4)))
        ]
        mode = MODES[seed % 3]
        for constraint in CONSTRAINTS:
            recalls, per_predicate = _reference_results(benchmark, videos, mode, constraint, ks)
            metric = ActionGenomeRecall(mode, constraint, ks=ks)
            if not recalls[0]:  # no frame with a GT relation
                with pytest.raises(NotComputableError):
                    _run(metric, videos)
                continue
            ours = _run(metric, videos)
            for j, k in enumerate(ks):
                checked += 1
                assert ours[f"R@{k}"] == pytest.approx(
                    math.fsum(recalls[j]) / len(recalls[j]), abs=1e-12
                ), (seed, mode, constraint, k)
                assert ours["per_predicate"][k] == per_predicate[j].tolist()
    assert checked > 300


def _reference_results(benchmark: Any, videos: list, mode: str, constraint: str, ks: tuple):
    """R@K and per-predicate recall of the benchmark's per-frame implementation."""
    recalls: list[list[float]] = [[] for _ in ks]
    hits = np.zeros((len(ks), 26))
    counts = np.zeros(26)
    for frames, pred in videos:
        for frame in benchmark.reference_video(frames, pred, mode, constraint, ks):
            if frame is None:
                continue
            predicates, recalled = frame
            np.add.at(counts, predicates, 1)
            for j in range(len(ks)):
                recalls[j].append(recalled[j].mean())
                np.add.at(hits[j], predicates[recalled[j]], 1)
    return recalls, hits / (counts + 1e-10)


def test_frames_of_very_different_sizes(benchmark: Any) -> None:
    """60 one-pair frames and one 80-pair frame: the ranking tables split by frame size."""
    rng = np.random.default_rng(3)
    frames, boxes, labels, pairs = [], [], [], []
    for f in range(61):
        n = 80 if f == 30 else 1
        objects = [
            _obj(
                int(rng.integers(2, 30)),
                [20.0 * i, 0, 20.0 * i + 15, 15],
                att=[i % 3],
                con=[i % 17],
            )
            for i in range(n)
        ]
        frames.append(_frame("sizes.mp4", f, *objects))
        person = len(boxes)
        boxes.append([f, *PERSON])
        labels.append(1)
        for obj in objects:
            boxes.append([f, *obj["bbox"]])
            labels.append(obj["class"])
            pairs.append((f, person, len(boxes) - 1))
    m = len(pairs)
    pred = _prediction(
        boxes,
        labels,
        pairs,
        rng.normal(size=(m, 3)).tolist(),
        rng.random((m, 6)).tolist(),
        rng.random((m, 17)).tolist(),
    )
    ks = (1, 10, 50, 100)
    for constraint in CONSTRAINTS:
        recalls, per_predicate = _reference_results(
            benchmark, [(frames, pred)], "predcls", constraint, ks
        )
        ours = _run(ActionGenomeRecall("predcls", constraint, ks=ks), [(frames, pred)])
        for j, k in enumerate(ks):
            assert ours[f"R@{k}"] == pytest.approx(math.fsum(recalls[j]) / 61, abs=1e-12)
            assert ours["per_predicate"][k] == per_predicate[j].tolist()


def test_benchmark_check_passes_on_a_small_dataset(benchmark: Any) -> None:
    videos = benchmark.make_dataset(num_videos=3, num_frames=4, num_objects=6, seed=1)
    refs = benchmark.check_equal(videos)
    assert set(refs) == set(CONSTRAINTS)
    assert all(0.0 < refs[c]["R@100"] <= 1.0 for c in CONSTRAINTS)


def _one_frame_video(contacting: list[int]) -> tuple[list, dict]:
    """The class docstring's one-frame video named ``frames`` (frame key ``frames/000001.png``):
    a person, one object (class 5) looked at, with ``contacting`` as its contact labels; the
    prediction looks at it (logits 5, 0, 0) and predicts contact 8 ('carrying', 0.2 ties: the
    lowest column) for it."""
    gt = [
        [
            {"person_bbox": torch.tensor([[0.0, 0, 10, 10]]), "frame": "frames/000001.png"},
            {
                "class": 5,
                "bbox": [20.0, 0, 30, 10],
                "attention_relationship": [0],
                "spatial_relationship": [],
                "contacting_relationship": contacting,
            },
        ]
    ]
    pred = {
        "boxes": torch.tensor([[0.0, 0, 0, 10, 10], [0.0, 20, 0, 30, 10]]),
        "labels": torch.tensor([1, 5]),
        "scores": torch.ones(2),
        "im_idx": torch.zeros(1),
        "pair_idx": torch.tensor([[0, 1]]),
        "attention_distribution": torch.tensor([[5.0, 0, 0]]),
        "spatial_distribution": torch.full((1, 6), 0.1),
        "contacting_distribution": torch.full((1, 17), 0.2),
    }
    return gt, pred


def test_two_different_videos_under_one_id_both_count_and_a_repeat_counts_once() -> None:
    """Issue 19, point 4: the second video named ``frames`` was dropped in silence whatever its
    content. By hand, with the 'with' constraint: video A (looked at + contact 8) recalls 1 of
    its 2 relations (R@10 = 0.5); video B (looked at only) recalls its one (1.0). The reference
    averages frames: (0.5 + 1.0) / 2 = 0.75. A itself given twice (a padded sample) counts once.
    """
    a, b = _one_frame_video([8]), _one_frame_video([])
    metric = ActionGenomeRecall("predcls", "with", ks=(10,), per_video=True)
    for video in (a, b, a):
        metric.update(video)
    result = metric.compute()
    assert result["R@10"] == pytest.approx(0.75, abs=1e-12)
    assert result["frames"] == 2
    assert result["per_video"]["frames"]["R@10"] == pytest.approx(0.5)
    assert result["per_video"]["frames (2)"]["R@10"] == pytest.approx(1.0)

    suite = ActionGenomeRecallSuite("predcls", ("with",), ks=(10,))
    for video in (a, b):
        suite.update(video)
    assert suite.compute()["with/R@10"] == pytest.approx(0.75, abs=1e-12)

"""Attention given as probabilities (``attention_probabilities``, TEMPURA): no second softmax."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from m3sgg.data.structures import VideoGT
from m3sgg.metrics.action_genome import ActionGenomeRecall, ActionGenomeRecallSuite

PERSON = [0.0, 0.0, 9.0, 9.0]


def _run(metric: Any, videos: list[tuple[Any, Any]]) -> dict[str, Any]:
    metric.reset()
    for video in videos:
        metric.update(video)
    return metric.compute()


def _as_probabilities(pred: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in pred.items() if k != "attention_distribution"}
    logits = torch.as_tensor(np.asarray(pred["attention_distribution"], np.float32))
    out["attention_probabilities"] = torch.softmax(logits, dim=1)
    return out


def _vector_videos(vectors_dir: Path, name: str, mode: str) -> list[tuple[VideoGT, dict]]:
    case = json.loads((vectors_dir / "ag" / f"{name}.json").read_text())
    videos = []
    for video in case["videos"]:
        frames = [
            [
                {"frame": f["frame"], "person_bbox": np.asarray(f["person_bbox"], np.float32)},
                *[dict(o, bbox=np.asarray(o["bbox"], np.float64)) for o in f["objects"]],
            ]
            for f in video["frames"]
        ]
        raw = video["pred"][mode]
        widths = {"attention_distribution": 3, "spatial_distribution": 6}
        pred = {
            "boxes": np.asarray(raw["boxes"], np.float32).reshape(-1, 5),
            "im_idx": np.asarray(raw["im_idx"], np.float32),
            "pair_idx": np.asarray(raw["pair_idx"], np.int64).reshape(-1, 2),
            **{k: np.asarray(raw[k], np.int64) for k in ("labels", "pred_labels")},
            **{k: np.asarray(raw[k], np.float32) for k in ("scores", "pred_scores")},
            **{
                k: np.asarray(raw[k], np.float32).reshape(-1, widths.get(k, 17))
                for k in (
                    "attention_distribution",
                    "spatial_distribution",
                    "contacting_distribution",
                )
            },
        }
        videos.append((VideoGT.from_sttran(frames), pred))
    return videos


@pytest.mark.parametrize("mode", ["predcls", "sgdet"])
def test_softmaxed_probabilities_give_the_logits_results(vectors_dir: Path, mode: str) -> None:
    """The metric's own softmax, done by the model instead: every number identical."""
    for name in ("case_000", "case_005", "case_011"):
        videos = _vector_videos(vectors_dir, name, mode)
        given = [(gt, _as_probabilities(pred)) for gt, pred in videos]
        assert _run(ActionGenomeRecallSuite(mode), given) == _run(
            ActionGenomeRecallSuite(mode), videos
        )


def _one_frame(
    attention: list[float], key: str, video: str = "v.mp4"
) -> tuple[VideoGT, dict[str, torch.Tensor]]:
    """GT: looking_at (a1) and above (s0). Spatial 'above' 0.6, contacting at most 0.5."""
    gt = VideoGT.from_sttran(
        [
            [
                {"frame": f"{video}/000000.png", "person_bbox": np.asarray([PERSON], np.float32)},
                {
                    "class": 7,
                    "bbox": np.asarray([20, 0, 29, 9], np.float64),
                    "attention_relationship": [1],
                    "spatial_relationship": [0],
                    "contacting_relationship": [],
                },
            ]
        ]
    )
    pred = {
        "boxes": torch.tensor([[0, *PERSON], [0, 20, 0, 29, 9]], dtype=torch.float32),
        "labels": torch.tensor([1, 7]),
        "scores": torch.ones(2),
        "im_idx": torch.tensor([0.0]),
        "pair_idx": torch.tensor([[0, 1]]),
        key: torch.tensor([attention]),
        "spatial_distribution": torch.tensor([[0.6, 0.1, 0.1, 0.1, 0.1, 0.1]]),
        "contacting_distribution": torch.full((1, 17), 0.05).index_fill(1, torch.tensor([3]), 0.5),
    }
    return gt, pred


def test_probabilities_rank_as_given() -> None:
    """R@1 of one frame: attention 0.7 outranks spatial 0.6 as given; softmaxed again it would be
    e^0.7 / (e^0.2 + e^0.7 + e^0.1) = 0.464 and lose to it."""
    metric = ActionGenomeRecall("predcls", "with", ks=(1,))
    given = _run(metric, [_one_frame([0.2, 0.7, 0.1], "attention_probabilities")])
    assert given["per_predicate"][1][1] == pytest.approx(1.0)  # looking_at recalled at 1
    assert given["per_predicate"][1][3] == pytest.approx(0.0)
    as_logits = _run(metric, [_one_frame([0.2, 0.7, 0.1], "attention_distribution")])
    assert as_logits["per_predicate"][1][1] == pytest.approx(0.0)
    assert as_logits["per_predicate"][1][3] == pytest.approx(1.0)


def test_videos_of_both_kinds_in_one_batch() -> None:
    logits_video = _one_frame([0.2, 0.7, 0.1], "attention_distribution")
    probs_video = _one_frame([0.2, 0.7, 0.1], "attention_probabilities", video="w.mp4")
    metric = ActionGenomeRecall("predcls", "with", ks=(1,))
    together = _run(metric, [logits_video, probs_video])
    assert together["R@1"] == pytest.approx(0.5)
    assert together["per_predicate"][1][1] == pytest.approx(0.5)
    assert together["per_predicate"][1][3] == pytest.approx(0.5)

"""The command line end to end: toy data, inspection, training, evaluation, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from m3sgg.engine.handlers.metrics_file import read_metrics_file

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "data.toy_videos=16", "--epochs", "2"]


def m3sgg(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "m3sgg", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_version_and_help():
    assert m3sgg("--version").stdout.startswith("m3sgg ")
    helped = m3sgg("--help")
    assert helped.returncode == 0
    for command in ("train", "evaluate", "toy-data", "inspect-data"):
        assert command in helped.stdout


@pytest.mark.parametrize("dataset", ["action_genome", "easg"])
def test_toy_data_then_inspect_data_round_trip(tmp_path: Path, dataset: str):
    out = tmp_path / "toy"
    made = m3sgg("toy-data", str(out), "--dataset", dataset, "--seed", "3")
    assert made.returncode == 0, made.stderr
    split = "train"
    shown = m3sgg(
        "inspect-data", "--dataset", dataset, "--data-path", str(out), "--split", split, "--json"
    )
    assert shown.returncode == 0, shown.stderr
    stats = json.loads(shown.stdout)
    if dataset == "action_genome":
        from m3sgg.data.action_genome import ActionGenome

        reader = ActionGenome(out, split)
        assert stats["videos"] == len(reader) > 0
        assert stats["frames"] == sum(reader[i].gt.num_frames for i in range(len(reader)))
        assert sum(stats["predicates"].values()) == sum(stats["relations"].values())
    else:
        from m3sgg.data.easg import EASG

        assert stats["graphs"] == len(EASG(out, split, features=False)) > 0
    text = m3sgg("inspect-data", "--dataset", dataset, "--data-path", str(out))
    assert text.returncode == 0 and "after the protocol's filtering" in text.stdout


def test_user_errors_are_one_line_with_exit_code_2(tmp_path: Path):
    missing = m3sgg("inspect-data", "--data-path", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "nowhere" in missing.stderr
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "keep.txt").write_text("mine")
    exists = m3sgg("toy-data", str(tmp_path / "toy"))
    assert exists.returncode == 2 and "Traceback" not in exists.stderr
    assert (tmp_path / "toy" / "keep.txt").read_text() == "mine"
    bad_set = m3sgg("train", "--set", "optim.lrr=1", "--output", str(tmp_path))
    assert bad_set.returncode == 2 and "did you mean 'optim.lr'" in bad_set.stderr


def test_train_then_evaluate_prints_the_metrics_file_keys(toy_cache: Path, tmp_path: Path):
    trained = m3sgg("train", "--output", str(tmp_path), "--name", "cli", *FAST)
    assert trained.returncode == 0, trained.stderr
    assert f"run folder: {tmp_path / 'cli'}" in trained.stdout
    assert "final evaluation: with R@20" in trained.stdout
    records = read_metrics_file(tmp_path / "cli" / "metrics.jsonl")
    assert len(records) == 2
    evaluated = m3sgg("evaluate", "--checkpoint", str(tmp_path / "cli"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert set(metrics) == set(records[-1]["metrics"])
    assert metrics["with/R@20"] == pytest.approx(records[-1]["metrics"]["with/R@20"], abs=0)
    text = m3sgg("evaluate", "--checkpoint", str(tmp_path / "cli" / "checkpoints" / "last.pt"))
    assert text.returncode == 0 and "@20" in text.stdout and "mR@20" in text.stdout


def test_training_is_deterministic_for_a_seed(toy_cache: Path, tmp_path: Path):
    for name in ("a", "b"):
        done = m3sgg("train", "--output", str(tmp_path), "--name", name, "--seed", "5", *FAST)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (
        tmp_path / "b" / "metrics.jsonl"
    ).read_text()

"""Exact resume in a new process: mid-epoch and at an epoch boundary, bitwise on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m3sgg.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "--set", "data.toy_videos=16",
    "--set", "model.options.heads=2", "--set", "model.options.ff_dim=32",
    "--set", "model.options.proj_dim=32", "--set", "model.options.embed_dim=16",
    "--set", "checkpoint.every_iters=4", "--epochs", "2",
]  # fmt: skip


def m3sgg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "m3sgg", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def uninterrupted(toy_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    done = m3sgg("train", "--output", str(out), "--name", "full", *SMALL)
    assert done.returncode == 0, done.stderr
    return out / "full"


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [8, 10], ids=["mid-epoch", "epoch-boundary"])
def test_resumed_run_is_bitwise_identical(uninterrupted: Path, tmp_path: Path, stop_at: int):
    epoch_length = load_checkpoint(uninterrupted / "checkpoints" / "last.pt")["engine"][
        "epoch_length"
    ]
    assert epoch_length == 10  # 8 is mid-epoch (a checkpoint every 4 iterations), 10 its end
    common = ["train", "--output", str(tmp_path), "--name", "resumed", *SMALL]
    first = m3sgg(
        *common, "--plugin", "tests.engine.stop_plugin:stop_at", env={"M3SGG_STOP_AT": str(stop_at)}
    )
    assert first.returncode == 0, first.stderr
    interrupted = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert interrupted["engine"]["iteration"] == stop_at

    second = m3sgg(*common, "--resume", "auto")
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout

    expected = load_checkpoint(uninterrupted / "checkpoints" / "last.pt")
    actual = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert actual["engine"] == expected["engine"]
    for key, tensor in expected["model"].items():
        assert torch.equal(actual["model"][key], tensor), key
    for key, state in expected["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(
                torch.as_tensor(actual["optimizer"]["state"][key][name]), torch.as_tensor(value)
            ), (key, name)
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == (
        uninterrupted / "metrics.jsonl"
    ).read_text()


def test_fresh_run_refuses_to_overwrite_an_existing_run(uninterrupted: Path):
    before = {p: p.read_bytes() for p in uninterrupted.rglob("*") if p.is_file()}
    again = m3sgg("train", "--output", str(uninterrupted.parent), "--name", "full", *SMALL)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "--resume auto" in again.stderr
    assert {p: p.read_bytes() for p in uninterrupted.rglob("*") if p.is_file()} == before


def test_resume_rejects_a_checkpoint_of_another_mode(uninterrupted: Path, tmp_path: Path):
    other = m3sgg(
        "train",
        "--output",
        str(tmp_path),
        "--name",
        "x",
        "--mode",
        "sgcls",
        *SMALL,
        "--resume",
        str(uninterrupted / "checkpoints" / "last.pt"),
    )
    assert other.returncode == 2
    assert "manifest.mode" in other.stderr and "predcls" in other.stderr
    assert "Traceback" not in other.stderr


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_resume_auto_of_a_finished_run_changes_nothing(uninterrupted: Path, tmp_path: Path):
    """Issue 19, point 1: it used to retrain the whole schedule on top of the trained weights
    (metrics.jsonl epochs 1, 2, 1, 2; best and last checkpoints overwritten)."""
    import shutil

    run = tmp_path / "full"
    shutil.copytree(uninterrupted, run)
    before = _snapshot(run)
    again = m3sgg("train", "--output", str(tmp_path), "--name", "full", *SMALL, "--resume", "auto")
    assert again.returncode == 0, again.stderr
    assert "is complete: 2 of 2 epochs trained; nothing to do" in again.stdout
    assert _snapshot(run) == before

    lower = m3sgg(
        "train", "--output", str(tmp_path), "--name", "full", *SMALL, "--resume", "auto",
        "--epochs", "1",
    )  # fmt: skip
    assert lower.returncode == 2
    assert lower.stderr.count("\n") == 1, lower.stderr
    assert "already at epoch 2" in lower.stderr and "--epochs 2 or more" in lower.stderr
    assert _snapshot(run) == before


@pytest.mark.slow
def test_raising_epochs_of_a_finished_run_trains_only_the_new_epochs(
    uninterrupted: Path, tmp_path: Path
):
    import json
    import shutil

    run = tmp_path / "full"
    shutil.copytree(uninterrupted, run)
    more = m3sgg(
        "train", "--output", str(tmp_path), "--name", "full", *SMALL, "--resume", "auto",
        "--epochs", "3",
    )  # fmt: skip
    assert more.returncode == 0, more.stderr
    assert "resumed from" in more.stdout
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert lines[:2] == (uninterrupted / "metrics.jsonl").read_text().splitlines()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["engine"]["iteration"] == 30

"""``m3sgg extract-features --detector ag-faster-rcnn`` on the toy frames, in real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from m3sgg.data.features import FeatureStore
from m3sgg.data.toy import make_toy_action_genome
from m3sgg.detection.extraction import write_toy_frames
from m3sgg.detection.faster_rcnn import ActionGenomeDetector

from .conftest import TINY, randomize

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("agcli")
    root = make_toy_action_genome(base / "ag", videos=4)
    write_toy_frames(root, size=(48, 32))
    model = randomize(ActionGenomeDetector(TINY))
    with torch.no_grad():
        model.cls_score.weight.mul_(4)  # class probabilities over 0.1: sgdet keeps boxes
        model.bbox_pred.weight.mul_(0.05)
        model.rpn.bbox_pred.weight.mul_(0.05)
    weights = base / "faster_rcnn_ag.pth"
    torch.save({"model": model.original_state_dict()}, weights)  # the original's layout
    return root, weights


def _cmd(root: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "m3sgg", "extract-features", "--detector", "ag-faster-rcnn"),
        *("--weights", str(weights), "--data-path", str(root), "--out", str(out), *extra),
    ]


def _env() -> dict[str, str]:
    path = str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=path)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=900)


@pytest.mark.slow
def test_sgdet_store_has_every_section(toy: tuple[Path, Path], tmp_path: Path) -> None:
    root, weights = toy
    out = tmp_path / "store"
    done = _run(_cmd(root, weights, out, "--mode", "sgdet", "--splits", "test"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("extract-features: wrote")
    assert not (tmp_path / ".store.partial").exists()  # the per-video files are gone
    store = FeatureStore(out)
    keys = list(store.keys)
    gt = store.video(keys[:2])
    assert gt.box_features.shape[1] == TINY.resnet.head_channels
    assert gt.union_maps.shape[1:] == (TINY.resnet.base_channels, 7, 7)
    assert gt.union_maps.dtype == np.float16 and gt.class_dists is not None
    det = store.video(keys[:2], section="det")
    assert det.union_diagonal and det.scores is not None and det.class_dists.shape[1] == 36
    train = store.video(keys[:2], section="det_train")
    assert train.labels is not None and train.pair_targets is not None
    assert train.pair_targets.min() >= 0


@pytest.mark.slow
def test_predcls_store_trains_sttran(toy: tuple[Path, Path], tmp_path: Path) -> None:
    root, weights = toy
    out = tmp_path / "store"
    assert _run(_cmd(root, weights, out, "--mode", "sgcls")).returncode == 0
    run = tmp_path / "run"
    done = _run(
        [
            *(sys.executable, "-m", "m3sgg", "train", "--data-path", str(root)),
            *("--set", f"data.features={out}", "--model", "sttran", "--epochs", "1"),
            *("--output", str(run)),
        ]
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_bad_weights_is_one_line_and_exit_2(toy: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = toy
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"RCNN_base.0.weight": torch.zeros(4, 3, 7, 7)}}, bad)
    done = _run(_cmd(root, bad, tmp_path / "store"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "bad.pth" in done.stderr and "missing keys" in done.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_interrupted_extraction_resumes(toy: tuple[Path, Path], tmp_path: Path) -> None:
    root, weights = toy
    out = tmp_path / "store"
    spool = tmp_path / ".store.partial" / "videos"
    args = _cmd(root, weights, out, "--mode", "predcls", "--batch-frames", "1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + 600
    while not (spool.is_dir() and any(spool.glob("*.npz"))):  # the first video is done
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=300)
    assert proc.returncode != 0 and not out.exists()
    done_before = sorted(p.name for p in spool.glob("*.npz"))
    assert done_before
    again = _run(args)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0] == f"extract-features: resuming, {len(done_before)} videos already done"
    assert FeatureStore(out).keys

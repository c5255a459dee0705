"""``m3sgg import-checkpoint --from tempura`` (a real process) on a checkpoint in the original's
layout, then ``m3sgg evaluate`` on what it writes: the memory the original's file holds is the
memory the evaluation uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic_videos import TINY

from m3sgg.data.toy import make_toy_action_genome
from m3sgg.engine.builders import evaluate_checkpoint
from m3sgg.engine.checkpoint import load_checkpoint
from m3sgg.models import build_model
from m3sgg.models.tempura.convert import original_checkpoint

REPO = Path(__file__).resolve().parents[2]
KEYS = ("with/R@20", "with/mR@20", "no/R@50", "semi/mR@10")


def _m3sgg(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "m3sgg", *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.parametrize("mode", ["predcls", "sgdet"])
def test_import_checkpoint_then_evaluate(mode: str, toy_cache: Path, tmp_path: Path) -> None:
    root = make_toy_action_genome(tmp_path / "ag", videos=10, seed=2, union_channels=4)
    widths = {**TINY, "object_dim": 64, "union_channels": 4}
    torch.manual_seed(0)
    source = build_model(
        "tempura", "action_genome", mode, **widths, k=3, tracking=True, lam=0.3,
        classifier_dim=16, pos_dim=12,  # tracking width 64 + 4 + 12: 8 heads
    )  # fmt: skip
    memory = torch.randn(26, source.memory_fusion.memory.shape[1]) * 5
    source.set_memory(memory)
    original = tmp_path / "best_Mrecall_model.tar"
    torch.save(original_checkpoint(source), original)
    out = tmp_path / "imported.pt"
    run = _m3sgg(
        "import-checkpoint", "--from", "tempura", str(original), "--output", str(out),
        "--mode", mode, "--option", "heads=4", "--option", "lam=0.3",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "m3sgg evaluate --checkpoint" in run.stdout
    saved = load_checkpoint(out)
    assert saved["manifest"]["mode"] == mode and saved["config"]["data"]["mode"] == mode
    options = saved["config"]["model"]["options"]
    assert (options["k"], options["lam"], options["heads"]) == (3, 0.3, 4)
    assert options.get("tracking", False) == (mode == "sgdet")
    assert torch.equal(saved["model"]["memory_fusion.memory"], memory)
    assert bool(saved["model"]["memory_fusion.ready"])

    run = _m3sgg("evaluate", "--checkpoint", str(out), "--data-path", str(root), "--json")
    assert run.returncode == 0, run.stderr
    metrics = json.loads(run.stdout.strip().splitlines()[-1])
    again = evaluate_checkpoint(out, [f"data.path={root}"])
    assert {k: metrics[k] for k in KEYS} == {k: again[k] for k in KEYS}
    if mode == "predcls":  # (sgdet's random classifier finds no triplet: recall 0 either way)
        # the same weights without the memory score differently: the evaluation used it
        saved["model"]["memory_fusion.ready"] = torch.tensor(False)
        torch.save(saved, tmp_path / "without_memory.pt")
        without = evaluate_checkpoint(tmp_path / "without_memory.pt", [f"data.path={root}"])
        assert any(without[k] != metrics[k] for k in KEYS), (without, metrics)

    bad = original_checkpoint(source)
    bad["rel_memory"]["spatial"] = torch.zeros(5, 2)
    torch.save(bad, original)
    run = _m3sgg(
        "import-checkpoint", "--from", "tempura", str(original), "--output", str(out),
        "--mode", mode, "--option", "heads=4",
    )  # fmt: skip
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "rel_memory.spatial" in lines[0] and "Traceback" not in run.stderr

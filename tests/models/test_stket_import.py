"""``m3sgg import-checkpoint --from stket`` through the real CLI, then ``m3sgg evaluate`` on it."""

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
from m3sgg.engine.checkpoint import load_checkpoint
from m3sgg.models import import_original
from m3sgg.models.stket.convert import key_map
from m3sgg.models.stket.model import HEADS, STKET

REPO = Path(__file__).resolve().parents[2]
TOY_OBJECT_DIM, TOY_UNION = 64, 4
WIDTHS = {
    **{k: v for k, v in TINY.items() if k not in ("enc_layers", "dec_layers")},
    "object_dim": TOY_OBJECT_DIM,
    "union_channels": TOY_UNION,
    "ff_dim": 24,
    "state_dims": (8, 6, 10),
    "enc_layers": 1,
    "dec_layers": 3,
    "window": 3,
}
CLASSIFIER = {"classifier_dim": 16, "pos_dim": 8}


def _m3sgg(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "m3sgg", *args], capture_output=True, text=True, env=env, timeout=600
    )


def _original_checkpoint(mode: str, path: Path) -> STKET:
    """A randomised model of ours saved as the original's train.py does: ``{"state_dict": ...}``
    under the original's keys (plus its pre-transformer heads, which this model drops)."""
    torch.manual_seed(7)
    extra = CLASSIFIER if mode != "predcls" else {}
    model = STKET(priors="zeros", mode=mode, **WIDTHS, **extra)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    ours = model.state_dict()
    table = key_map(WIDTHS["enc_layers"], WIDTHS["dec_layers"], classifier=mode != "predcls")
    state = {original: ours[target].clone() for original, target in table.items() if target}
    token = 3 * WIDTHS["proj_dim"] + 2 * WIDTHS["embed_dim"]
    state["a_rel_compress.weight"] = torch.zeros(3, token)
    torch.save({"state_dict": state}, path)
    return model


def test_widths_are_read_from_the_tensors(tmp_path: Path):
    source = tmp_path / "model_3.tar"
    model = _original_checkpoint("sgcls", source)
    imported = import_original("stket", source, mode="sgcls", heads=TINY["heads"])
    options = imported.config_options
    assert options["enc_layers"] == 1 and options["dec_layers"] == 3
    assert options["window"] == 3 and options["ff_dim"] == 24
    assert list(options["state_dims"]) == [8, 6, 10]
    assert (options["classifier_dim"], options["pos_dim"]) == (16, 8)
    assert options["priors"] == "zeros" and options["heads"] == TINY["heads"]
    assert "object_dim" not in options and "mode" not in options
    for key, value in model.state_dict().items():
        assert torch.equal(imported.state_dict()[key], value), key
    twice = import_original("stket", source, mode="sgcls", heads=TINY["heads"], layer_passes=2)
    assert twice.layer_passes == 2 and twice.config_options["layer_passes"] == 2


@pytest.mark.parametrize("mode", ["predcls", "sgdet"])
def test_import_checkpoint_then_evaluate(tmp_path: Path, mode: str):
    root = make_toy_action_genome(
        tmp_path / "ag", videos=10, seed=2, object_dim=TOY_OBJECT_DIM, union_channels=TOY_UNION
    )
    source = tmp_path / "model_9.tar"
    model = _original_checkpoint(mode, source)
    out = tmp_path / "imported.pt"
    run = _m3sgg(
        "import-checkpoint", "--from", "stket", str(source), "--output", str(out),
        "--mode", mode, "--option", f"heads={TINY['heads']}", "--option", "contact_threshold=0.5",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "m3sgg evaluate --checkpoint" in run.stdout
    saved = load_checkpoint(out)
    assert saved["config"]["data"]["mode"] == mode
    options = saved["config"]["model"]["options"]
    assert options["contact_threshold"] == 0.5 and options["priors"] == "zeros"
    for key, value in model.state_dict().items():  # the prior tables are the checkpoint's
        assert torch.equal(saved["model"][key], value), key
    assert saved["model"]["temporal_decoder.specific_prior"].abs().sum() > 0

    run = _m3sgg("evaluate", "--checkpoint", str(out), "--data-path", str(root), "--json")
    assert run.returncode == 0, run.stderr
    metrics = json.loads(run.stdout.strip().splitlines()[-1])
    for head in HEADS:
        assert 0.0 <= metrics[f"{head}/with/R@20"] <= 1.0
    assert metrics["with/R@20"] == metrics["temporal/with/R@20"]


def test_import_checkpoint_bad_input_is_one_line(tmp_path: Path):
    source = tmp_path / "model_0.tar"
    _original_checkpoint("predcls", source)
    out = tmp_path / "imported.pt"
    run = _m3sgg(
        "import-checkpoint", "--from", "stket", str(source), "--output", str(out),
        "--option", "priors=/nonexistent/TrainPrior.json",
    )  # fmt: skip
    assert run.returncode == 2 and not out.exists()
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "TrainPrior.json" in lines[0] and "Traceback" not in run.stderr
    state = torch.load(source, weights_only=True)
    del state["state_dict"]["ensemble_decoder.position_embedding.weight"]
    torch.save(state, source)
    run = _m3sgg("import-checkpoint", "--from", "stket", str(source), "--output", str(out))
    assert run.returncode == 2 and not out.exists()
    assert "ensemble_decoder.position_embedding.weight" in run.stderr.strip()
    assert len(run.stderr.strip().splitlines()) == 1

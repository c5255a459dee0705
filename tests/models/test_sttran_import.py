"""import_original("sttran", ...): the original's key layout in, the same model out; the
``m3sgg import-checkpoint`` command and ``m3sgg evaluate`` on what it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic_videos import TINY

from m3sgg.data.collate import collate
from m3sgg.errors import DataError
from m3sgg.models import STTran, build_model, import_original, original_importers
from m3sgg.models.sttran import original_state_dict

REPO = Path(__file__).resolve().parents[2]
EXTRA = {"classifier_dim": 16, "pos_dim": 8}


def make_model(mode: str, **overrides: object) -> STTran:
    model = build_model("sttran", "action_genome", mode, **{**TINY, **EXTRA, **overrides})
    assert isinstance(model, STTran)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a swapped buffer would show
        for name, buffer in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("mode", ["predcls", "sgcls"])
def test_round_trip_gives_the_same_outputs(mode: str, videos, tmp_path: Path) -> None:
    model = make_model(mode)
    state = original_state_dict(model)
    assert "glocal_transformer.global_attention.layers.1.multihead2.in_proj_weight" in state
    assert ("object_classifier.decoder_lin.3.weight" in state) == (mode == "sgcls")
    path = tmp_path / "model_0.tar"
    torch.save({"state_dict": state}, path)  # the layout the original's train.py saves
    batch = collate(videos)
    with torch.no_grad():
        want = model(batch)
    for source in (state, {"state_dict": state}, path, str(path)):
        imported = import_original("sttran", source, mode=mode, heads=TINY["heads"])
        assert isinstance(imported, STTran) and imported.mode == mode
        imported.eval()
        with torch.no_grad():
            got = imported(batch)
        for key, value in want.items():
            assert torch.equal(got[key], value), key
    assert imported.config_options["proj_dim"] == TINY["proj_dim"]
    assert imported.config_options["dec_layers"] == TINY["dec_layers"]
    assert "sttran" in original_importers()


def test_predcls_drops_the_classifier_keys_it_does_not_use() -> None:
    """The original always builds its object classifier; predcls never runs it."""
    state = original_state_dict(make_model("sgcls"))
    model = import_original("sttran", state, mode="predcls", heads=TINY["heads"])
    assert model.object_classifier is None


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda s: s.update({"extra.weight": torch.zeros(1)}), "extra.weight", "unknown key"),
        (lambda s: s.pop("vr_fc.bias"), "vr_fc.bias", "missing key"),
        (
            lambda s: s.update({"a_rel_compress.bias": torch.zeros(4)}),
            "a_rel_compress.bias",
            r"shape \(4,\), this model expects \(3,\)",
        ),
    ],
)
def test_bad_keys_are_one_line_errors(change, field: str, message: str) -> None:
    state = original_state_dict(make_model("predcls"))
    change(state)
    with pytest.raises(DataError, match=message) as info:
        import_original("sttran", state, heads=TINY["heads"])
    assert info.value.field == field and "\n" not in str(info.value)


def test_unreadable_source(tmp_path: Path) -> None:
    bad = tmp_path / "x.tar"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read as a torch checkpoint"):
        import_original("sttran", bad)
    with pytest.raises(DataError, match="no such file"):
        import_original("sttran", tmp_path / "absent.tar")
    with pytest.raises(DataError, match="expected a state dict"):
        import_original("sttran", {"state_dict": [1, 2]})


def _m3sgg(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "m3sgg", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_import_checkpoint_then_evaluate(tmp_path: Path) -> None:
    from m3sgg.data.toy import make_toy_action_genome

    root = make_toy_action_genome(tmp_path / "ag", videos=10, seed=2, union_channels=4)
    model = make_model("predcls", object_dim=64, union_channels=4)
    source = tmp_path / "model_9.tar"
    torch.save({"state_dict": original_state_dict(model)}, source)
    out = tmp_path / "imported.pt"
    run = _m3sgg(
        "import-checkpoint", "--from", "sttran", str(source), "--output", str(out),
        "--option", "heads=4",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert out.is_file() and "m3sgg evaluate --checkpoint" in run.stdout
    run = _m3sgg("evaluate", "--checkpoint", str(out), "--data-path", str(root), "--json")
    assert run.returncode == 0, run.stderr
    metrics = json.loads(run.stdout.strip().splitlines()[-1])
    assert 0.0 <= metrics["with/R@20"] <= 1.0

    broken = original_state_dict(model)
    broken["glocal_transformer.position_embedding.weight"] = torch.zeros(3, 5)
    torch.save({"state_dict": broken}, source)
    run = _m3sgg("import-checkpoint", "--from", "sttran", str(source), "--output", str(out))
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "glocal_transformer.position_embedding.weight" in lines[0]
    assert "Traceback" not in run.stderr

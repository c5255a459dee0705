"""import_original("dsg_detr", ...) reads the widths from the weights and records its options;
``m3sgg import-checkpoint --from dsg_detr`` then ``m3sgg evaluate`` on what it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_dsg_detr import TINY, make_model

from m3sgg.engine.checkpoint import load_checkpoint
from m3sgg.errors import DataError
from m3sgg.models import import_original
from m3sgg.models.dsg_detr import DSGDETR
from m3sgg.models.dsg_detr.convert import POSITION_TABLES, key_map, original_widths
from m3sgg.models.dsg_detr.encoders import sinusoidal_table

REPO = Path(__file__).resolve().parents[2]
HEADS = {"heads": TINY["heads"], "object_heads": TINY["object_heads"]}


def original_layout(model: DSGDETR) -> dict[str, torch.Tensor]:
    """Our weights in the original's key layout (``train.py`` saves ``{"state_dict": ...}``),
    with its two sinusoidal tables (600 rows for sgdet objects, 400 otherwise)."""
    ours = model.state_dict()
    table = key_map(
        len(model.local_encoder.encoder.layers),
        len(model.global_encoder.encoder.layers),
        len(model.object_encoder.encoder.layers),
    )
    state = {src: ours[dst].clone() for src, dst in table.items() if dst is not None}
    object_width = model.object_encoder.positions.table.shape[1]
    relation_width = model.global_encoder.positions.table.shape[1]
    rows = 600 if model.mode == "sgdet" else 400
    state[POSITION_TABLES[0]] = sinusoidal_table(rows, object_width)[None]
    state[POSITION_TABLES[1]] = sinusoidal_table(400, relation_width)[None]
    return state


def randomised(model: DSGDETR) -> DSGDETR:
    """Non-trivial BatchNorm statistics, so a swapped buffer would show."""
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.uniform_(0.5, 1.5)
    return model.eval()


def test_the_widths_come_from_the_weights_and_the_options_are_recorded(tmp_path: Path) -> None:
    """TINY: object token 12 + 4 + 4 = 20, relation token 3 * 8 + 2 * 4 = 32; layers 1 / 2 / 2;
    only the heads (not in the weights) are given."""
    source = randomised(make_model("sgdet"))
    path = tmp_path / "model_9.tar"
    torch.save({"state_dict": original_layout(source)}, path)
    state = torch.load(path, weights_only=True)["state_dict"]
    widths = original_widths(state, str(path))
    assert widths == {
        "object_dim": 12,
        "union_channels": TINY["union_channels"],
        "proj_dim": 8,
        "embed_dim": 4,
        "conv_dim": 8,
        "num_classes": 37,
        "box_embed_dim": 4,
        "classifier_dim": 16,
        "enc_layers": 1,
        "dec_layers": 2,
        "object_layers": 2,
        "ff_dim": 32,
        "object_ff_dim": 16,
    }
    imported = import_original("dsg_detr", path, mode="sgdet", **HEADS)
    assert isinstance(imported, DSGDETR) and imported.mode == "sgdet" and not imported.training
    for key, value in source.state_dict().items():
        assert torch.equal(imported.state_dict()[key], value), key
    # what import-checkpoint writes: everything but the two widths the store gives
    del widths["object_dim"], widths["union_channels"]
    assert imported.config_options == {**widths, **HEADS}
    del state["subj_fc.weight"]
    torch.save({"state_dict": state}, path)
    with pytest.raises(DataError, match=r"model_9.tar.*subj_fc.weight"):
        import_original("dsg_detr", path, mode="sgdet", **HEADS)


def _m3sgg(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "m3sgg", *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.parametrize("mode", ["sgdet", pytest.param("sgcls", marks=pytest.mark.slow)])
def test_import_checkpoint_then_evaluate(tmp_path: Path, mode: str) -> None:
    """The real CLI on a checkpoint in the original's layout (toy widths, the toy store's 64-d
    features and 4-channel union maps), then ``m3sgg evaluate`` on the toy test split."""
    from m3sgg.data.toy import make_toy_action_genome

    root = make_toy_action_genome(tmp_path / "ag", videos=10, seed=2, union_channels=4)
    model = randomised(make_model(mode, object_dim=64, union_channels=4))
    source = tmp_path / "model_9.tar"
    torch.save({"state_dict": original_layout(model)}, source)
    out = tmp_path / "imported.pt"
    run = _m3sgg(
        "import-checkpoint", "--from", "dsg_detr", str(source), "--output", str(out),
        "--mode", mode, "--option", "heads=4", "--option", "object_heads=4",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "m3sgg evaluate --checkpoint" in run.stdout
    saved = load_checkpoint(out)
    assert saved["config"]["model"]["name"] == "dsg_detr"
    assert saved["config"]["data"]["mode"] == mode
    assert saved["config"]["model"]["options"]["dec_layers"] == 2
    for key, value in model.state_dict().items():
        assert torch.equal(saved["model"][key], value), key
    run = _m3sgg("evaluate", "--checkpoint", str(out), "--data-path", str(root), "--json")
    assert run.returncode == 0, run.stderr
    metrics = json.loads(run.stdout.strip().splitlines()[-1])
    assert 0.0 <= metrics["with/R@20"] <= 1.0


def test_a_broken_checkpoint_is_one_line_and_exit_2(tmp_path: Path) -> None:
    state = original_layout(make_model("predcls"))
    state["glocal_transformer.position_embedding.weight"] = torch.zeros(3, 5)
    source = tmp_path / "model_0.tar"
    torch.save({"state_dict": state}, source)
    run = _m3sgg(
        "import-checkpoint", "--from", "dsg_detr", str(source), "--output",
        str(tmp_path / "out.pt"), "--option", "heads=4", "--option", "object_heads=4",
    )  # fmt: skip
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "glocal_transformer.position_embedding.weight" in lines[0]
    assert "Traceback" not in run.stderr and not (tmp_path / "out.pt").exists()

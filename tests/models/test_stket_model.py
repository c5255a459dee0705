"""STKET on STTran's tokens: heads and keys, batching, losses, priors, import, a toy run, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from synthetic_videos import TINY

from m3sgg.data.collate import collate
from m3sgg.errors import ConfigError, DataError
from m3sgg.models import import_original
from m3sgg.models.stket.convert import key_map
from m3sgg.models.stket.model import GROUPS, HEADS, STKET
from m3sgg.models.stket.priors import count_priors, save_priors

REPO = Path(__file__).resolve().parents[2]
WIDTHS = {k: v for k, v in TINY.items() if k not in ("enc_layers", "dec_layers")}
SMALL = {**WIDTHS, "state_dims": (8, 8, 8), "enc_layers": 2, "dec_layers": 2}


def _model(**options) -> STKET:
    return STKET(**{"priors": "zeros", **SMALL, **options})


@pytest.fixture
def batch(videos):
    return collate(videos)


def test_every_head_is_predicted_and_the_plain_keys_are_the_rank_head(batch):
    model = _model().eval()
    with torch.no_grad():
        out = model(batch)
    for head in (*HEADS, "spatial_prior", "temporal_prior"):
        for group in GROUPS:
            value = out[f"{head}/{group}_distribution"]
            assert value.shape[0] == batch.num_pairs
    assert model.output_heads == ("spatial", "temporal", "ensemble")
    assert model.rank_head == "temporal"
    assert torch.equal(out["attention_distribution"], out["temporal/attention_distribution"])
    model.rank_head = "ensemble"
    with torch.no_grad():
        again = model(batch)
    assert torch.equal(again["contacting_distribution"], out["ensemble/contacting_distribution"])
    spatial = out["spatial/spatial_distribution"]
    assert ((spatial > 0) & (spatial < 1)).all()  # probabilities


def test_a_batch_equals_one_video_at_a_time(videos):
    model = _model().eval()
    with torch.no_grad():
        together = model(collate(videos))
        alone = [model(collate([v])) for v in videos]
    for head in HEADS:
        key = f"{head}/attention_distribution"
        torch.testing.assert_close(together[key], torch.cat([a[key] for a in alone]))


def test_losses_are_per_video_means_by_hand(videos):
    model = _model()
    batch = collate(videos)
    out = model(batch)
    losses = model.loss(out, batch)
    assert set(losses) == {
        f"{h}_{g}" for h in (*HEADS, "spatial_prior", "temporal_prior") for g in GROUPS
    }
    per_video = []
    for v in range(batch.num_videos):
        rows = slice(batch.pair_offsets[v], batch.pair_offsets[v + 1])
        keep = batch.relation_mask[rows]
        probs = out["ensemble/contacting_distribution"][rows][keep]
        per_video.append(F.binary_cross_entropy(probs, batch.contacting[rows][keep]))
    torch.testing.assert_close(losses["ensemble_contacting"], torch.stack(per_video).mean())
    sum(losses.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []  # every parameter trains (DistributedDataParallel needs that)


def test_prior_file_is_required_and_fills_both_tables(tmp_path: Path, videos):
    with pytest.raises(ConfigError, match="priors is required"):
        STKET(**SMALL)
    priors = count_priors(v.gt for v in videos)
    path = save_priors(priors, tmp_path / "priors.json")
    model = STKET(priors=str(path), **SMALL)
    initial = torch.as_tensor(priors.initial, dtype=torch.float32)
    assert initial.abs().sum() > 0
    assert torch.equal(model.spatial_encoder.initial_prior.data, initial)
    assert torch.equal(model.temporal_decoder.initial_prior.data, initial)
    specific = torch.as_tensor(priors.specific, dtype=torch.float32)
    assert torch.equal(model.temporal_decoder.specific_prior.data, specific)
    with pytest.raises(DataError, match="prior file not found"):
        STKET(priors=str(tmp_path / "none.json"), **SMALL)


def _original_layout(model: STKET) -> dict[str, torch.Tensor]:
    """Our weights under the original's keys (the inverse of the key map), plus the keys the
    original has and this model drops."""
    table = key_map(2, 2)
    ours = model.state_dict()
    out = {}
    for original, target in table.items():
        if target is not None:
            out[original] = ours[target].clone()
    out["a_rel_compress.weight"] = torch.zeros(3, 32)
    return out


def test_import_original_round_trip_and_bad_keys(tmp_path: Path, videos):
    torch.manual_seed(3)
    source = _model().eval()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.2)
    state = _original_layout(source)
    path = tmp_path / "stket.tar"
    torch.save({"state_dict": state}, path)
    imported = import_original("stket", path, priors="zeros", **SMALL).eval()
    batch = collate(videos)
    with torch.no_grad():
        a, b = source(batch), imported(batch)
    for head in HEADS:
        assert torch.equal(a[f"{head}/attention_distribution"], b[f"{head}/attention_distribution"])
    bad = dict(state)
    bad["spatial_encoder.encoder.layers.0.W_x.weight"] = torch.zeros(1)
    with pytest.raises(DataError, match=r"W_x\.weight: unknown key"):
        import_original("stket", bad, priors="zeros", **SMALL)
    short = dict(state)
    del short["temporal_decoder.specificPrior"]
    with pytest.raises(DataError, match=r"temporal_decoder\.specificPrior: missing key"):
        import_original("stket", short, priors="zeros", **SMALL)


def _m3sgg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "m3sgg", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=900,
    )


@pytest.fixture(scope="module")
def toy_priors(toy_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from m3sgg.config import load_config
    from m3sgg.data.registry import toy_dataset_path

    root = toy_dataset_path(load_config(None, ["data.toy_videos=16"]))
    out = tmp_path_factory.mktemp("priors") / "priors.json"
    built = _m3sgg("build-priors", "--data-path", str(root), "--output", str(out))
    assert built.returncode == 0, built.stderr
    return out


def _run_args(out: Path, name: str, priors: Path, epochs: int = 2) -> list[str]:
    return [
        "train", "--output", str(out), "--name", name, "--model", "stket",
        "--set", "data.toy_videos=16", "--set", f"model.options.priors={json.dumps(str(priors))}",
        "--set", "optim.lr=1e-3", "--set", "checkpoint.every_iters=4", "--epochs", str(epochs),
    ]  # fmt: skip


@pytest.mark.slow
def test_toy_run_reports_every_head_learns_and_resumes_bitwise(toy_priors: Path, tmp_path: Path):
    from m3sgg.engine.checkpoint import load_checkpoint
    from m3sgg.engine.handlers.metrics_file import read_metrics_file

    full = _m3sgg(*_run_args(tmp_path, "full", toy_priors))
    assert full.returncode == 0, full.stderr
    records = read_metrics_file(tmp_path / "full" / "metrics.jsonl")
    last = records[-1]["metrics"]
    for head in HEADS:
        for key in ("with/R@20", "with/mR@20", "no/R@50"):
            assert f"{head}/{key}" in last
    assert last["with/R@20"] == last["temporal/with/R@20"]

    stopped = _m3sgg(
        *_run_args(tmp_path, "resumed", toy_priors),
        "--plugin",
        "tests.engine.stop_plugin:stop_at",
        env={"M3SGG_STOP_AT": "8"},
    )
    assert stopped.returncode == 0, stopped.stderr
    resumed = _m3sgg(*_run_args(tmp_path, "resumed", toy_priors), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    expected = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    actual = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    for key, tensor in expected["model"].items():
        assert torch.equal(actual["model"][key], tensor), key
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == (
        tmp_path / "full" / "metrics.jsonl"
    ).read_text()


@pytest.mark.slow
def test_toy_training_lifts_every_head_above_untrained(small_config, toy_priors: Path):
    from m3sgg.engine.trainer import Trainer

    trainer = Trainer.from_config(
        small_config(
            "model.name=stket",
            f"model.options.priors={json.dumps(str(toy_priors))}",
            "optim.lr=1e-3",
            "train.epochs=3",
        )
    )
    before = trainer.evaluate_epoch()
    trainer.train_loop()
    after = trainer.engine.state.eval_metrics
    for head in HEADS:
        assert after[f"{head}/with/R@20"] > before[f"{head}/with/R@20"] + 0.05, head


def test_the_paper_recipe_loads_as_a_config():
    from m3sgg.config import load_config

    config = load_config(REPO / "examples" / "configs" / "stket_paper.yaml")
    assert config.model_name == "stket"
    assert (config.optim.lr, config.optim.weight_decay, config.train.epochs) == (2e-5, 0.01, 10)
    schedule = config.schedule
    assert (schedule.patience, schedule.threshold, schedule.threshold_mode) == (0, 1e-3, "abs")
    options = config.model.options
    assert (options["enc_layers"], options["dec_layers"], options["window"]) == (2, 2, 4)
    assert options["layer_passes"] == 1
    assert (options["contact_threshold"], options["relation_loss"]) == (0.8, "bce")
    assert options["rank_head"] == "temporal" and schedule.metric == "with/R@20"


def test_sgcls_classifies_reforms_pairs_and_ranks_history_by_score(videos):
    torch.manual_seed(4)
    model = _model(mode="sgcls", classifier_dim=16, pos_dim=8)
    batch = collate(videos)
    out = model(batch)  # training: the given pairs, the object loss joins
    losses = model.loss(out, batch)
    assert "object" in losses and len(losses) == 16
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    with torch.no_grad():
        pred = model(batch)
    assert pred["pred_labels"].shape == batch.labels.shape
    pairs = pred["pair_idx"]
    assert (pred["pred_labels"][pairs[:, 0]] == 1).all()  # re-formed: person, then object
    assert torch.equal(pred["im_idx"], batch.boxes[pairs[:, 1], 0].long())
    for head in HEADS:
        assert pred[f"{head}/attention_distribution"].shape[0] == pairs.shape[0]
    with pytest.raises(ConfigError, match="ground-truth contacts"):
        _model(mode="sgcls", contact_threshold=1.0)


def test_sgcls_import_keeps_the_object_classifier(videos):
    torch.manual_seed(5)
    source = _model(mode="sgcls", classifier_dim=16, pos_dim=8).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.2)
    table = key_map(2, 2, classifier=True)
    ours = source.state_dict()
    state = {k: ours[t].clone() for k, t in table.items() if t is not None}
    assert any(k.startswith("object_classifier.") for k in state)
    imported = import_original(
        "stket", state, mode="sgcls", priors="zeros", classifier_dim=16, pos_dim=8, **SMALL
    ).eval()
    batch = collate(videos)
    with torch.no_grad():
        a, b = source(batch), imported(batch)
    assert torch.equal(a["ensemble/contacting_distribution"], b["ensemble/contacting_distribution"])
    assert torch.equal(a["pred_scores"], b["pred_scores"])


def test_layer_passes_rerun_the_spatial_encoder_on_its_output(batch):
    """The original's N_layer = 2: spatial encoder on the tokens, then on its own output (same
    weights, no new parameters); the temporal decoder and the heads read the last pass."""
    from m3sgg.models.sttran.model import relation_tokens

    torch.manual_seed(2)
    model = _model(layer_passes=2).eval()
    single = _model(layer_passes=1)
    assert model.state_dict().keys() == single.state_dict().keys()
    single.load_state_dict(model.state_dict())
    single.eval()
    with torch.no_grad():
        out = model(batch)
        once = single(batch)
        tokens = relation_tokens(model.relation, batch, batch.labels, batch.pair_idx)
        label = batch.labels[batch.pair_idx[:, 1]]
        first, _ = model.spatial_encoder(tokens, batch.im_idx, label)
        second, _ = model.spatial_encoder(first, batch.im_idx, label)
        spatial = model._heads(second, "spa")
        temporal, _ = model.temporal_decoder(
            second,
            spatial["contacting_distribution"],
            batch.im_idx,
            label,
            None,
            batch.frame_video,
            None,
        )
    for group in GROUPS:
        key = f"{group}_distribution"
        torch.testing.assert_close(out[f"spatial/{key}"], spatial[key], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        out["temporal/attention_distribution"],
        model._heads(temporal, "tem")["attention_distribution"],
        rtol=0,
        atol=1e-6,
    )
    assert not torch.allclose(
        out["spatial/attention_distribution"], once["spatial/attention_distribution"], atol=1e-3
    )
    torch.testing.assert_close(  # the spatial prior does not depend on the pass
        out["spatial_prior/attention_distribution"], once["spatial_prior/attention_distribution"]
    )
    with pytest.raises(ConfigError, match="layer_passes must be a positive integer"):
        _model(layer_passes=0)

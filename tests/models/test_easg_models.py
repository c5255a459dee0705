"""EASG models (easg_fc, sttran_easg): outputs per mode, batching, gradients, learning, state."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from m3sgg.data.collate_easg import EASGBatch, collate_easg, split_easg_predictions
from m3sgg.data.easg import EASG, EASGSample
from m3sgg.data.structures import GraphGT
from m3sgg.data.toy_easg import make_toy_easg
from m3sgg.errors import ConfigError, DataError
from m3sgg.metrics.easg import EASGRecall
from m3sgg.models import ModelProtocol, available_models, build_model
from m3sgg.models.easg import EASGFC, STTranEASG, easg_model_inputs

MODES = ("edgecls", "sgcls", "easgcls")
MODELS = ("easg_fc", "sttran_easg")
#: Tiny widths (2 * 4 + 2 * 4 = 16 = d_model: the STTran token needs no projection).
TINY: dict[str, dict[str, Any]] = {
    "easg_fc": {"hidden_dim": 16, "proj_dim": 8},
    "sttran_easg": {
        "d_model": 16,
        "proj_dim": 4,
        "embed_dim": 4,
        "heads": 2,
        "ff_dim": 16,
        "layers": 2,
        "hidden_dim": 16,
    },
}
EXPECTED_KEYS = {
    "edgecls": {"rel_logits"},
    "sgcls": {"obj_logits", "rel_logits"},
    "easgcls": {"verb_logits", "obj_logits", "rel_logits"},
}
EXPECTED_LOSSES = {
    "edgecls": {"edge"},
    "sgcls": {"object", "edge"},
    "easgcls": {"verb", "object", "edge"},
}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_easg(tmp_path_factory.mktemp("easg") / "toy", clips=16, seed=0)


@pytest.fixture(scope="module")
def train_set(toy_root: Path) -> EASG:
    return EASG(toy_root, "train")


@pytest.fixture(scope="module")
def val_set(toy_root: Path) -> EASG:
    return EASG(toy_root, "val")


@pytest.fixture(scope="module")
def inputs(train_set: EASG) -> dict[str, int]:
    return easg_model_inputs(train_set)


def make(name: str, mode: str, inputs: dict[str, int], **kwargs: Any) -> torch.nn.Module:
    return build_model(name, "easg", mode, **{**inputs, **TINY[name], **kwargs})


def without_objects(sample: EASGSample) -> EASGSample:
    """The sample with its objects removed (a graph the metric skips; models must cope)."""
    num_rel = sample.gt.edges.shape[1]
    gt = GraphGT(
        f"{sample.gt.graph_id}:empty",
        sample.gt.verb,
        np.zeros(0, np.int64),
        np.zeros((0, num_rel), bool),
    )
    dim = sample.obj_features.shape[-1]
    return replace(
        sample,
        gt=gt,
        boxes=np.zeros((0, 3, 4), np.float32),
        obj_features=np.zeros((0, 3, dim), np.float32),
    )


def ungrounded_index(dataset: EASG) -> int:
    """A sample with an object grounded in no frame (the toy data has some)."""
    return next(i for i, s in enumerate(dataset) if not s.grounded.any(1).all())


# -- registry and construction -------------------------------------------------------------------


def test_registered_for_easg():
    assert set(MODELS) <= set(available_models("easg"))
    for mode in MODES:
        assert set(MODELS) <= set(available_models("easg", mode))
    assert not set(MODELS) & set(available_models("action_genome"))


def test_model_inputs_come_from_the_dataset(train_set, toy_root):
    verbs, objects, relations = train_set.vocab
    assert easg_model_inputs(train_set) == {
        "object_dim": train_set[0].obj_features.shape[-1],
        "verb_dim": train_set[0].verb_feature.shape[0],
        "num_verbs": len(verbs),
        "num_objects": len(objects),
        "num_relations": len(relations),
    }
    with pytest.raises(DataError, match="without features"):
        easg_model_inputs(EASG(toy_root, "train", features=False))


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("easg_fc", {"mode": "predcls"}, "mode must be one of"),
        ("easg_fc", {"dataset": "action_genome"}, "dataset must be one of"),
        ("easg_fc", {"object_dim": 0}, "object_dim must be a positive integer"),
        ("easg_fc", {"hidden_dim": 2.5}, "hidden_dim must be a positive integer"),
        ("easg_fc", {"dropout": 1.0}, "dropout must lie in"),
        ("easg_fc", {"loss_weights": {"attention": 1.0}}, "unknown loss_weights"),
        ("easg_fc", {"all_heads": 1}, "all_heads must be a bool"),
        ("sttran_easg", {"d_model": 15, "heads": 2}, "divisible by heads"),
        ("sttran_easg", {"layers": -1}, "layers must be a non-negative integer"),
    ],
)
def test_constructor_validation(inputs, name, kwargs, message):
    cls = {"easg_fc": EASGFC, "sttran_easg": STTranEASG}[name]
    arguments = {"mode": "edgecls", **inputs, **TINY[name], **kwargs}
    with pytest.raises(ConfigError, match=message):
        cls(**arguments)


# -- outputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MODELS)
def test_outputs_per_mode_feed_the_metric(name, mode, inputs, train_set):
    model = make(name, mode, inputs)
    assert isinstance(model, ModelProtocol)
    assert model.supported_datasets == frozenset({"easg"})
    assert model.supported_modes == frozenset(MODES)
    assert model.input_section == "gt"
    batch = collate_easg([train_set[i] for i in range(6)])
    out = model(batch)
    assert set(out) == EXPECTED_KEYS[mode] == set(model.prediction_keys)
    assert out["rel_logits"].shape == (batch.num_objects, inputs["num_relations"])
    if "obj_logits" in out:
        assert out["obj_logits"].shape == (batch.num_objects, inputs["num_objects"])
    if "verb_logits" in out:
        assert out["verb_logits"].shape == (batch.num_graphs, inputs["num_verbs"])
    assert all(torch.isfinite(v).all() for v in out.values())
    for constraint in ("with", "no"):
        metric = EASGRecall(mode, constraint)
        for pair in split_easg_predictions(batch, out):
            metric.update(pair)
        result = metric.compute()
        assert result["graphs"] == batch.num_graphs
        assert all(0.0 <= result[f"R@{k}"] <= 1.0 for k in (10, 20, 50))


@pytest.mark.parametrize("name", MODELS)
def test_all_heads_predicts_everything_in_every_mode(name, inputs, train_set):
    batch = collate_easg([train_set[i] for i in range(4)])
    for mode in MODES:
        model = make(name, mode, inputs, all_heads=True)
        out = model(batch)
        assert set(out) == EXPECTED_KEYS["easgcls"] == set(model.prediction_keys)
        assert set(model.loss(out, batch)) == EXPECTED_LOSSES["easgcls"]


@pytest.mark.parametrize("name", MODELS)
def test_feature_widths_are_checked(name, inputs, train_set):
    model = make(name, "edgecls", inputs, object_dim=inputs["object_dim"] + 1)
    with pytest.raises(ValueError, match="object_dim="):
        model(collate_easg([train_set[0]]))


# -- batching ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("name", "extra"),
    [("easg_fc", {}), ("sttran_easg", {}), ("sttran_easg", {"embed_dim": 0, "layers": 1})],
)
def test_several_graphs_give_the_same_numbers_as_one_at_a_time(
    name, extra, mode, inputs, train_set
):
    model = make(name, mode, inputs, dropout=0.1, **extra).eval()
    counts = [s.num_objects for s in train_set]
    picks = [counts.index(1), counts.index(max(counts)), ungrounded_index(train_set), 2, 5]
    samples = [train_set[i] for i in picks]
    samples.insert(2, without_objects(train_set[7]))  # a graph without objects among them
    batch = collate_easg(samples)
    with torch.no_grad():
        together = split_easg_predictions(batch, model(batch))
        alone = [
            split_easg_predictions(b, model(b))[0] for b in (collate_easg([s]) for s in samples)
        ]
    for (gt_a, a), (gt_b, b) in zip(together, alone, strict=True):
        assert gt_a is gt_b
        assert set(a) == set(b) == EXPECTED_KEYS[mode]
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)


# -- losses and gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name, mode, inputs, train_set):
    model = make(name, mode, inputs)
    batch = collate_easg(list(train_set))
    assert not batch.object_mask.all()  # so the stand-in for missing features is used
    losses = model.loss(model(batch), batch)
    assert set(losses) == EXPECTED_LOSSES[mode]
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name", MODELS)
def test_edge_loss_does_not_train_the_class_heads(name, inputs, train_set):
    """The class heads learn from their own cross-entropy only (soft embeddings are detached)."""
    model = make(name, "easgcls", inputs)
    batch = collate_easg([train_set[i] for i in range(8)])
    model.loss(model(batch), batch)["edge"].backward()
    for head in (model.verb_head, model.object_head):
        assert all(p.grad is None for p in head.parameters())
    assert all(p.grad is not None for p in model.edge_head.parameters())


def test_loss_values_and_weights(inputs, train_set):
    batch = collate_easg([train_set[i] for i in range(5)])
    model = make("easg_fc", "easgcls", inputs).eval()
    out = model(batch)
    losses = model.loss(out, batch)
    edge = torch.nn.functional.binary_cross_entropy_with_logits(
        out["rel_logits"], batch.edge_targets
    )
    obj = torch.nn.functional.cross_entropy(out["obj_logits"], batch.object_targets)
    verb = torch.nn.functional.cross_entropy(out["verb_logits"], batch.verb_targets)
    torch.testing.assert_close(losses["edge"], edge)
    torch.testing.assert_close(losses["object"], obj)
    torch.testing.assert_close(losses["verb"], verb)
    weighted = make("easg_fc", "easgcls", inputs, loss_weights={"verb": 0.5, "edge": 3.0})
    weighted.load_state_dict(model.state_dict())
    weighted.eval()
    again = weighted.loss(weighted(batch), batch)
    torch.testing.assert_close(again["verb"], 0.5 * verb)
    torch.testing.assert_close(again["edge"], 3.0 * edge)
    torch.testing.assert_close(again["object"], obj)


@pytest.mark.parametrize("name", MODELS)
def test_graphs_without_objects_give_finite_losses(name, inputs, train_set):
    model = make(name, "easgcls", inputs)
    batch = collate_easg([without_objects(train_set[0]), without_objects(train_set[1])])
    out = model(batch)
    assert out["rel_logits"].shape == (0, inputs["num_relations"])
    losses = model.loss(out, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["edge"] == 0 and losses["object"] == 0
    sum(losses.values()).backward()


# -- learning ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MODELS)
def test_a_few_steps_lower_the_loss(name, mode, inputs, train_set):
    torch.manual_seed(0)
    model = make(name, mode, inputs, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = collate_easg([train_set[i] for i in range(16)])
    history = []
    for _ in range(12):
        total = sum(model.loss(model(batch), batch).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(float(total))
    assert history[-1] < 0.7 * history[0], history


def _recall(model: torch.nn.Module, batch: EASGBatch, mode: str) -> float:
    model.eval()
    metric = EASGRecall(mode, "with")
    with torch.no_grad():
        for pair in split_easg_predictions(batch, model(batch)):
            metric.update(pair)
    return metric.compute()["R@10"]


@pytest.mark.parametrize("name", MODELS)
def test_training_raises_validation_recall(name, inputs, train_set, val_set):
    """Edge classification (with constraint) R@10 on the toy val split, before and after a short
    training on the train split; the label prior (train edge frequencies) is printed beside."""
    torch.manual_seed(0)
    model = make(name, "edgecls", inputs, dropout=0.0)
    val = collate_easg(list(val_set))
    before = _recall(model, val, "edgecls")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(20):
        model.train()
        perm = torch.randperm(len(train_set), generator=order).tolist()
        for start in range(0, len(perm), 16):
            batch = collate_easg([train_set[i] for i in perm[start : start + 16]])
            total = sum(model.loss(model(batch), batch).values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    after = _recall(model, val, "edgecls")
    frequency = collate_easg(list(train_set)).edge_targets.mean(0)
    prior = EASGRecall("edgecls", "with")
    prior_logits = {"rel_logits": frequency.log().expand(val.num_objects, -1)}
    for pair in split_easg_predictions(val, prior_logits):
        prior.update(pair)
    print(
        f"{name}: edgecls with R@10 on toy val ({val.num_graphs} graphs): untrained {before:.3f}, "
        f"trained {after:.3f} (label prior {prior.compute()['R@10']:.3f})"
    )
    assert before < 0.2
    assert after > 0.25
    assert after > before + 0.15


# -- state ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip(name, mode, inputs, train_set, tmp_path):
    model = make(name, mode, inputs).eval()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(123)  # a differently initialised copy
    copy = make(name, mode, inputs).eval()
    copy.load_state_dict(torch.load(path, weights_only=True))
    batch = collate_easg([train_set[i] for i in range(5)])
    with torch.no_grad():
        expected, got = model(batch), copy(batch)
    assert set(expected) == set(got)
    for key in expected:
        assert torch.equal(expected[key], got[key])

"""STTran: outputs per mode, batching equivalence, masks, gradients, learning, losses, init."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic_videos import TINY, make_video

from m3sgg.data.action_genome import VideoSample
from m3sgg.data.collate import Batch, collate, split_predictions
from m3sgg.errors import ConfigError, DataError
from m3sgg.models import AG_PREDICTION_KEYS, STTran, build_model
from m3sgg.models.sttran import _index_targets, class_word_vectors, spatial_masks
from m3sgg.vocab import AG_OBJECT_CLASSES

MODES = ("predcls", "sgcls", "sgdet")


def make_model(mode: str, **overrides: object) -> STTran:
    model = build_model("sttran", "action_genome", mode, **{**TINY, **overrides})
    assert isinstance(model, STTran)
    return model


def batch_for(model: STTran, samples: list[VideoSample]) -> Batch:
    return collate(samples, section=model.input_section)  # type: ignore[arg-type]


# -- outputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_prediction_keys_and_shapes(mode: str, videos: list[VideoSample]) -> None:
    model = make_model(mode).eval()
    batch = batch_for(model, videos)
    with torch.no_grad():
        out = model(batch)
    n, p = batch.num_boxes, batch.num_pairs
    assert set(AG_PREDICTION_KEYS) <= set(out)
    assert out["boxes"].shape == (n, 5) and out["labels"].shape == (n,)
    assert out["scores"].shape == (n,)
    assert out["pred_labels"].shape == (n,) and out["pred_labels"].dtype == torch.int64
    assert out["pred_scores"].shape == (n,) and out["pred_scores"].dtype == torch.float32
    assert out["im_idx"].shape == (p,) and out["pair_idx"].shape == (p, 2)
    assert out["attention_distribution"].shape == (p, 3)
    assert out["spatial_distribution"].shape == (p, 6)
    assert out["contacting_distribution"].shape == (p, 17)
    for key in ("spatial_distribution", "contacting_distribution"):
        assert ((out[key] > 0) & (out[key] < 1)).all()  # probabilities
    assert torch.allclose(out["spatial_distribution"], torch.sigmoid(out["spatial_logits"]))
    assert all(torch.isfinite(v.float()).all() for v in out.values())
    subjects = batch.pair_idx[:, 0]
    objects = batch.pair_idx[:, 1]
    if mode == "predcls":
        assert "object_logits" not in out and model.object_classifier is None
        assert torch.equal(out["pred_labels"], batch.labels)
        assert torch.equal(out["pred_scores"], batch.scores)
    else:
        assert out["object_logits"].shape == (n, 35)
        assert torch.equal(out["pred_labels"][subjects], batch.labels[subjects])
        assert torch.equal(out["pred_scores"][subjects], batch.scores[subjects])
        assert (out["pred_labels"][objects] >= 2).all()
        probs = torch.softmax(out["object_logits"], dim=1)
        assert torch.allclose(out["pred_scores"][objects], probs.max(dim=1).values[objects])
        assert torch.equal(out["pred_labels"][objects], probs.argmax(dim=1)[objects] + 2)


def test_predictions_split_for_metrics(videos: list[VideoSample]) -> None:
    model = make_model("sgcls").eval()
    batch = batch_for(model, videos)
    with torch.no_grad():
        split = split_predictions(batch, model(batch))
    for (gt, pred), sample in zip(split, videos, strict=True):
        assert gt is sample.gt
        assert set(pred) == set(AG_PREDICTION_KEYS)
        np.testing.assert_array_equal(pred["pair_idx"].numpy(), sample.features.pair_idx)
        np.testing.assert_array_equal(pred["boxes"].numpy(), sample.features.boxes)


def test_wrong_section_refused(videos: list[VideoSample]) -> None:
    with pytest.raises(ConfigError, match="section='det'"):
        make_model("sgdet")(collate(videos, section="gt"))


# -- batching and masks ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_videos_together_equal_videos_alone(mode: str, videos: list[VideoSample]) -> None:
    model = make_model(mode).eval()
    with torch.no_grad():
        batch = batch_for(model, videos)
        together = split_predictions(batch, model(batch))
        for sample, (_, joint) in zip(videos, together, strict=True):
            alone = batch_for(model, [sample])
            ((_, single),) = split_predictions(alone, model(alone))
            assert set(single) == set(joint)
            for key, value in single.items():
                if value.is_floating_point():
                    torch.testing.assert_close(joint[key], value, rtol=1e-5, atol=1e-5)
                else:
                    assert torch.equal(joint[key], value), key


def test_temporal_window_limits_context() -> None:
    """One temporal layer, window 2: frame 0 sees frame 1 but never frame 2 or 3."""
    model = make_model("predcls", dec_layers=1, window=2).eval()
    sample = make_video(0, frames=4, seed=5, det=False)
    batch = collate([sample])

    def frame0_outputs(union: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = model(dataclasses.replace(batch, union_features=union))
        return out["attention_distribution"][batch.im_idx == 0]

    base = frame0_outputs(batch.union_features)
    for frame, should_change in ((1, True), (2, False), (3, False)):
        union = batch.union_features.clone()
        union[batch.im_idx == frame] += 5.0
        changed = not torch.allclose(frame0_outputs(union), base, atol=1e-6)
        assert changed == should_change, frame
    # With two temporal layers the context reaches two frames.
    model2 = make_model("predcls", dec_layers=2, window=2).eval()
    with torch.no_grad():
        base2 = model2(batch)["attention_distribution"][batch.im_idx == 0]
        union = batch.union_features.clone()
        union[batch.im_idx == 2] += 5.0
        moved = model2(dataclasses.replace(batch, union_features=union))
    assert not torch.allclose(moved["attention_distribution"][batch.im_idx == 0], base2)


def test_spatial_encoder_stays_within_frame() -> None:
    model = make_model("predcls", dec_layers=0).eval()
    sample = make_video(0, frames=3, max_objects=3, seed=2, det=False)
    batch = collate([sample])
    with torch.no_grad():
        base = model(batch)["attention_distribution"]
        union = batch.union_features.clone()
        union[batch.im_idx == 1] -= 3.0
        out = model(dataclasses.replace(batch, union_features=union))["attention_distribution"]
    same = batch.im_idx != 1
    torch.testing.assert_close(out[same], base[same])
    assert not torch.allclose(out[~same], base[~same])


def test_video_without_pairs_in_batch(videos: list[VideoSample]) -> None:
    empty_det = dataclasses.replace(
        videos[0].det,
        pair_idx=np.zeros((0, 2), np.int64),
        im_idx=np.zeros(0, np.int64),
        union_features=np.zeros((0, videos[0].det.union_features.shape[1]), np.float32),
    )
    samples = [dataclasses.replace(videos[0], det=empty_det), videos[1]]
    model = make_model("sgdet").eval()
    batch = batch_for(model, samples)
    with torch.no_grad():
        out = model(batch)
        ((_, single),) = split_predictions(
            batch_for(model, [videos[1]]), model(batch_for(model, [videos[1]]))
        )
    assert out["attention_distribution"].shape == (videos[1].det.num_pairs, 3)
    torch.testing.assert_close(out["attention_distribution"], single["attention_distribution"])
    losses = model.loss(model.train()(batch), batch)
    assert all(torch.isfinite(v) for v in losses.values())


def test_spatial_masks_hand_case() -> None:
    subject = torch.tensor([[0.0, 0.0, 9.0, 27.0], [10.0, 10.0, 20.0, 20.0], [5.0, 5.0, 5.0, 5.0]])
    obj = torch.tensor([[9.0, 0.0, 27.0, 27.0], [0.0, 0.0, 54.0, 27.0], [0.0, 0.0, 27.0, 27.0]])
    masks = spatial_masks(subject, obj)
    assert masks.shape == (3, 2, 27, 27) and masks.dtype == torch.float32
    expected = torch.zeros(3, 2, 27, 27)
    expected[0, 0, :, :9] = 1  # subject: x 0..9 of a 27-wide union → columns 0..8
    expected[0, 1, :, 9:] = 1
    expected[1, 0, 10:20, 5:10] = 1  # union 54 wide: x 10..20 → columns 5..9; y 10..20 → rows
    expected[1, 1] = 1
    expected[2, 0, 5, 5] = 1  # a point box still covers its cell
    expected[2, 1] = 1
    assert torch.equal(masks, expected)


# -- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_every_parameter(mode: str, videos: list[VideoSample]) -> None:
    """Every parameter trains: in predcls the object classifier is not built at all."""
    model = make_model(mode, dropout=0.0).train()
    batch = batch_for(model, videos)
    losses = model.loss(model(batch), batch)
    expected = {"attention", "spatial", "contacting"} | ({"object"} if mode != "predcls" else set())
    assert set(losses) == expected
    assert all(v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    silent = [
        name
        for name, param in model.named_parameters()
        if param.requires_grad and (param.grad is None or not param.grad.abs().sum() > 0)
    ]
    assert silent == []
    names = {name for name, _ in model.named_parameters()}
    assert any(n.startswith("object_classifier") for n in names) == (mode != "predcls")
    assert "frame_position" in names


@pytest.mark.parametrize(("mode", "relation_loss"), [("predcls", "margin"), ("sgcls", "bce")])
def test_optimisation_lowers_the_loss(mode: str, relation_loss: str) -> None:
    samples = [make_video(i, frames=3, seed=40 + i) for i in range(4)]
    model = make_model(mode, dropout=0.0, relation_loss=relation_loss).train()
    batch = batch_for(model, samples)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(40):
        optimiser.zero_grad()
        loss = sum(model.loss(model(batch), batch).values())
        loss.backward()
        optimiser.step()
        history.append(loss.item())
    assert history[-1] < 0.6 * history[0], history[::10]


def test_state_dict_round_trip(videos: list[VideoSample]) -> None:
    model = make_model("sgcls").eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    torch.manual_seed(99)
    other = make_model("sgcls").eval()
    batch = batch_for(model, videos)
    with torch.no_grad():
        assert not torch.equal(
            other(batch)["attention_distribution"], model(batch)["attention_distribution"]
        )
        buffer.seek(0)
        other.load_state_dict(torch.load(buffer, weights_only=True))
        first, second = model(batch), other(batch)
    for key in first:
        assert torch.equal(first[key], second[key]), key


# -- losses ------------------------------------------------------------------------------------


def test_margin_targets_and_value() -> None:
    hot = torch.tensor([[0.0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    targets = _index_targets(hot)
    assert targets.tolist() == [[1, 3, -1, -1], [-1, -1, -1, -1], [0, 1, 2, 3]]
    scores = torch.tensor([[0.2, 0.9, 0.4, 0.6]])
    # Σ over (positive j, negative i) of max(0, 1 - (x_j - x_i)) / C
    manual = sum(max(0.0, 1 - (scores[0, j] - scores[0, i])) for j in (1, 3) for i in (0, 2)) / 4
    value = F.multilabel_margin_loss(scores, targets[:1])
    torch.testing.assert_close(value, torch.tensor(float(manual)))


def test_loss_matches_definition(videos: list[VideoSample]) -> None:
    model = make_model("predcls").eval()
    batch = batch_for(model, videos)
    out = model(batch)
    losses = model.loss(out, batch)
    torch.testing.assert_close(
        losses["attention"], F.cross_entropy(out["attention_distribution"], batch.attention)
    )
    torch.testing.assert_close(
        losses["spatial"],
        F.multilabel_margin_loss(out["spatial_distribution"], _index_targets(batch.spatial)),
    )
    bce = make_model("predcls", relation_loss="bce").eval()
    bce.load_state_dict(model.state_dict())
    losses = bce.loss(out, batch)
    torch.testing.assert_close(
        losses["contacting"],
        F.binary_cross_entropy(out["contacting_distribution"], batch.contacting),
    )


def test_loss_weights(videos: list[VideoSample]) -> None:
    model = make_model("sgcls").eval()
    batch = batch_for(model, videos)
    out = model(batch)
    plain = model.loss(out, batch)
    weighted = make_model("sgcls", loss_weights={"object": 0.5, "spatial": 2.0}).loss(out, batch)
    torch.testing.assert_close(weighted["object"], 0.5 * plain["object"])
    torch.testing.assert_close(weighted["spatial"], 2.0 * plain["spatial"])
    torch.testing.assert_close(weighted["attention"], plain["attention"])


def test_sgdet_unmatched_pairs_are_masked(videos: list[VideoSample]) -> None:
    model = make_model("sgdet").train()
    batch = batch_for(model, videos)
    assert (~batch.relation_mask).any() and batch.relation_mask.any()
    out = model(batch)
    keys = ("attention_distribution", "spatial_distribution", "contacting_distribution")
    for key in keys:
        out[key].retain_grad()
    losses = model.loss(out, batch)
    (losses["attention"] + losses["spatial"] + losses["contacting"]).backward(retain_graph=True)
    for key in keys:
        grad = out[key].grad
        assert grad is not None
        assert (grad[~batch.relation_mask] == 0).all(), key
        assert grad[batch.relation_mask].abs().sum() > 0, key
    # The object loss covers matched non-subject boxes only (spurious detections are -1).
    out["object_logits"].retain_grad()
    out2 = model(batch)
    out2["object_logits"].retain_grad()
    model.loss(out2, batch)["object"].backward()
    row_has_grad = out2["object_logits"].grad.abs().sum(dim=1) > 0
    subjects = torch.zeros(batch.num_boxes, dtype=torch.bool)
    subjects[batch.pair_idx[:, 0]] = True
    assert torch.equal(row_has_grad, (batch.object_targets >= 2) & ~subjects)


# -- configuration and word vectors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 30, "heads": 4}, "divisible by heads"),
        ({"relation_loss": "focal"}, "relation_loss"),
        ({"loss_weights": {"verb": 1.0}}, "unknown loss_weights"),
        ({"window": 0}, "window"),
        ({"dropout": 1.0}, "dropout"),
        ({"class_names": ("a", "b", "c")}, "class_names"),
    ],
)
def test_invalid_configuration(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_model("predcls", **overrides)


def test_token_projection_only_when_needed() -> None:
    assert isinstance(make_model("predcls").token_proj, torch.nn.Identity)  # 3*8 + 2*4 = 32
    assert isinstance(make_model("predcls", proj_dim=6).token_proj, torch.nn.Linear)


def test_word_vector_initialisation(tmp_path: Path) -> None:
    path = tmp_path / "vectors.txt"
    path.write_text(
        "3 4\n"  # word2vec-style header
        "person 1 2 3 4\n"
        "Table 0 0 1 1\n"
        "cup 2 0 0 0\n"
        "glass 0 2 0 0\n"
        "unrelated 9 9 9 9\n"
    )
    with pytest.warns(UserWarning, match=r"33 of 36 classes have no vector"):
        model = make_model("predcls", word_vectors=path)
    person = AG_OBJECT_CLASSES.index("person")
    table = AG_OBJECT_CLASSES.index("table")
    cup = AG_OBJECT_CLASSES.index("cup/glass/bottle")
    for embedding in (model.subject_embed, model.object_embed):
        weight = embedding.weight.detach()
        assert weight[person].tolist() == [1, 2, 3, 4]
        assert weight[table].tolist() == [0, 0, 1, 1]
        assert weight[cup].tolist() == [1, 1, 0, 0]  # mean of cup and glass
    fresh = make_model("predcls")
    bag = AG_OBJECT_CLASSES.index("bag")
    assert not torch.equal(model.subject_embed.weight[bag], torch.zeros(4))
    assert fresh.subject_embed.weight.shape == model.subject_embed.weight.shape

    vectors, missing = class_word_vectors(path, ("__background__", "person", "sofa/couch"), 4)
    assert missing == ["sofa/couch"] and vectors[0].tolist() == [0, 0, 0, 0]


def test_word_vector_errors(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("person 1 2 3\n")
    with pytest.raises(DataError, match=r"3 values, expected 4"):
        make_model("predcls", word_vectors=short)
    with pytest.raises(DataError, match="cannot read word vectors"):
        make_model("predcls", word_vectors=tmp_path / "absent.txt")


def test_paper_defaults() -> None:
    """Defaults are the paper's: 3 x 512 + 2 x 200 = 1936 = d_model, 1 + 3 layers, 8 heads."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = STTran(object_dim=2048, union_dim=1024)
    assert isinstance(model.token_proj, torch.nn.Identity)
    assert (len(model.spatial_layers), len(model.temporal_layers)) == (1, 3)
    layer = model.temporal_layers[0]
    assert layer.heads == 8 and layer.ff1.out_features == 2048
    assert layer.qkv.in_features == 1936 and model.window == 2
    assert model.frame_position is not None and model.frame_position.shape == (3, 8, 3)
    assert model.union_proj.in_features == 1024 and model.subject_proj.in_features == 2048
    assert model.relation_loss == "margin" and model.mode == "predcls"


def test_eval_mode_equals_train_mode_without_dropout(videos: list[VideoSample]) -> None:
    """Regression: nn.TransformerEncoderLayer's inference fast path gave NaN with per-head masks;
    after some training, eval-mode outputs must be finite and equal train mode at dropout 0."""
    torch.manual_seed(0)
    model = make_model("predcls", dropout=0.0)
    batch = batch_for(model, videos)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(5):
        sum(model.loss(model(batch), batch).values()).backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        trained = model(batch)
        model.eval()
        evaluated = model(batch)
    for key in ("attention_distribution", "spatial_distribution", "contacting_distribution"):
        assert torch.isfinite(evaluated[key]).all(), key
        torch.testing.assert_close(evaluated[key], trained[key], rtol=1e-5, atol=1e-6)


def test_autocast_keeps_scores_float32(videos: list[VideoSample]) -> None:
    model = make_model("sgcls")
    batch = batch_for(model, videos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
        losses = model.loss(out, batch)
    for key in ("pred_scores", "object_logits", "attention_distribution", "spatial_distribution"):
        assert out[key].dtype == torch.float32, key
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())

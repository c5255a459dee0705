"""DSG-DETR: object sequences feed the encoders, batching equivalence, losses, import, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from synthetic_videos import OBJECT_DIM, UNION_CHANNELS, make_video

from m3sgg.data.action_genome import VideoSample
from m3sgg.data.collate import Batch, collate, split_predictions
from m3sgg.errors import ConfigError, DataError
from m3sgg.models import AG_PREDICTION_KEYS, build_model, import_original
from m3sgg.models.dsg_detr import DSGDETR
from m3sgg.models.dsg_detr.convert import POSITION_TABLES, key_map, load_original
from m3sgg.models.dsg_detr.encoders import sinusoidal_table
from m3sgg.models.matching import HungarianMatcher

MODES = ("predcls", "sgcls")
#: object token 12 + 4 + 4 = 20 (4 heads), relation token 3 * 8 + 2 * 4 = 32 (4 heads)
TINY = {
    "object_dim": OBJECT_DIM,
    "union_channels": UNION_CHANNELS,
    "proj_dim": 8,
    "embed_dim": 4,
    "conv_dim": 8,
    "heads": 4,
    "ff_dim": 32,
    "enc_layers": 1,
    "dec_layers": 2,
    "object_heads": 4,
    "object_ff_dim": 16,
    "object_layers": 2,
    "box_embed_dim": 4,
    "classifier_dim": 16,
}


def sized(sample: VideoSample, size: tuple[float, float] | None = (360.0, 480.0)) -> VideoSample:
    return dataclasses.replace(sample, gt=dataclasses.replace(sample.gt, image_size=size))


@pytest.fixture
def clips() -> list[VideoSample]:
    return [
        sized(make_video(0, frames=3, seed=10, classes=(2, 3))),
        sized(make_video(1, frames=5, max_objects=3, seed=11, classes=(2, 3, 4))),
        sized(make_video(2, frames=1, seed=12)),
        sized(make_video(3, frames=4, seed=13, classes=(5, 6))),
    ]


def make_model(mode: str, **overrides: object) -> DSGDETR:
    model = build_model("dsg_detr", "action_genome", mode, **{**TINY, **overrides})
    assert isinstance(model, DSGDETR)
    return model


def batch_for(model: DSGDETR, samples: list[VideoSample]) -> Batch:
    return collate(samples, section=model.input_section)  # type: ignore[arg-type]


def no_randomness(model: DSGDETR) -> DSGDETR:
    """Training branches, deterministic: dropout 0, BatchNorm on running statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0
        if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            m.eval()
    return model


@pytest.mark.parametrize("mode", MODES)
def test_prediction_keys_and_shapes(mode: str, clips: list[VideoSample]) -> None:
    model = make_model(mode).eval()
    batch = batch_for(model, clips)
    with torch.no_grad():
        out = model(batch)
    assert set(AG_PREDICTION_KEYS) <= set(out)
    p = out["pair_idx"].shape[0]
    assert out["attention_distribution"].shape == (p, 3)
    assert out["spatial_distribution"].shape == (p, 6)
    assert out["contacting_distribution"].shape == (p, 17)
    for key in ("spatial_distribution", "contacting_distribution"):
        assert ((out[key] > 0) & (out[key] < 1)).all()
    if mode == "predcls":
        assert torch.equal(out["pred_labels"], batch.labels)


@pytest.mark.parametrize("mode", [*MODES, "sgcls-train"])
def test_videos_together_equal_videos_alone(mode: str, clips: list[VideoSample]) -> None:
    model = make_model(mode.split("-")[0])
    model = no_randomness(model) if mode.endswith("-train") else model.eval()
    with torch.no_grad():
        batch = batch_for(model, clips)
        together = split_predictions(batch, model(batch))
        for sample, (_, joint) in zip(clips, together, strict=True):
            alone = batch_for(model, [sample])
            ((_, single),) = split_predictions(alone, model(alone))
            for key, value in single.items():
                if value.is_floating_point():
                    torch.testing.assert_close(joint[key], value, rtol=1e-5, atol=1e-5)
                else:
                    assert torch.equal(joint[key], value), key


def test_predcls_objects_see_only_their_label_across_frames() -> None:
    """Perturbing one box changes the encoded tokens of its label's boxes in other frames and
    leaves every other box's token exactly as it was."""
    model = make_model("predcls").eval()
    sample = sized(make_video(0, frames=4, max_objects=2, seed=3, classes=(2, 3)))
    batch = batch_for(model, [sample])
    onehot = F.one_hot(batch.labels - 1, 36)
    target = int(torch.nonzero(batch.labels == batch.labels[1])[0])  # first box of a class
    same = batch.labels == batch.labels[target]
    assert same.sum() > 1 and (~same).any()
    feats = batch.box_features.clone()
    feats[target] += 1.0
    with torch.no_grad():
        before = model.encode_objects(batch, onehot)
        after = model.encode_objects(dataclasses.replace(batch, box_features=feats), onehot)
    changed = (before - after).abs().amax(dim=1) > 1e-6
    assert torch.equal(changed, same)


def test_sgcls_training_relates_predicted_labels(clips: list[VideoSample]) -> None:
    model = no_randomness(make_model("sgcls"))
    batch = batch_for(model, clips)
    with torch.no_grad():
        out = model(batch)
    logits = out["object_logits"]
    assert logits.shape == (batch.num_boxes, 37)
    assert torch.equal(out["pred_labels"], logits[:, 1:].argmax(1) + 1)


def test_sgcls_tracks_with_the_given_matcher(clips: list[VideoSample]) -> None:
    calls = []

    class Recording(HungarianMatcher):
        def forward(self, outputs, targets):  # type: ignore[override]
            calls.append(len(outputs["boxes"]))
            return super().forward(outputs, targets)

    model = make_model("sgcls", matcher=Recording()).eval()
    with torch.no_grad():
        model(batch_for(model, clips))
    # one call per frame after each video's first: 2 + 4 + 0 + 3
    assert len(calls) == 9


def test_sgcls_needs_class_distributions_and_image_sizes(clips: list[VideoSample]) -> None:
    model = make_model("sgcls").eval()
    batch = batch_for(model, clips)
    with pytest.raises(DataError, match="class_dists"):
        model(dataclasses.replace(batch, class_dists=None))
    unsized = batch_for(model, [sized(clips[0], None)])
    with pytest.raises(DataError, match=r"v000.mp4: image_size: .*bbox_size"):
        model(unsized)


def test_losses_are_means_of_per_video_means(clips: list[VideoSample]) -> None:
    model = no_randomness(make_model("sgcls"))
    batch = batch_for(model, clips)
    losses = model.loss(model(batch), batch)
    assert list(losses) == ["attention", "spatial", "contacting", "object"]
    per_video = []
    for sample in clips:
        alone = batch_for(model, [sample])
        out = model(alone)
        per_video.append(F.cross_entropy(out["object_logits"], alone.labels))
    torch.testing.assert_close(losses["object"], torch.stack(per_video).mean())
    weighted = make_model("sgcls", loss_weights={"object": 0.5})
    weighted.load_state_dict(model.state_dict())
    no_randomness(weighted)
    torch.testing.assert_close(
        weighted.loss(weighted(batch), batch)["object"], 0.5 * losses["object"]
    )


def test_bad_options_refused() -> None:
    with pytest.raises(ConfigError, match="unknown loss_weights"):
        make_model("predcls", loss_weights={"objects": 1.0})
    with pytest.raises(ConfigError, match="object token width 21"):
        make_model("predcls", box_embed_dim=5)
    with pytest.raises(ConfigError, match="mode"):
        DSGDETR(mode="edgecls")


def _original_layout(model: DSGDETR) -> dict[str, torch.Tensor]:
    """Our weights written in the original's key layout, with its two position tables."""
    ours = model.state_dict()
    table = key_map(1, 2, 2)
    state = {src: ours[dst].clone() for src, dst in table.items() if dst is not None}
    obj_width = model.object_encoder.positions.table.shape[1]
    state[POSITION_TABLES[0]] = sinusoidal_table(400, obj_width)[None]
    state[POSITION_TABLES[1]] = sinusoidal_table(400, 32)[None]
    return state


def test_import_original_round_trip_and_bad_keys(tmp_path) -> None:
    source = make_model("sgcls")
    state = _original_layout(source)
    path = tmp_path / "dsg_detr.tar"
    torch.save({"state_dict": state}, path)
    target = import_original("dsg_detr", path, mode="sgcls", **TINY)
    assert isinstance(target, DSGDETR) and not target.training
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    with pytest.raises(DataError, match=r"bogus.weight: unknown key"):
        load_original({**state, "bogus.weight": torch.zeros(1)}, target)
    missing = dict(state)
    del missing["local_transformer.layers.0.linear1.weight"]
    with pytest.raises(DataError, match=r"local_transformer.layers.0.linear1.weight: missing"):
        load_original(missing, target)
    shifted = {**state, POSITION_TABLES[1]: state[POSITION_TABLES[1]] + 1}
    with pytest.raises(DataError, match=r"positional_encoder.pe: not the sinusoidal"):
        load_original(shifted, target)


@pytest.mark.parametrize(
    ("name", "mode", "small_boxes"),
    [("dsg_detr_paper", "predcls", False), ("dsg_detr_sgdet", "sgdet", True)],
)
def test_the_paper_recipe_configs(name: str, mode: str, small_boxes: bool) -> None:
    """examples/configs/dsg_detr_paper.yaml and dsg_detr_sgdet.yaml are the original train.py's
    recipe (sgdet: the README's ``-mode sgdet``, with the small-box filter outside predcls)."""
    from pathlib import Path

    from m3sgg.config import load_config

    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "examples" / "configs" / f"{name}.yaml")
    assert config.model_name == "dsg_detr" and config.data.videos_per_batch == 1
    assert (config.data.mode, config.data.filter_small_boxes) == (mode, small_boxes)
    optim = config.optim
    assert (optim.optimizer, optim.lr, optim.weight_decay, optim.grad_clip) == (
        "adamw",
        1e-5,
        0.01,
        5.0,
    )
    schedule = config.schedule
    assert (schedule.name, schedule.metric, schedule.patience, schedule.factor) == (
        "plateau",
        "with/R@20",
        1,
        0.5,
    )
    assert (schedule.threshold, schedule.threshold_mode, schedule.min_lr) == (1e-4, "abs", 1e-7)
    assert config.train.epochs == 10

"""STTran (exact port): window rule, masks, zero context, batching, losses, gradients, init.

The comparison against the original code itself runs outside the project (docs/models.md says
how and gives the figures); these tests pin each behaviour with values derived by hand.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic_videos import TINY, make_video
from torch import nn

from m3sgg.data.action_genome import VideoSample
from m3sgg.data.collate import Batch, collate, split_predictions
from m3sgg.errors import ConfigError, DataError
from m3sgg.models import AG_PREDICTION_KEYS, STTran, build_model
from m3sgg.models.sttran import (
    SpatialEncoder,
    TemporalDecoder,
    class_word_vectors,
    per_video_mean,
    union_masks,
)
from m3sgg.models.sttran.model import _index_targets
from m3sgg.vocab import AG_OBJECT_CLASSES

RELATION_KEYS = ("attention_distribution", "spatial_distribution", "contacting_distribution")


def make_model(mode: str = "predcls", **overrides: object) -> STTran:
    model = build_model("sttran", "action_genome", mode, **{**TINY, **overrides})
    assert isinstance(model, STTran)
    return model


def batch_for(model: STTran, samples: list[VideoSample]) -> Batch:
    return collate(samples, section=model.input_section)  # type: ignore[arg-type]


# -- the temporal window rule ------------------------------------------------------------------


class _WindowSpy(nn.Module):
    """Stands in for a decoder layer: every slot becomes the sum of its window's kept rows plus
    its own position embedding, so the output shows which window a pair was read from."""

    def forward(self, x: torch.Tensor, keep: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        total = (x * keep[..., None]).sum(dim=1, keepdim=True)
        return total.expand_as(x) + position


def test_window_rule_on_a_three_frame_video() -> None:
    """Frames 0, 1, 2 hold pairs [a], [b, c], [d]. Windows {0, 1} and {1, 2}: frame 0 and frame
    1 read window 0, frame 2 window 1; slot 0 of the embedding marks the earlier frame."""
    decoder = TemporalDecoder(dim=2, heads=1, ff_dim=4, dropout=0.0, layers=0)
    decoder.layers = nn.ModuleList([_WindowSpy()])
    with torch.no_grad():
        decoder.position_embedding.weight.copy_(torch.tensor([[100.0, 0.0], [0.0, 1000.0]]))
    a, b, c, d = [1.0, 0.0], [2.0, 0.0], [4.0, 0.0], [8.0, 0.0]
    x = torch.tensor([a, b, c, d])
    im_idx = torch.tensor([0, 1, 1, 2])
    out = decoder(x, im_idx, frame_start=torch.zeros(3, dtype=torch.long), num_frames=3)
    window0, window1 = 1 + 2 + 4, 2 + 4 + 8
    expected = [
        [window0 + 100, 0],  # a: frame 0, earlier slot of window 0
        [window0, 1000],  # b: later slot of window 0
        [window0, 1000],  # c
        [window1, 1000],  # d: frame 2, later slot of window 1
    ]
    assert out.tolist() == expected


def test_windows_never_cross_videos_and_skip_empty_frames() -> None:
    """Two videos in one batch (frames 0-1 | 2-4); video 2 has no pairs in its frame 3, so frame
    4 reads window {3, 4} holding only its own pair (later slot)."""
    decoder = TemporalDecoder(dim=2, heads=1, ff_dim=4, dropout=0.0, layers=0)
    decoder.layers = nn.ModuleList([_WindowSpy()])
    with torch.no_grad():
        decoder.position_embedding.weight.copy_(torch.tensor([[100.0, 0.0], [0.0, 1000.0]]))
    x = torch.tensor([[1.0, 0], [2.0, 0], [4.0, 0], [8.0, 0]])
    im_idx = torch.tensor([0, 1, 2, 4])
    frame_start = torch.tensor([0, 0, 2, 2, 2])
    out = decoder(x, im_idx, frame_start, num_frames=5)
    assert out.tolist() == [[3 + 100, 0], [3, 1000], [4 + 100, 0], [8, 1000]]


def test_one_frame_video_has_zero_context(videos: list[VideoSample]) -> None:
    """No window: the decoder output is exactly zero, so every head outputs its bias."""
    single = make_video(7, frames=1, max_objects=3, seed=3)
    model = make_model().eval()
    batch = batch_for(model, [videos[0], single])
    with torch.no_grad():
        out = model(batch)
    rows = slice(batch.pair_offsets[1], batch.pair_offsets[2])
    p = rows.stop - rows.start
    assert p >= 1
    bias = model.a_rel_compress.bias.detach()
    assert torch.equal(out["attention_distribution"][rows], bias.expand(p, -1))
    spatial = torch.sigmoid(model.s_rel_compress.bias.detach())
    assert torch.equal(out["spatial_distribution"][rows], spatial.expand(p, -1))
    decoder = model.temporal
    x = torch.randn(3, 32)
    zero = decoder(x, torch.zeros(3, dtype=torch.long), torch.zeros(1, dtype=torch.long), 1)
    assert torch.equal(zero, torch.zeros(3, 32))


def test_spatial_encoder_stays_within_frame() -> None:
    """Changing a pair of frame 1 changes no output of frame 0 or 2 (one layer)."""
    encoder = SpatialEncoder(dim=8, heads=2, ff_dim=16, dropout=0.0, layers=1).eval()
    x = torch.randn(5, 8)
    im_idx = torch.tensor([0, 1, 1, 2, 2])
    base = encoder(x, im_idx, 3)
    changed = x.clone()
    changed[2] += 1.0
    after = encoder(changed, im_idx, 3)
    assert torch.equal(after[[0, 3, 4]], base[[0, 3, 4]])
    assert not torch.equal(after[1], base[1])


# -- masks ------------------------------------------------------------------------------------


def test_mask_cell_values_for_two_boxes() -> None:
    """Subject (0, 0, 10.5, 10) and object (5.25, 5, 27, 27): union 27 x 27, one unit per cell.
    Subject: columns 0..9 full, column 10 half covered; rows 0..9 full. Object: column 5 covers
    0.75 of its cell, columns 6..26 and rows 5..26 full. Cells hold coverage - 0.5."""
    subject = torch.tensor([[0.0, 0.0, 10.5, 10.0]])
    obj = torch.tensor([[5.25, 5.0, 27.0, 27.0]])
    masks = union_masks(subject, obj)
    expected = torch.full((1, 2, 27, 27), -0.5)
    expected[0, 0, :10, :10] = 0.5
    expected[0, 0, :10, 10] = 0.0  # 0.5 covered
    expected[0, 1, 5:, 6:] = 0.5
    expected[0, 1, 5:, 5] = 0.25  # 0.75 covered
    assert masks.shape == (1, 2, 27, 27) and masks.dtype == torch.float32
    assert torch.equal(masks, expected)
    # The masks live in the union box's frame: scaling every box by 2 changes nothing.
    assert torch.equal(union_masks(subject * 2, obj * 2), expected)
    # Swapping the boxes swaps the channels.
    assert torch.equal(union_masks(obj, subject), expected.flip(1))


# -- outputs and batching ------------------------------------------------------------------------


def test_prediction_keys_and_shapes(videos: list[VideoSample]) -> None:
    model = make_model().eval()
    batch = batch_for(model, videos)
    with torch.no_grad():
        out = model(batch)
    assert set(AG_PREDICTION_KEYS) <= set(out)
    p = batch.num_pairs
    assert out["attention_distribution"].shape == (p, 3)
    assert out["spatial_distribution"].shape == (p, 6)
    assert out["contacting_distribution"].shape == (p, 17)
    assert torch.equal(out["pred_labels"], batch.labels)
    assert torch.equal(out["pair_idx"], batch.pair_idx)
    assert ((out["spatial_distribution"] > 0) & (out["spatial_distribution"] < 1)).all()
    pieces = split_predictions(batch, out)
    assert [pred["pair_idx"].shape[0] for _, pred in pieces] == np.diff(batch.pair_offsets).tolist()


def test_wrong_section_refused(videos: list[VideoSample]) -> None:
    model = make_model()
    with pytest.raises(ConfigError, match="section='gt'"):
        model(collate(videos, section="det"))


def test_videos_together_equal_videos_alone(videos: list[VideoSample]) -> None:
    samples = [*videos, make_video(5, frames=1, seed=50), make_video(6, frames=8, seed=51)]
    model = make_model().eval()
    batch = batch_for(model, samples)
    with torch.no_grad():
        together = model(batch)
        for v, sample in enumerate(samples):
            alone = model(batch_for(model, [sample]))
            rows = slice(batch.pair_offsets[v], batch.pair_offsets[v + 1])
            for key in RELATION_KEYS:
                torch.testing.assert_close(together[key][rows], alone[key], rtol=0, atol=1e-6)


def test_video_without_pairs_in_batch(videos: list[VideoSample]) -> None:
    empty = dataclasses.replace(
        videos[0].features,
        pair_idx=np.zeros((0, 2), np.int64),
        im_idx=np.zeros(0, np.int64),
    )
    model = make_model().eval()
    batch = collate([dataclasses.replace(videos[0], features=empty), videos[1]])
    alone = collate([videos[1]])
    with torch.no_grad():
        out, single = model(batch), model(alone)
    torch.testing.assert_close(out["attention_distribution"], single["attention_distribution"])
    losses = model.train().loss(model(batch), batch)
    assert all(torch.isfinite(v) for v in losses.values())


# -- losses ------------------------------------------------------------------------------------


def test_per_video_mean_by_hand() -> None:
    """Videos 0: [1], 1: [2, 3, 6], 2: none → (1 + 11/3) / 2 = 7/3."""
    values = torch.tensor([1.0, 2.0, 3.0, 6.0])
    video = torch.tensor([0, 1, 1, 1])
    torch.testing.assert_close(per_video_mean(values, video, 3), torch.tensor(7 / 3))
    empty = per_video_mean(torch.zeros(0, requires_grad=True), torch.zeros(0, dtype=torch.long), 2)
    assert empty.item() == 0.0 and empty.requires_grad


@pytest.mark.parametrize("relation_loss", ["margin", "bce"])
def test_batch_loss_is_the_mean_of_per_video_losses(
    relation_loss: str, videos: list[VideoSample]
) -> None:
    """The original steps one video at a time: a batch's loss is the mean of those losses."""
    model = make_model(relation_loss=relation_loss).eval()
    batch = batch_for(model, videos)
    with torch.no_grad():
        together = model.loss(model(batch), batch)
        alone = [model.loss(model(b), b) for b in (batch_for(model, [s]) for s in videos)]
    for name, value in together.items():
        torch.testing.assert_close(value, sum(a[name] for a in alone) / len(alone))


def test_loss_of_one_video_by_definition(videos: list[VideoSample]) -> None:
    """One video: CE on attention logits; margin loss on the sigmoid probabilities."""
    model = make_model().eval()
    batch = batch_for(model, videos[:1])
    with torch.no_grad():
        out = model(batch)
        losses = model.loss(out, batch)
    ce = F.cross_entropy(out["attention_distribution"], batch.attention)
    torch.testing.assert_close(losses["attention"], ce)
    probs = out["spatial_distribution"]
    manual = []
    for row, hot in zip(probs, batch.spatial, strict=True):
        pos, neg = torch.nonzero(hot).flatten(), torch.nonzero(hot == 0).flatten()
        terms = [max(0.0, 1 - (row[j] - row[i]).item()) for j in pos for i in neg]
        manual.append(sum(terms) / 6)
    torch.testing.assert_close(losses["spatial"], torch.tensor(sum(manual) / len(manual)))


def test_margin_targets() -> None:
    hot = torch.tensor([[0.0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert _index_targets(hot).tolist() == [[1, 3, -1, -1], [-1, -1, -1, -1], [0, 1, 2, 3]]


def test_loss_weights(videos: list[VideoSample]) -> None:
    plain, weighted = make_model().eval(), make_model(loss_weights={"spatial": 3.0}).eval()
    weighted.load_state_dict(plain.state_dict())
    batch = batch_for(plain, videos)
    with torch.no_grad():
        a, b = plain.loss(plain(batch), batch), weighted.loss(weighted(batch), batch)
    torch.testing.assert_close(b["spatial"], 3 * a["spatial"])
    torch.testing.assert_close(b["attention"], a["attention"])


# -- training ----------------------------------------------------------------------------------


def test_gradients_reach_every_parameter(videos: list[VideoSample]) -> None:
    model = make_model(dropout=0.0).train()
    batch = batch_for(model, videos)
    losses = model.loss(model(batch), batch)
    assert set(losses) == {"attention", "spatial", "contacting"}
    sum(losses.values()).backward()
    silent = [
        name
        for name, param in model.named_parameters()
        if param.grad is None or not param.grad.abs().sum() > 0
    ]
    assert silent == []


def test_optimisation_lowers_the_loss() -> None:
    samples = [make_video(i, frames=3, seed=40 + i) for i in range(4)]
    model = make_model(dropout=0.0).train()
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
    model = make_model().eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    torch.manual_seed(99)
    other = make_model().eval()
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


def test_autocast_keeps_scores_float32(videos: list[VideoSample]) -> None:
    model = make_model()
    batch = batch_for(model, videos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
        losses = model.loss(out, batch)
    for key in RELATION_KEYS:
        assert out[key].dtype == torch.float32, key
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"proj_dim": 9, "heads": 4}, "divisible by heads"),
        ({"relation_loss": "focal"}, "relation_loss"),
        ({"loss_weights": {"verb": 1.0}}, "unknown loss_weights"),
        ({"conv_dim": 7}, "conv_dim"),
        ({"dropout": 1.0}, "dropout"),
        ({"class_names": ("a", "b", "c")}, "class_names"),
    ],
)
def test_invalid_configuration(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_model(**overrides)


def test_paper_defaults() -> None:
    """Defaults are the paper's: 3 x 512 + 2 x 200 = 1936, 1 + 3 layers, 8 heads, FFN 2048."""
    with torch.device("meta"):  # shapes only
        model = STTran(object_dim=2048, union_channels=1024)
    assert (len(model.spatial.layers), len(model.temporal.layers)) == (1, 3)
    layer = model.temporal.layers[0]
    assert layer.multihead2.heads == 8 and layer.linear1.out_features == 2048
    assert layer.linear1.in_features == 1936
    assert model.temporal.position_embedding.weight.shape == (2, 1936)
    assert model.relation.union_func1.in_channels == 1024
    assert model.relation.subj_fc.in_features == 2048
    assert model.relation.vr_fc.in_features == 256 * 7 * 7
    assert model.a_rel_compress.in_features == 1936
    assert not hasattr(layer, "norm1")  # no LayerNorm after the decoder's feed-forward block
    assert model.relation_loss == "margin" and model.mode == "predcls"


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
        model = make_model(word_vectors=path)
    person = AG_OBJECT_CLASSES.index("person")
    table = AG_OBJECT_CLASSES.index("table")
    cup = AG_OBJECT_CLASSES.index("cup/glass/bottle")
    for embedding in (model.relation.obj_embed, model.relation.obj_embed2):
        weight = embedding.weight.detach()
        assert weight[person].tolist() == [1, 2, 3, 4]
        assert weight[table].tolist() == [0, 0, 1, 1]
        assert weight[cup].tolist() == [1, 1, 0, 0]  # mean of cup and glass
    vectors, missing = class_word_vectors(path, ("__background__", "person", "sofa/couch"), 4)
    assert missing == ["sofa/couch"] and vectors[0].tolist() == [0, 0, 0, 0]


def test_word_vector_errors(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("person 1 2 3\n")
    with pytest.raises(DataError, match=r"3 values, expected 4"):
        make_model(word_vectors=short)
    with pytest.raises(DataError, match="cannot read word vectors"):
        make_model(word_vectors=tmp_path / "absent.txt")


def test_paper_recipe_config() -> None:
    """examples/configs/sttran_paper.yaml is the original train.py's recipe."""
    from m3sgg.config import load_config

    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "examples" / "configs" / "sttran_paper.yaml")
    assert config.model_name == "sttran" and config.data.videos_per_batch == 1
    assert (config.optim.optimizer, config.optim.lr, config.optim.weight_decay) == (
        "adamw",
        1e-5,
        0.01,
    )
    assert config.optim.grad_clip == 5.0 and config.train.epochs == 10
    schedule = config.schedule
    assert (schedule.name, schedule.metric, schedule.patience, schedule.factor) == (
        "plateau",
        "with/R@20",
        1,
        0.5,
    )
    assert (schedule.threshold, schedule.threshold_mode, schedule.min_lr) == (1e-4, "abs", 1e-7)
    assert config.model_options()["relation_loss"] == "margin"

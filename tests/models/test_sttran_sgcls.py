"""STTran in sgcls: the object classifier, the evaluation labelling and pair re-forming."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from synthetic_videos import TINY, make_video

from m3sgg.data.action_genome import VideoSample
from m3sgg.data.collate import collate, split_predictions
from m3sgg.errors import ConfigError
from m3sgg.models import STTran, build_model
from m3sgg.models.sttran.classifier import center_size, label_boxes


def make_model(**overrides: object) -> STTran:
    options = {**TINY, "classifier_dim": 16, "pos_dim": 8, **overrides}
    model = build_model("sttran", "action_genome", "sgcls", **options)
    assert isinstance(model, STTran)
    return model


def _logits(rows: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax over classes 1.. is ``rows`` (background logit 0, never used)."""
    probs = torch.tensor(rows, dtype=torch.float64)
    return torch.cat([torch.zeros(len(rows), 1, dtype=torch.float64), probs.log()], dim=1)


def test_labelling_by_hand() -> None:
    """Columns: person, class 2, 3, 4. Frame 0: box 1 is the most person-like; boxes 0 and 2
    both say class 2, box 0 more surely, so box 2 takes its next best (class 3, 0.375).
    Frame 1: boxes 3 and 4 tie on person: the first wins; labels then all differ, so the mode
    is the smallest label (the person) and nothing changes. Frame 2: box 6 loses class 2 to box
    7 and its next best is the person column: label 1 (it is then no pair's object)."""
    logits = _logits(
        [
            [0.125, 0.5, 0.25, 0.125],  # 0
            [0.5, 0.25, 0.125, 0.125],  # 1 person of frame 0
            [0.125, 0.375, 0.375, 0.125],  # 2 duplicate of class 2 -> class 3
            [0.25, 0.125, 0.125, 0.5],  # 3 person of frame 1 (tie, first)
            [0.25, 0.125, 0.125, 0.5],  # 4 class 4
            [0.75, 0.125, 0.125, 1e-9],  # 5 person of frame 2
            [0.375, 0.5, 0.125, 1e-9],  # 6 duplicate of class 2 -> person column
            [0.125, 0.625, 0.125, 0.125],  # 7 class 2
        ]
    )
    frame = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    dist, labels, scores, human = label_boxes(logits, frame, 3)
    assert labels.tolist() == [2, 1, 3, 1, 4, 1, 1, 2]
    torch.testing.assert_close(
        scores, torch.tensor([0.5, 0.5, 0.375, 0.25, 0.5, 0.75, 0.375, 0.625], dtype=torch.float64)
    )
    assert human.tolist() == [1, 3, 5]
    assert dist[2, 1].item() == 0.0 and dist[6, 1].item() == 0.0  # the relabelled entries
    assert dist[0, 1].item() == pytest.approx(0.5)  # the kept box keeps its distribution


def test_center_size_uses_the_plus_one_width() -> None:
    boxes = torch.tensor([[10.0, 20.0, 29.0, 59.0]])
    assert center_size(boxes).tolist() == [[20.0, 40.0, 20.0, 40.0]]


def test_classifier_scoring_by_hand() -> None:
    """logits = decoder_lin([feature, dist @ obj_embed, pos_embed(center_size(box))])."""
    model = make_model().eval()
    classifier = model.object_classifier
    assert classifier is not None
    features = torch.randn(3, TINY["object_dim"])
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 5.0, 24.0, 14.0], [1.0, 2.0, 3.0, 4.0]])
    dists = torch.softmax(torch.randn(3, 36), dim=1)
    with torch.no_grad():
        got = classifier(features, boxes, dists)
        embed = dists @ classifier.obj_embed.weight
        bn = classifier.pos_embed[0]
        cs = center_size(boxes)
        pos = (cs - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        pos = torch.relu(classifier.pos_embed[1](pos))
        want = classifier.decoder_lin(torch.cat([features, embed, pos], dim=1))
    torch.testing.assert_close(got, want)
    assert got.shape == (3, 37)


def test_evaluation_reforms_pairs_from_the_labels(videos: list[VideoSample]) -> None:
    model = make_model().eval()
    batch = collate(videos)
    with torch.no_grad():
        out = model(batch)
    frame = batch.boxes[:, 0].long()
    _, labels, scores, human = label_boxes(out["object_logits"], frame, batch.num_frames)
    assert torch.equal(out["pred_labels"], labels) and torch.equal(out["pred_scores"], scores)
    objects = torch.nonzero(labels != 1).squeeze(1)
    assert torch.equal(out["pair_idx"], torch.stack([human[frame[objects]], objects], dim=1))
    assert torch.equal(out["im_idx"], frame[objects])
    assert out["attention_distribution"].shape == (len(objects), 3)
    pieces = split_predictions(batch, out)
    for v, (_, pred) in enumerate(pieces):
        n = batch.box_offsets[v + 1] - batch.box_offsets[v]
        assert pred["pair_idx"].shape[0] == pred["im_idx"].shape[0]
        if pred["pair_idx"].numel():
            assert pred["pair_idx"].min() >= 0 and pred["pair_idx"].max() < n


def test_evaluation_batched_equals_alone(videos: list[VideoSample]) -> None:
    samples = [*videos, make_video(5, frames=1, max_objects=3, seed=50)]
    model = make_model().eval()
    batch = collate(samples)
    with torch.no_grad():
        together = split_predictions(batch, model(batch))
        for v, sample in enumerate(samples):
            one = collate([sample])
            ((_, alone),) = split_predictions(one, model(one))
            for key, value in alone.items():
                torch.testing.assert_close(together[v][1][key], value, rtol=0, atol=1e-5)


def test_training_keeps_the_given_labels_and_pairs(videos: list[VideoSample]) -> None:
    model = make_model(dropout=0.0).train()
    batch = collate(videos)
    out = model(batch)
    assert torch.equal(out["pred_labels"], batch.labels)
    assert torch.equal(out["pair_idx"], batch.pair_idx)
    losses = model.loss(out, batch)
    assert set(losses) == {"attention", "spatial", "contacting", "object"}
    per_box = F.cross_entropy(out["object_logits"], batch.labels, reduction="none")
    means = [
        per_box[a:b].mean() for a, b in zip(batch.box_offsets, batch.box_offsets[1:], strict=False)
    ]
    torch.testing.assert_close(losses["object"], torch.stack(means).mean())
    sum(losses.values()).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert silent == []


def test_sgcls_needs_class_distributions(videos: list[VideoSample]) -> None:
    bare = [
        dataclasses.replace(v, features=dataclasses.replace(v.features, class_dists=None))
        for v in videos
    ]
    with pytest.raises(ConfigError, match="class distributions"):
        make_model()(collate(bare))

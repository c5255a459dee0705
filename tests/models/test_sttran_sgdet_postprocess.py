"""sgdet evaluation labelling (the original classifier's sgdet branch), values by hand."""

from __future__ import annotations

import pytest
import torch

from m3sgg.models.sttran.postprocess import sgdet_boxes


def _dist(entries: dict[int, float]) -> list[float]:
    row = [0.0] * 36  # column k is class k + 1 (column 0: person)
    for column, value in entries.items():
        row[column] = value
    return row


def test_clean_class_nms_person_and_pairs_by_hand() -> None:
    """Frame 0: d0 person-like; d1 and d2 class 5 (d2 overlaps d1 by IoU 400/441 = 0.91 and
    scores less: suppressed), their class-5 copies say class 7 (0.3 and 0.4: d2's copy wins).
    Frame 1: d3 class 17; its copy has only the person column left, so the copy becomes the
    frame's person (tie on the person column: the copy comes first, its class group 0 is
    visited first) and the pair is d3's copy with d3 itself."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40], [21, 21, 40, 40], [5, 5, 50, 50]])
    dists = torch.tensor(
        [
            _dist({0: 0.7, 1: 0.3}),
            _dist({4: 0.6, 6: 0.3, 0: 0.1}),
            _dist({4: 0.5, 6: 0.4, 0: 0.1}),
            _dist({0: 0.2, 16: 0.8}),
        ]
    )
    frame = torch.tensor([0, 0, 0, 1])
    out = sgdet_boxes(boxes, frame, dists, num_frames=2)
    assert out.source.tolist() == [0, 1, 2, 3, 3]
    assert out.frame.tolist() == [0, 0, 0, 1, 1]
    assert out.labels.tolist() == [1, 5, 7, 1, 17]
    torch.testing.assert_close(out.scores, torch.tensor([0.7, 0.6, 0.4, 0.2, 0.8]))
    assert out.pair_idx.tolist() == [[0, 1], [0, 2], [3, 4]]
    assert out.im_idx.tolist() == [0, 0, 1]
    assert out.dist[2, 4].item() == 0.0 and out.dist[3, 16].item() == 0.0  # the copies


def test_frames_without_detections_are_skipped() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [30, 30, 60, 60]])
    dists = torch.tensor([_dist({0: 0.9, 1: 0.1}), _dist({0: 0.1, 2: 0.9})])
    out = sgdet_boxes(boxes, torch.tensor([1, 1]), dists, num_frames=3)
    assert out.labels.tolist() == [1, 3] and out.pair_idx.tolist() == [[0, 1]]
    assert out.im_idx.tolist() == [1]


def test_sgdet_model_relates_the_kept_boxes(videos) -> None:
    """Evaluation: relations of the boxes sgdet_boxes keeps, per video after splitting;
    training refuses the evaluation section (it trains on det_train)."""
    from synthetic_videos import TINY

    from m3sgg.data.collate import collate, split_predictions
    from m3sgg.errors import ConfigError
    from m3sgg.models import build_model

    model = build_model("sttran", "action_genome", "sgdet", **TINY, classifier_dim=16, pos_dim=8)
    assert (model.input_section, model.train_section) == ("det", "det_train")
    batch = collate(videos, section="det")
    with pytest.raises(ConfigError, match="section='det_train'"):
        model.train()(batch)
    model.eval()
    with torch.no_grad():
        out = model(batch)
    picked = sgdet_boxes(batch.boxes[:, 1:], batch.boxes[:, 0].long(), batch.class_dists, 12)
    assert torch.equal(out["boxes"], batch.boxes[picked.source])
    assert torch.equal(out["pair_idx"], picked.pair_idx)
    assert torch.equal(out["pred_labels"], picked.labels)
    assert out["attention_distribution"].shape == (len(picked.pair_idx), 3)
    pieces = split_predictions(batch, out)
    assert sum(len(p["boxes"]) for _, p in pieces) == len(picked.source)
    for v, (_, pred) in enumerate(pieces):
        frames = batch.frame_offsets[v + 1] - batch.frame_offsets[v]
        assert pred["boxes"][:, 0].max() < frames and pred["im_idx"].max() < frames
        assert pred["pair_idx"].max() < len(pred["boxes"])
        alone = collate([videos[v]], section="det")
        with torch.no_grad():
            ((_, single),) = split_predictions(alone, model(alone))
        for key in ("boxes", "pair_idx", "pred_labels", "attention_distribution"):
            torch.testing.assert_close(pred[key], single[key], rtol=0, atol=1e-5)


def test_given_labels_pick_the_copies() -> None:
    """``labels`` (TEMPURA: the detector's, with its classifier's distributions) decide which
    boxes clean_class copies. d1: distribution says class 5, label says 7: no copy (by default
    its class-7 copy, 0.3, would be kept). d2: label 17 and distribution 17: its copy says class 3
    (0.15) and is kept. d3: label 8, distribution class 3: its copy (column 8 zeroed) still says
    class 3 with the same box and score, so NMS suppresses it (the original comes first)."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 70, 70], [80, 0, 99, 20]])
    dists = torch.tensor(
        [
            _dist({0: 0.9, 1: 0.1}),
            _dist({4: 0.6, 6: 0.3, 0: 0.1}),
            _dist({16: 0.8, 2: 0.15, 0: 0.05}),
            _dist({2: 0.5, 7: 0.4, 0: 0.1}),
        ]
    )
    frame = torch.zeros(4, dtype=torch.long)
    given = torch.tensor([1, 7, 17, 8])
    out = sgdet_boxes(boxes, frame, dists, num_frames=1, labels=given)
    # kept, visited by (class, score): person d0 (class group 1), d3 and d2's copy (class 3:
    # 0.5, then 0.15), d1 (class 5), d2 (class 17)
    assert out.source.tolist() == [0, 3, 2, 1, 2]
    assert out.labels.tolist() == [1, 3, 3, 5, 17]
    torch.testing.assert_close(out.scores, torch.tensor([0.9, 0.5, 0.15, 0.6, 0.8]))
    assert out.dist[2, 16].item() == 0.0 and out.dist[1, 7].item() > 0  # d3 itself kept
    assert out.pair_idx.tolist() == [[0, 1], [0, 2], [0, 3], [0, 4]]
    default = sgdet_boxes(boxes, frame, dists, num_frames=1)
    assert default.source.tolist() == [0, 3, 2, 1, 1, 2]  # d1's class-7 copy, no d3 copy
    assert default.labels.tolist() == [1, 3, 3, 5, 7, 17]


def test_relation_tokens_of_a_copy_are_the_tokens_of_its_detection(videos) -> None:
    """The seam the models on STTran share: with ``source`` a copy of a detection relates as
    the detection itself (same feature, box and union map); without it, the batch's boxes."""
    from synthetic_videos import TINY

    from m3sgg.data.collate import collate
    from m3sgg.models import build_model
    from m3sgg.models.sttran.model import relation_tokens

    torch.manual_seed(0)
    model = build_model("sttran", "action_genome", "sgdet", **TINY).eval()
    batch = collate(videos[:1], section="det")
    n = len(batch.boxes)
    frame0 = torch.nonzero(batch.boxes[:, 0] == 0).squeeze(1)
    person, other = int(frame0[0]), int(frame0[-1])
    source = torch.cat([torch.arange(n), torch.tensor([other])])  # box n: a copy of `other`
    labels = torch.cat([batch.labels, torch.tensor([7])])
    labels[other] = 7
    pairs = torch.tensor([[person, other], [person, n]])
    with torch.no_grad():
        tokens = relation_tokens(model.relation, batch, labels, pairs, source)
        plain = relation_tokens(model.relation, batch, labels[:n], pairs[:1])
        maps = batch.union_maps[batch.union_rows(pairs[:1])]
        direct = model.relation(batch.box_features, batch.boxes[:, 1:], labels[:n], pairs[:1], maps)
    assert torch.equal(tokens[0], tokens[1])
    assert torch.equal(plain, direct)
    torch.testing.assert_close(plain[0], tokens[0], rtol=0, atol=1e-6)  # batched conv rounding


def test_relation_tokens_with_other_features(videos) -> None:
    """``features`` stand in for the batch's box features, copies picking their source's row."""
    from synthetic_videos import TINY

    from m3sgg.data.collate import collate
    from m3sgg.models import build_model
    from m3sgg.models.sttran.model import relation_tokens

    model = build_model("sttran", "action_genome", "sgdet", **TINY).eval()
    batch = collate(videos[:1], section="det")
    n = len(batch.boxes)
    other = torch.randn(n, batch.box_features.shape[1])
    source = torch.cat([torch.arange(n), torch.tensor([n - 1])])
    labels = torch.cat([batch.labels, batch.labels[-1:]])
    pairs = torch.tensor([[0, n - 1], [0, n]])
    with torch.no_grad():
        given = relation_tokens(model.relation, batch, labels, pairs, source, features=other)
        same = relation_tokens(model.relation, batch, labels, pairs, source, batch.box_features)
        plain = relation_tokens(model.relation, batch, labels, pairs, source)
        maps = batch.union_maps[batch.union_rows(source[pairs])]
        direct = model.relation(other[source], batch.boxes[source, 1:], labels, pairs, maps)
    assert torch.equal(same, plain) and torch.equal(given, direct)
    assert not torch.allclose(given, plain)

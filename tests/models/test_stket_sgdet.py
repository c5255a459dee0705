"""STKET in sgdet: STTran's sgdet boxes, det_train batches, the score-ranked history, a toy run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synthetic_videos import TINY, make_video

from m3sgg.data.action_genome import ActionGenome
from m3sgg.data.collate import PAIR_PREDICTION_KEYS, collate, split_predictions
from m3sgg.data.registry import get_dataset_spec
from m3sgg.data.toy import make_toy_action_genome
from m3sgg.errors import ConfigError
from m3sgg.models.stket.model import GROUPS, HEADS, STKET
from m3sgg.models.stket.selection import NOT_CONTACTING
from m3sgg.models.sttran.postprocess import sgdet_boxes

WIDTHS = {k: v for k, v in TINY.items() if k not in ("enc_layers", "dec_layers")}
SCALE = 4.0
SGDET = {**WIDTHS, "state_dims": (8, 8, 8), "classifier_dim": 16, "pos_dim": 8}


def _model(**options) -> STKET:
    return STKET(**{"priors": "zeros", "mode": "sgdet", **SGDET, **options})


def _contact_set(probabilities: torch.Tensor, threshold: float) -> list[int]:
    """The original's rule, written out: {8} when not_contacting is the arg-max, else the
    contacts at or above the threshold without 8."""
    if int(probabilities.argmax()) == NOT_CONTACTING:
        return [NOT_CONTACTING]
    return [c for c in range(17) if c != NOT_CONTACTING and probabilities[c] >= threshold]


def test_sgdet_evaluation_relates_the_kept_boxes_and_the_best_scored_holds_the_state():
    """Two frames; every object (and the spurious far box) is class 3, so frame 0 has several
    class-3 relations. The relations of frame 1 take their temporal prior from the frame-0
    relation whose object scores highest (not the latest one), by hand:
    ``state_fc(mean specific_prior[3, contact set of that relation])``."""
    video = make_video(0, frames=2, max_objects=2, seed=3, classes=(3,), noise=1.0)
    batch = collate([video], section="det")
    torch.manual_seed(1)
    threshold = 0.5
    model = _model(contact_threshold=threshold)
    with torch.no_grad():
        model.spa_c_rel_compress.weight.mul_(SCALE)  # spread the contact probabilities
        model.temporal_decoder.specific_prior.uniform_(-1.0, 1.0)
    model.eval()
    with torch.no_grad():
        out = model(batch)
    picked = sgdet_boxes(batch.boxes[:, 1:], batch.boxes[:, 0].long(), batch.class_dists, 2)
    assert torch.equal(out["pair_idx"], picked.pair_idx)
    assert torch.equal(out["boxes"], batch.boxes[picked.source])
    assert torch.equal(out["pred_labels"], picked.labels)
    assert torch.equal(out["pred_scores"], picked.scores)
    assert torch.equal(out["im_idx"], picked.im_idx)

    objects = out["pair_idx"][:, 1]
    frame0 = torch.nonzero((out["im_idx"] == 0) & (out["pred_labels"][objects] == 3)).squeeze(1)
    frame1 = torch.nonzero((out["im_idx"] == 1) & (out["pred_labels"][objects] == 3)).squeeze(1)
    assert len(frame0) >= 2 and len(frame1) >= 1
    frame0_scores = out["pred_scores"][objects[frame0]]
    best, latest = int(frame0[frame0_scores.argmax()]), int(frame0[-1])
    assert best != latest  # the rules differ on this input
    contacts = out["spatial/contacting_distribution"]
    best_set, latest_set = (
        _contact_set(contacts[best], threshold),
        _contact_set(contacts[latest], threshold),
    )
    assert best_set and best_set != latest_set

    decoder = model.temporal_decoder

    def prior_head(contact_set: list[int]) -> torch.Tensor:
        with torch.no_grad():
            state = decoder.state_fc(decoder.specific_prior[3, contact_set].mean(0))
            return model._heads(state[None], "tem")["attention_distribution"][0]

    for r in frame1.tolist():
        got = out["temporal_prior/attention_distribution"][r]
        torch.testing.assert_close(got, prior_head(best_set), rtol=0, atol=1e-6)
        assert not torch.allclose(got, prior_head(latest_set), atol=1e-4)


def test_sgdet_batch_equals_one_video_at_a_time(videos):
    model = _model().eval()
    batch = collate(videos, section="det")
    keys = (*PAIR_PREDICTION_KEYS, *(f"{h}/{g}_distribution" for h in HEADS for g in GROUPS))
    with torch.no_grad():
        together = split_predictions(batch, model(batch), pair_keys=keys)
        for v, (_, pred) in enumerate(together):
            alone = collate([videos[v]], section="det")
            ((_, single),) = split_predictions(alone, model(alone), pair_keys=keys)
            assert torch.equal(pred["boxes"], single["boxes"])
            assert torch.equal(pred["pair_idx"], single["pair_idx"])
            for head in HEADS:
                for group in GROUPS:
                    key = f"{head}/{group}_distribution"
                    torch.testing.assert_close(pred[key], single[key], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_action_genome(
        tmp_path_factory.mktemp("toy") / "ag",
        videos=8,
        seed=0,
        object_dim=TINY["object_dim"],
        union_channels=TINY["union_channels"],
    )


def test_sgdet_trains_on_det_train_and_evaluates_on_det(toy_root: Path):
    model = _model()
    assert (model.input_section, model.train_section) == ("det", "det_train")
    train = ActionGenome(toy_root, "train", features=toy_root / "features")
    train_collate = get_dataset_spec("action_genome").train_collate
    assert train_collate is not None
    batch = train_collate(model)([train[i] for i in range(len(train))])
    assert batch.section == "det_train"
    out = model(batch)  # training: the det_train pairs and assigned labels as they are
    assert torch.equal(out["pair_idx"], batch.pair_idx)
    assert torch.equal(out["pred_labels"], batch.labels)
    losses = model.loss(out, batch)
    assert len(losses) == 16 and "object" in losses
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    with pytest.raises(ConfigError, match="section='det'"):
        model.eval()(batch)
    with pytest.raises(ConfigError, match="section='det_train'"):
        model.train()(collate([train[0]], section="det"))
    with pytest.raises(ConfigError, match="ground-truth contacts"):
        _model(contact_threshold=1.0)


@pytest.mark.slow
def test_toy_sgdet_run_through_the_engine_lifts_every_head(small_config, toy_cache: Path):
    from m3sgg.config import load_config
    from m3sgg.data.registry import toy_dataset_path
    from m3sgg.engine.trainer import Trainer
    from m3sgg.models.stket.priors import count_priors, save_priors

    root = toy_dataset_path(load_config(None, ["data.toy_videos=16"]))
    priors = toy_cache / "stket_sgdet_priors.json"
    train = ActionGenome(root, "train")
    save_priors(count_priors(train.video_gt(i) for i in range(len(train))), priors)
    trainer = Trainer.from_config(
        small_config(
            "model.name=stket",
            "data.mode=sgdet",
            f"model.options.priors={json.dumps(str(priors))}",
            "optim.lr=1e-3",
            "train.epochs=3",
        )
    )
    assert trainer.model.mode == "sgdet"
    before = trainer.evaluate_epoch()
    trainer.train_loop()
    after = trainer.engine.state.eval_metrics
    assert after["with/R@20"] == after["temporal/with/R@20"]
    for head in HEADS:  # it learns: 0.15/0.12/0.17 -> 0.27/0.27/0.26 when written
        assert after[f"{head}/with/R@20"] > before[f"{head}/with/R@20"] + 0.05, head

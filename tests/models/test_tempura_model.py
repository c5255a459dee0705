"""TEMPURA on STTran's modules: outputs, losses by hand, batching, memory inputs, import."""

from __future__ import annotations

import math

import pytest
import torch
from synthetic_videos import TINY, make_video

from m3sgg.data.collate import collate
from m3sgg.errors import ConfigError, DataError
from m3sgg.models import build_model
from m3sgg.models.tempura import TEMPURA
from m3sgg.models.tempura.convert import convert_original, original_checkpoint


def _model(**options) -> TEMPURA:
    return build_model("tempura", "action_genome", "predcls", **{**TINY, "k": 3, **options})


def _videos():
    return [make_video(i, frames=n, max_objects=3, seed=20 + i) for i, n in enumerate((1, 3, 4))]


def test_outputs_are_probabilities_sampled_in_training_only() -> None:
    model = _model().eval()
    batch = collate(_videos())
    out = model(batch)
    assert set(model.prediction_keys) <= set(out)
    assert "attention_distribution" not in out  # the metric must not softmax again
    torch.testing.assert_close(out["attention_probabilities"].sum(1), torch.ones(batch.num_pairs))
    for key in ("spatial_distribution", "contacting_distribution"):
        assert bool(((out[key] > 0) & (out[key] < 1)).all())
    again = model(batch)
    assert torch.equal(out["attention_probabilities"], again["attention_probabilities"])
    model.train()
    sampled = model(batch)["attention_probabilities"]
    assert not torch.allclose(sampled, model.eval()(batch)["attention_probabilities"])


def test_several_videos_per_batch_equal_one_at_a_time() -> None:
    model = _model().eval()
    videos = _videos()
    model.set_memory(torch.randn(26, model.memory_fusion.memory.shape[1]))
    batch = collate(videos)
    together = model(batch)
    for v, video in enumerate(videos):
        alone = model(collate([video]))
        p0, p1 = batch.pair_offsets[v], batch.pair_offsets[v + 1]
        for key in ("attention_probabilities", "spatial_distribution", "contacting_distribution"):
            torch.testing.assert_close(together[key][p0:p1], alone[key], rtol=1e-5, atol=1e-6)


def test_losses_by_hand() -> None:
    """Per video: mean over pairs of -log(p_a + 1e-12) and of the BCE row means; then the mean
    over videos (written out with Python loops)."""
    model = _model()
    batch = collate(_videos())
    torch.manual_seed(0)
    p = batch.num_pairs
    attention = torch.softmax(torch.randn(p, 3), 1)
    spatial, contacting = torch.rand(p, 6), torch.rand(p, 17)
    losses = model.loss(
        {
            "attention_probabilities": attention,
            "spatial_distribution": spatial,
            "contacting_distribution": contacting,
        },
        batch,
    )
    expected = {"attention": 0.0, "spatial": 0.0, "contacting": 0.0}
    for v in range(batch.num_videos):
        rows = range(batch.pair_offsets[v], batch.pair_offsets[v + 1])
        a = [-math.log(float(attention[i, batch.attention[i]]) + 1e-12) for i in rows]
        expected["attention"] += sum(a) / len(a) / batch.num_videos
        for name, probs, target in (
            ("spatial", spatial, batch.spatial),
            ("contacting", contacting, batch.contacting),
        ):
            per_pair = []
            for i in rows:
                terms = [
                    -(t * math.log(float(q)) + (1 - t) * math.log(1 - float(q)))
                    for q, t in zip(probs[i].tolist(), target[i].tolist(), strict=True)
                ]
                per_pair.append(sum(terms) / len(terms))
            expected[name] += sum(per_pair) / len(per_pair) / batch.num_videos
    for name, value in expected.items():
        assert float(losses[name]) == pytest.approx(value, rel=1e-5)


def test_memory_inputs_are_the_pre_fusion_features_and_targets() -> None:
    model = _model().eval()
    batch = collate(_videos())
    with torch.no_grad():
        before, targets, al, ep = model.memory_inputs(batch, uncertainty=True)
        model.set_memory(torch.randn(26, before.shape[1]) * 3)
        after, _, _, _ = model.memory_inputs(batch, uncertainty=False)
        fused, features = model.relation_context(batch, batch.labels, batch.pair_idx, batch.im_idx)
    torch.testing.assert_close(before, after)  # late fusion: the memory comes after them
    torch.testing.assert_close(features, after)
    assert not torch.allclose(fused, features)
    assert torch.equal(targets[:, :3].float().argmax(1), batch.attention)
    assert torch.equal(targets[:, 3:9].float(), batch.spatial)
    assert torch.equal(targets[:, 9:].float(), batch.contacting)
    assert al.shape == ep.shape == (batch.num_pairs, 26)
    assert bool((al > 0).all()) and bool((ep >= 0).all())


def test_handlers_follow_the_memory_option() -> None:
    names = [h.name for h in _model().train_handlers()]
    assert names == ["uncertainty_pass", "memory_rebuild"]
    assert _model(memory=None).train_handlers() == []
    with pytest.raises(ValueError, match="without a memory"):
        _model(memory=None).set_memory(torch.zeros(26, 32))


@pytest.mark.parametrize(
    ("option", "value"),
    [("k", 0), ("memory", "both"), ("memory_weighting", "mean"), ("fusion", "middle"), ("lam", 2)],
)
def test_bad_options(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=option):
        _model(**{option: value})


def test_import_round_trip_with_memory(tmp_path) -> None:
    source = _model()
    source.set_memory(torch.randn(26, source.memory_fusion.memory.shape[1]))
    path = tmp_path / "best_Mrecall_model.tar"
    torch.save(original_checkpoint(source), path)
    target = _model()
    target.load_state_dict(convert_original(path, target))
    assert target.memory_fusion.is_ready
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    # a checkpoint from epoch 0 has no memory: the model starts without one
    early = original_checkpoint(source)
    early["rel_memory"] = []
    fresh = _model()
    fresh.load_state_dict(convert_original(early, fresh))
    assert not fresh.memory_fusion.is_ready


def test_import_refuses_unknown_missing_and_misshaped_keys() -> None:
    model = _model()
    model.set_memory(torch.randn(26, model.memory_fusion.memory.shape[1]))
    good = original_checkpoint(model)
    unknown = {
        **good,
        "state_dict": {**good["state_dict"], "glocal_transformer.extra": torch.ones(1)},
    }
    with pytest.raises(DataError, match=r"glocal_transformer\.extra"):
        convert_original(unknown, model)
    missing = {**good, "state_dict": dict(good["state_dict"])}
    del missing["state_dict"]["a_rel_compress.heads.var_2.bias"]
    with pytest.raises(DataError, match=r"a_rel_compress\.heads\.var_2\.bias"):
        convert_original(missing, model)
    shaped = {**good, "rel_memory": {**good["rel_memory"], "spatial": torch.zeros(5, 2)}}
    with pytest.raises(DataError, match="rel_memory"):
        convert_original(shaped, model)
    with pytest.raises(DataError, match="unknown key"):
        convert_original(good, _model(k=2))  # the checkpoint has K = 3


def test_import_original_registry(tmp_path) -> None:
    from m3sgg.models import import_original, original_importers

    source = _model()
    source.set_memory(torch.randn(26, source.memory_fusion.memory.shape[1]))
    path = tmp_path / "best_Mrecall_model.tar"
    torch.save(original_checkpoint(source), path)
    assert "tempura" in original_importers()
    model = import_original("tempura", path, **{**TINY, "k": 3})
    assert not model.training
    batch = collate(_videos())
    torch.testing.assert_close(model(batch), source.eval()(batch))
    with pytest.raises(ConfigError, match="no importer of original"):
        import_original("nonexistent", path)
    with pytest.raises(DataError, match="no such file"):
        import_original("tempura", tmp_path / "missing.tar", **TINY)


def test_class_sequences_by_hand() -> None:
    from m3sgg.models.tempura.objects import class_sequences

    dists = torch.zeros(6, 36)
    for row, cls in enumerate([5, 5, 5, 7, 5, 5]):
        dists[row, cls] = 1.0
    video = torch.tensor([0, 0, 0, 0, 1, 1])
    frame = torch.tensor([0, 0, 1, 3, 4, 6])  # batch-level frames
    sequence, position = class_sequences(dists, video, frame)
    # video 0 class 5: rows 0, 1 (frame 0) and 2 (frame 1); video 0 class 7: row 3; video 1: 4, 5
    assert sequence.tolist() == [0, 0, 0, 1, 2, 2]
    assert position.tolist() == [0, 0, 1, 0, 0, 1]


def test_sgcls_trains_with_object_losses_and_reforms_pairs_in_evaluation() -> None:
    model = build_model(
        "tempura", "action_genome", "sgcls", **TINY, k=3, tracking=True, contrastive_weight=1.0
    )
    batch = collate(_videos())
    out = model(batch)
    losses = model.loss(out, batch)
    assert set(losses) == {"attention", "spatial", "contacting", "object", "contrastive"}
    sum(losses.values()).backward()
    assert model.object_classifier.tracker is not None
    assert model.object_classifier.obj_embed.weight.grad is not None
    model.eval()
    with torch.no_grad():
        evaluated = model(batch)
    person = evaluated["pred_labels"][evaluated["pair_idx"][:, 0]]
    assert bool((person == 1).all())  # the subject of every re-formed pair is the frame's person
    torch.testing.assert_close(
        evaluated["attention_probabilities"].sum(1), torch.ones(evaluated["pair_idx"].shape[0])
    )
    no_contrastive = build_model("tempura", "action_genome", "sgcls", **TINY, k=3)
    assert "contrastive" not in no_contrastive.loss(no_contrastive(batch), batch)


def test_sgcls_import_round_trip_with_tracking(tmp_path) -> None:
    source = build_model("tempura", "action_genome", "sgcls", **TINY, k=3, tracking=True)
    layout = original_checkpoint(source)
    assert any(
        k.startswith("object_classifier.encoder_tran.layers.2.") for k in layout["state_dict"]
    )
    target = build_model("tempura", "action_genome", "sgcls", **TINY, k=3, tracking=True)
    target.load_state_dict(convert_original(layout, target))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_sgdet_evaluation_by_hand() -> None:
    """sgdet evaluation labels the detections with TEMPURA's classifier (here: zero weights, so
    every box gets softmax(bias[1:])) and picks boxes with STTran's sgdet_boxes, clean_class
    copying the boxes the *detector* labels 5/8/17. Three detections of one frame, apart:
    classifier logits person 3, class 5 4, class 7 2, the rest 0, so every box says class 5;
    detector labels [1, 5, 2]: d1 is copied with column 5 zeroed, the copy says person (3 > 2).
    NMS groups: the copy (person column) first, then d0, d1, d2 (class 5, tied, box order).
    Person of the frame: the person column is equal everywhere, the first kept box (the copy)
    wins; its score is p(person). Pairs: (copy, d0), (copy, d1), (copy, d2)."""
    import dataclasses

    model = build_model(
        "tempura", "action_genome", "sgdet", **TINY, k=3, tracking=True, contrastive_weight=1.0
    )
    assert (model.input_section, model.train_section) == ("det", "det_train")
    decoder = model.object_classifier.decoder_lin[0]
    with torch.no_grad():
        decoder.weight.zero_()
        decoder.bias.zero_()
        decoder.bias[[1, 5, 7]] = torch.tensor([3.0, 4.0, 2.0])
    batch = collate([make_video(0, frames=1, max_objects=1, seed=3)], section="det")
    assert batch.num_boxes == 3  # person, object, spurious
    boxes = torch.tensor([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30], [0, 40, 40, 50, 50.0]])
    batch = dataclasses.replace(batch, boxes=boxes, labels=torch.tensor([1, 5, 2]))
    model.eval()
    with torch.no_grad():
        out = model(batch)
    e = [math.exp(3), math.exp(4), math.exp(2)]
    total = sum(e) + 33  # 36 classes, 33 of them at logit 0
    p_person, p5, p7 = e[0] / total, e[1] / total, e[2] / total
    assert out["boxes"].tolist() == boxes[[1, 0, 1, 2]].tolist()
    assert out["pred_labels"].tolist() == [1, 5, 5, 5]
    torch.testing.assert_close(out["pred_scores"], torch.tensor([p_person, p5, p5, p5]))
    assert out["pair_idx"].tolist() == [[0, 1], [0, 2], [0, 3]]
    assert out["im_idx"].tolist() == [0, 0, 0]
    copy_row = torch.full((36,), 1 / total)
    copy_row[[0, 4, 6]] = torch.tensor([p_person, 0.0, p7])
    torch.testing.assert_close(out["object_distribution"][0], copy_row)
    torch.testing.assert_close(out["object_distribution"][1, 4], torch.tensor(p5))
    assert out["attention_probabilities"].shape == (3, 3)
    assert out["object_logits"].shape == (4, 37)  # one row per kept box
    with pytest.raises(ConfigError, match="section='det_train'"):
        model.train()(batch)
    with pytest.raises(ConfigError, match="section='det'"):
        model.eval()(collate([make_video(0, frames=1)]))


def test_import_reads_the_options_from_the_checkpoint(tmp_path) -> None:
    """Widths, K, memory kind, selection, classifier widths and tracking come from the file;
    ``heads`` and ``lam`` (not in it) from the options; config_options records what was used."""
    from m3sgg.models import import_original

    source = build_model(
        "tempura", "action_genome", "sgdet", **TINY, k=3, tracking=True, memory="separate",
        selection="automated", classifier_dim=16, pos_dim=8, lam=0.3,
    )  # fmt: skip
    source.set_memory(torch.randn(26, source.memory_fusion.memory.shape[1]))
    path = tmp_path / "model_3.tar"
    torch.save(original_checkpoint(source), path)
    model = import_original("tempura", path, mode="sgdet", heads=4, lam=0.3)
    assert model.config_options == {
        **{k: v for k, v in TINY.items() if k not in ("object_dim", "union_channels")},
        "num_classes": 37,
        "k": 3,
        "memory": "separate",
        "selection": "automated",
        "classifier_dim": 16,
        "pos_dim": 8,
        "tracking": True,
        "heads": 4,
        "lam": 0.3,
    }
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    batch = collate(_videos(), section="det")
    torch.testing.assert_close(model(batch), source.eval()(batch))


def _gmm_object_model(**options) -> TEMPURA:
    """sgcls, mixture object head K 2 depending on its biases only: component 1 says class 2
    (logit 2), component 2 class 4 (logit 3), equal weights."""
    model = build_model(
        "tempura", "action_genome", "sgcls", **TINY, k=2, object_head="gmm", **options
    )
    head = model.object_classifier.decoder_lin
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.zero_()
        head.proj.bias[head.fused_index("mu", 0).start + 2] = 2.0
        head.proj.bias[head.fused_index("mu", 1).start + 4] = 3.0
    return model


def test_mixture_object_head_evaluation_by_hand() -> None:
    """One frame, the person and one object: both boxes get the same distribution over classes
    1..36, 1/2 (softmax(b1[1:]) + softmax(b2[1:])): class 2 (e^2/(e^2+35) + 1/(e^3+35))/2, class
    4 (1/(e^2+35) + e^3/(e^3+35))/2, the others (1/(e^2+35) + 1/(e^3+35))/2. The person column
    ties: the first box is the person; the second's best class is 4."""
    model = _gmm_object_model().eval()
    batch = collate([make_video(0, frames=1, max_objects=1, seed=3)])
    assert batch.num_boxes == 2
    with torch.no_grad():
        out = model(batch)
    e2, e3 = math.exp(2), math.exp(3)
    rest = (1 / (e2 + 35) + 1 / (e3 + 35)) / 2
    row = torch.full((36,), rest)
    row[1] = (e2 / (e2 + 35) + 1 / (e3 + 35)) / 2
    row[3] = (1 / (e2 + 35) + e3 / (e3 + 35)) / 2
    assert "object_logits" not in out
    torch.testing.assert_close(out["object_probabilities"], torch.stack([row, row]))
    torch.testing.assert_close(out["object_distribution"], torch.stack([row, row]))
    assert out["pred_labels"].tolist() == [1, 4] and out["pair_idx"].tolist() == [[0, 1]]
    torch.testing.assert_close(out["pred_scores"], torch.stack([row[0], row[3]]))
    # its uncertainty: aleatoric sum_k pi_k sigmoid(0) = 1/2 for every class
    frame = batch.boxes[:, 0].long()
    aleatoric, epistemic = model.object_classifier.uncertainty(
        batch.box_features, batch.boxes[:, 1:], batch.class_dists, batch.box_video, frame
    )
    torch.testing.assert_close(aleatoric, torch.full((2, 37), 0.5))
    assert epistemic.shape == (2, 37) and bool((epistemic > 0).any())


def test_mixture_object_head_loss_by_hand() -> None:
    """Training: sampled probabilities over all 37 classes; the object loss is, per video, the
    plain mean over boxes of -w[t] log(p_t + 1e-12) (w: eos_coef for the background), then the
    mean over videos (Python loops)."""
    model = _gmm_object_model()
    model.eos_coef = 0.25
    batch = collate(_videos())
    batch.object_targets[0] = 0  # one background box
    torch.manual_seed(0)
    out = model(batch)
    probs = out["object_probabilities"]
    assert probs.shape == (batch.num_boxes, 37)
    torch.testing.assert_close(probs.sum(1), torch.ones(batch.num_boxes))
    per_video = []
    for v in range(batch.num_videos):
        terms = []
        for i in range(batch.box_offsets[v], batch.box_offsets[v + 1]):
            t = int(batch.object_targets[i])
            weight = 0.25 if t == 0 else 1.0
            terms.append(-weight * math.log(float(probs[i, t].detach()) + 1e-12))
        per_video.append(sum(terms) / len(terms))
    losses = model.loss(out, batch)
    torch.testing.assert_close(losses["object"], torch.tensor(sum(per_video) / len(per_video)))
    losses["object"].backward()
    assert model.object_classifier.decoder_lin.proj.weight.grad is not None


def test_mixture_object_head_import_round_trip(tmp_path) -> None:
    from m3sgg.models import import_original

    source = build_model(
        "tempura", "action_genome", "sgdet", **TINY, k=3, object_head="gmm", tracking=True
    )
    layout = original_checkpoint(source)
    assert "object_classifier.decoder_lin.heads.pi_3.bias" in layout["state_dict"]
    assert not any(k.startswith("object_classifier.decoder_lin.proj") for k in layout["state_dict"])
    path = tmp_path / "model_0.tar"
    torch.save(layout, path)
    model = import_original("tempura", path, mode="sgdet", heads=4)
    assert model.config_options["object_head"] == "gmm"
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(DataError, match=r"decoder_lin\.heads"):  # a linear model refuses it
        convert_original(layout, build_model("tempura", "action_genome", "sgdet", **TINY, k=3))
    with pytest.raises(ConfigError, match="object_head"):
        build_model("tempura", "action_genome", "sgcls", **TINY, object_head="mlp")


def test_object_memory_inputs_fusion_and_handlers() -> None:
    """The object memory's inputs are the classifier's pre-fusion features of the non-background
    boxes with their one-hot class over 1..; once set, the memory is fused into those features
    (lam f + (1 - lam) read(f)) before the decoder, and the fused features are the contrastive
    embedding."""
    model = build_model(
        "tempura", "action_genome", "sgcls", **TINY, k=3, classifier_dim=16, object_memory=True,
        lam=0.3, contrastive_weight=1.0,
    ).eval()  # fmt: skip
    batch = collate(_videos())
    batch.object_targets[1] = 0  # a background box: left out
    classifier = model.object_classifier
    frame = batch.boxes[:, 0].long()
    args = (batch.box_features, batch.boxes[:, 1:], batch.class_dists, batch.box_video, frame)
    with torch.no_grad():
        features, targets = model.object_memory_inputs(batch)
        pre = classifier.memory_features(*args)
        _, before = classifier(*args)
    keep = batch.object_targets > 0
    assert torch.equal(features, pre[keep])
    assert targets.shape == (int(keep.sum()), 36)
    assert targets.long().argmax(1).tolist() == (batch.object_targets[keep] - 1).tolist()
    assert targets.long().sum(1).tolist() == [1] * int(keep.sum())
    torch.testing.assert_close(before, pre)  # no memory yet: passed through
    memory = torch.randn(36, 16)
    model.set_object_memory(memory)
    with torch.no_grad():
        _, after = classifier(*args)
        read = classifier.memory_fusion.read(pre)
    torch.testing.assert_close(after, 0.3 * pre + 0.7 * read)
    assert not torch.allclose(after, pre)
    handlers = model.train_handlers()
    assert handlers[0].object_accumulator.sums.shape == (36, 16)
    assert handlers[0].accumulator is not None  # the predicate memory too


def test_object_memory_import_round_trip(tmp_path) -> None:
    from m3sgg.models import import_original

    source = build_model(
        "tempura", "action_genome", "sgcls", **TINY, k=3, tracking=True, object_memory=True
    )
    source.set_memory(torch.randn(26, source.memory_fusion.memory.shape[1]))
    width = 12 + 4 + 128  # the tracking output: box feature, class embedding, position
    source.set_object_memory(torch.randn(36, width))
    layout = original_checkpoint(source)
    assert layout["object_memory"].shape == (36, width)
    assert "object_classifier.mem_attention.in_proj_weight" in layout["state_dict"]
    path = tmp_path / "model_1.tar"
    torch.save(layout, path)
    model = import_original("tempura", path, mode="sgcls", heads=4)
    assert model.config_options["object_memory"] is True
    assert model.object_classifier.memory_fusion.is_ready
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    plain = build_model("tempura", "action_genome", "sgcls", **TINY, k=3, tracking=True)
    with pytest.raises(DataError, match="mem_attention"):
        convert_original(layout, plain)
    early = {**layout, "object_memory": []}  # before the first epoch's memory
    fresh = build_model(
        "tempura", "action_genome", "sgcls", **TINY, k=3, tracking=True, object_memory=True
    )
    fresh.load_state_dict(convert_original(early, fresh))
    assert not fresh.object_classifier.memory_fusion.is_ready
    bad = {**layout, "object_memory": torch.zeros(36, 5)}
    with pytest.raises(DataError, match="object_memory"):
        convert_original(bad, fresh)


@pytest.mark.parametrize(
    ("mode", "options"),
    [("predcls", {}), ("sgcls", {"tracking": True, "selection": "automated"})],
)
def test_object_memory_bad_options(mode: str, options: dict) -> None:
    with pytest.raises(ConfigError, match="object_memory"):
        build_model("tempura", "action_genome", mode, **TINY, object_memory=True, **options)


@pytest.mark.parametrize("tracking", [False, True])
def test_take_object_features_feeds_the_classifier_features_to_the_relations(
    tracking: bool, tmp_path
) -> None:
    """-take_obj_mem_feat: the relation token's subject/object projections read the classifier's
    (fused) features, 16 wide (its hidden width) without tracking, 12 + 4 + 8 with; so the
    relation features move with the classifier's weights, which they do not otherwise."""
    from m3sgg.models import import_original

    options = {**TINY, "k": 3, "classifier_dim": 16, "pos_dim": 8, "tracking": tracking}
    model = build_model("tempura", "action_genome", "sgcls", **options, take_object_features=True)
    plain = build_model("tempura", "action_genome", "sgcls", **options)
    assert model.relation.subj_fc.in_features == (24 if tracking else 16)
    batch = collate(_videos())

    def relation_features(m: TEMPURA) -> torch.Tensor:
        m.eval()
        with torch.no_grad():
            return m.memory_inputs(batch, False)[0]

    before, plain_before = relation_features(model), relation_features(plain)
    for m in (model, plain):
        with torch.no_grad():
            m.object_classifier.obj_embed.weight.add_(1.0)
    assert not torch.allclose(relation_features(model), before)
    assert torch.equal(relation_features(plain), plain_before)
    frame = batch.boxes[:, 0].long()
    with torch.no_grad():
        _, taken = model.object_classifier(
            batch.box_features, batch.boxes[:, 1:], batch.class_dists, batch.box_video, frame
        )
        _, direct = model.relation_context(
            batch, batch.labels, batch.pair_idx, batch.im_idx, object_features=taken
        )
    torch.testing.assert_close(relation_features(model), direct)
    # the import reads the box width from the classifier when told the relations take its features
    path = tmp_path / "model.tar"
    torch.save(original_checkpoint(model), path)
    again = import_original("tempura", path, mode="sgcls", heads=4, take_object_features=True)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    with pytest.raises(ConfigError, match="take_object_features"):
        build_model("tempura", "action_genome", "predcls", **TINY, take_object_features=True)


def test_linear_relation_head_by_hand(tmp_path) -> None:
    """-rel_head linear: with zero weights, attention softmax(bias) = softmax(0, ln 2, ln 5) =
    (1/8, 2/8, 5/8) and spatial sigmoid(ln 3) = 3/4 for every pair; the attention loss is the
    cross-entropy of the logits (per pair -log of the labelled class's softmax)."""
    from m3sgg.models import import_original

    model = _model(relation_head="linear")
    with torch.no_grad():
        for head in (model.a_rel_compress, model.s_rel_compress, model.c_rel_compress):
            head.weight.zero_()
            head.bias.zero_()
        model.a_rel_compress.bias.copy_(torch.tensor([0.0, math.log(2), math.log(5)]))
        model.s_rel_compress.bias.fill_(math.log(3))
    batch = collate(_videos())
    out = model.eval()(batch)
    p = batch.num_pairs
    torch.testing.assert_close(
        out["attention_probabilities"], torch.tensor([[1 / 8, 2 / 8, 5 / 8]]).expand(p, 3)
    )
    torch.testing.assert_close(out["spatial_distribution"], torch.full((p, 6), 0.75))
    torch.testing.assert_close(out["contacting_distribution"], torch.full((p, 17), 0.5))
    train_out = model.train()(batch)
    per_video = []
    for v in range(batch.num_videos):
        rows = range(batch.pair_offsets[v], batch.pair_offsets[v + 1])
        terms = [-math.log([1 / 8, 2 / 8, 5 / 8][int(batch.attention[i])]) for i in rows]
        per_video.append(sum(terms) / len(terms))
    losses = model.loss(train_out, batch)
    torch.testing.assert_close(losses["attention"], torch.tensor(sum(per_video) / len(per_video)))
    layout = original_checkpoint(model)
    assert "a_rel_compress.weight" in layout["state_dict"]
    path = tmp_path / "linear.tar"
    torch.save(layout, path)
    again = import_original("tempura", path, heads=4)
    assert again.config_options["relation_head"] == "linear"
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    with pytest.raises(ConfigError, match="relation_head"):
        _model(relation_head="linear", memory_weighting="al")
    with pytest.raises(ConfigError, match="relation_head"):
        _model(relation_head="mlp")


@pytest.mark.parametrize("weighting", ["al", "ep"])
def test_uncertainty_weighted_relation_losses_by_hand(weighting: str) -> None:
    """relation_loss_weighting: per group and video, pair p's loss weighs 1 + e_p / (sum_q e_q +
    1e-12), e_p = exp(sum of its uncertainty values over the group's classes), the values the
    eval-mode uncertainty pass gives (here a stub with known values; the model is back in
    training mode afterwards)."""
    model = _model(relation_loss_weighting=weighting)
    batch = collate(_videos())
    p = batch.num_pairs
    torch.manual_seed(0)
    values = {"al": torch.rand(p, 26), "ep": torch.rand(p, 26)}
    seen = []

    def stub(b, uncertainty):
        seen.append((model.training, torch.is_grad_enabled(), uncertainty))
        return None, None, values["al"], values["ep"]

    model.memory_inputs = stub  # type: ignore[method-assign]
    attention = torch.softmax(torch.randn(p, 3), 1)
    spatial, contacting = torch.rand(p, 6), torch.rand(p, 17)
    model.train()
    losses = model.loss(
        {
            "attention_probabilities": attention,
            "spatial_distribution": spatial,
            "contacting_distribution": contacting,
        },
        batch,
    )
    assert seen == [(False, False, True)] and model.training
    u = values[weighting]
    columns = {"attention": range(0, 3), "spatial": range(3, 9), "contacting": range(9, 26)}
    expected = {"attention": 0.0, "spatial": 0.0, "contacting": 0.0}
    for v in range(batch.num_videos):
        rows = list(range(batch.pair_offsets[v], batch.pair_offsets[v + 1]))
        for name in expected:
            e = {i: math.exp(sum(float(u[i, c]) for c in columns[name])) for i in rows}
            total = sum(e.values())
            per_pair = []
            for i in rows:
                if name == "attention":
                    loss = -math.log(float(attention[i, batch.attention[i]]) + 1e-12)
                else:
                    probs = (spatial if name == "spatial" else contacting)[i].tolist()
                    target = getattr(batch, name)[i].tolist()
                    terms = [
                        -(t * math.log(q) + (1 - t) * math.log(1 - q))
                        for q, t in zip(probs, target, strict=True)
                    ]
                    loss = sum(terms) / len(terms)
                per_pair.append((1 + e[i] / (total + 1e-12)) * loss)
            expected[name] += sum(per_pair) / len(per_pair) / batch.num_videos
    for name, value in expected.items():
        assert float(losses[name]) == pytest.approx(value, rel=1e-5)
    with pytest.raises(ConfigError, match="relation_loss_weighting"):
        _model(relation_loss_weighting="both")


@pytest.mark.parametrize("weighting", ["al", "ep"])
def test_uncertainty_weighted_object_loss_by_hand(weighting: str) -> None:
    """object_loss_weighting: box b's object loss weighs 1 + e_b / sum_c e_c (its video's
    boxes; no epsilon), e_b = exp(sum of its values over the 37 classes) from the eval-mode
    uncertainty of the mixture object head (a stub here)."""
    model = _gmm_object_model(object_loss_weighting=weighting, eos_coef=0.5)
    batch = collate(_videos())
    batch.object_targets[0] = 0
    n = batch.num_boxes
    torch.manual_seed(0)
    values = {"al": torch.rand(n, 37) * 0.2, "ep": torch.rand(n, 37) * 0.1}
    seen = []

    def stub(*inputs):
        seen.append((model.training, torch.is_grad_enabled()))
        return values["al"], values["ep"]

    model.object_classifier.uncertainty = stub  # type: ignore[method-assign]
    probs = torch.softmax(torch.randn(n, 37), 1)
    predictions = {
        "attention_probabilities": torch.full((batch.num_pairs, 3), 1 / 3),
        "spatial_distribution": torch.full((batch.num_pairs, 6), 0.5),
        "contacting_distribution": torch.full((batch.num_pairs, 17), 0.5),
        "object_probabilities": probs,
        "object_embedding": torch.randn(n, 8),
    }
    model.train()
    loss = model.loss(predictions, batch)["object"]
    assert seen == [(False, False)] and model.training
    expected = 0.0
    for v in range(batch.num_videos):
        rows = list(range(batch.box_offsets[v], batch.box_offsets[v + 1]))
        e = {b: math.exp(float(values[weighting][b].sum())) for b in rows}
        total = sum(e.values())
        terms = []
        for b in rows:
            t = int(batch.object_targets[b])
            nll = -(0.5 if t == 0 else 1.0) * math.log(float(probs[b, t]) + 1e-12)
            terms.append((1 + e[b] / total) * nll)
        expected += sum(terms) / len(terms) / batch.num_videos
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="object_loss_weighting"):
        build_model("tempura", "action_genome", "sgcls", **TINY, object_loss_weighting="al")


def test_empty_frame_relabel_by_hand() -> None:
    """Video 0 (frames 0-2) has no detection in frame 1, before its last detected frame: its
    first kept box (A, an object of frame 0) becomes a person with its person probability, and
    its pair (B, A) goes. Video 1 (frames 3-4) has none in frame 4, after its last detected
    frame: unchanged."""
    from m3sgg.models.sttran.postprocess import SgdetBoxes
    from m3sgg.models.tempura.postprocess import empty_frame_relabel

    dist = torch.rand(6, 36)
    picked = SgdetBoxes(
        source=torch.arange(6),
        frame=torch.tensor([0, 0, 2, 2, 3, 3]),
        dist=dist,
        labels=torch.tensor([5, 1, 1, 7, 1, 3]),
        scores=torch.full((6,), 0.5),
        pair_idx=torch.tensor([[1, 0], [2, 3], [4, 5]]),
        im_idx=torch.tensor([0, 2, 3]),
    )
    detection_frame = torch.tensor([0, 0, 2, 2, 3, 3])
    out = empty_frame_relabel(picked, detection_frame, torch.tensor([0, 0, 0, 1, 1]))
    assert out.labels.tolist() == [1, 1, 1, 7, 1, 3]
    assert out.scores[0] == dist[0, 0] and out.scores[1:].tolist() == [0.5] * 5
    assert out.pair_idx.tolist() == [[2, 3], [4, 5]] and out.im_idx.tolist() == [2, 3]
    assert torch.equal(out.source, picked.source) and torch.equal(out.dist, dist)
    untouched = empty_frame_relabel(
        picked, torch.tensor([0, 0, 1, 2, 3, 3]), torch.tensor([0] * 3 + [1] * 2)
    )
    assert untouched is picked  # no frame without detections before a video's last one

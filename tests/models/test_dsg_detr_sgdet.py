"""DSG-DETR in sgdet: sequences by detected class, evaluation on the classifier's distribution
through STTran's ``sgdet_boxes``, relation positions by subject box, ``det_train`` training."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from synthetic_videos import make_video
from test_dsg_detr import TINY, make_model, no_randomness

from m3sgg.data.action_genome import ActionGenome, VideoSample
from m3sgg.data.collate import Batch, collate, split_predictions
from m3sgg.data.toy import make_toy_action_genome
from m3sgg.errors import ConfigError
from m3sgg.models.dsg_detr import DSGDETR

TOY_DIM, TOY_CHANNELS = 16, 4


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> list[VideoSample]:
    """The toy Action Genome's videos (both splits), with ``det`` and ``det_train`` sections."""
    root = make_toy_action_genome(
        tmp_path_factory.mktemp("toy") / "ag",
        videos=8,
        seed=0,
        object_dim=TOY_DIM,
        union_channels=TOY_CHANNELS,
    )
    return [
        ds[i]
        for split in ("train", "test")
        for ds in [ActionGenome(root, split, features=root / "features")]
        for i in range(len(ds))
    ]


def toy_model(**overrides: object) -> DSGDETR:
    return make_model(
        "sgdet", **{**TINY, "object_dim": TOY_DIM, "union_channels": TOY_CHANNELS, **overrides}
    )


def det_batch(frames: int, boxes: list[list[float]], classes: list[int]) -> Batch:
    """One synthetic video of ``frames`` frames with three detections each (person, object,
    spurious), given boxes ``[frame, x1, y1, x2, y2]`` and detected classes (argmax)."""
    sample = make_video(0, frames=frames, max_objects=1, seed=4)
    batch = collate([sample], "det")
    assert batch.boxes.shape[0] == 3 * frames
    dists = torch.full((3 * frames, 36), 0.01)
    dists[torch.arange(3 * frames), torch.tensor(classes) - 1] = 0.5
    return dataclasses.replace(batch, boxes=torch.tensor(boxes), class_dists=dists)


def fixed_classifier(model: DSGDETR, bias: dict[int, float]) -> DSGDETR:
    """The classifier's last layer gives every box the logits ``bias`` (0 elsewhere)."""
    head = model.object_classifier.decoder_lin[3]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for cls, value in bias.items():
            head.bias[cls] = value
    return model


def test_sequences_group_by_detected_class_with_the_frame_rank_as_position() -> None:
    """Two videos; boxes by frame with detected classes: video 0 frames 0,0,1,1,1,2 classes
    1,7,1,7,7,3; video 1 frames 3,4 classes 7,7. Sequences = (video, class) in ascending order:
    (0,1)=0, (0,3)=1, (0,7)=2, (1,7)=3. Positions: the rank of the box's frame among its
    sequence's frames: class 7 of video 0 sits in frames 0,1,1 -> 0,1,1."""
    model = make_model("sgdet")
    samples = [make_video(0, frames=3, seed=1), make_video(1, frames=2, seed=2)]
    batch = collate(samples, "det")
    rows = torch.tensor([0, 1, 0, 1, 2, 0, 0, 0])  # which row of its frame each box is
    frame = torch.tensor([0, 0, 1, 1, 1, 2, 3, 4])
    pick = batch.frame_box_offsets[frame] + rows
    classes = torch.tensor([1, 7, 1, 7, 7, 3, 7, 7])
    dists = torch.full((len(pick), 36), 0.01)
    dists[torch.arange(len(pick)), classes - 1] = 0.5
    small = dataclasses.replace(
        batch,
        boxes=batch.boxes[pick],
        box_video=batch.box_video[pick],
        class_dists=dists,
    )
    sequence, position = model.object_sequences(small)
    assert sequence.tolist() == [0, 2, 0, 2, 2, 1, 3, 3]
    assert position is not None
    assert position.tolist() == [0, 0, 1, 1, 1, 0, 0, 1]


def test_an_object_token_sees_its_class_across_frames_and_nothing_else() -> None:
    """Box 4 (class 7, frame 1) changes with box 1 (class 7, frame 0), not with box 2 (class 3,
    frame 0, the same frame as box 1)."""
    model = make_model("sgdet").eval()
    boxes = [[f, 10.0 * k, 0.0, 10.0 * k + 8, 8.0] for f in range(2) for k in range(3)]
    batch = det_batch(2, boxes, [1, 7, 3, 1, 7, 5])
    with torch.no_grad():
        base = model.encode_objects(batch, batch.class_dists)
        for row, changes in ((1, True), (2, False)):
            features = batch.box_features.clone()
            features[row] += 1.0
            out = model.encode_objects(
                dataclasses.replace(batch, box_features=features), batch.class_dists
            )
            assert not torch.allclose(out[row], base[row])
            assert torch.allclose(out[4], base[4]) is not changes


def test_evaluation_keeps_boxes_by_the_classifier_s_distribution_not_the_detector_s() -> None:
    """The classifier gives every box the logits person 2, class 8 1, 0 elsewhere (37 classes):
    over classes 1.. every box has person e^2/Z, class 8 e/Z, Z = e^2 + e + 35 (34 other
    classes and the background at e^0). The detector says class 3 everywhere. Frame 0: A, B
    (IoU 90/110 = 0.82 with A) and C; frame 1: D, E, F far apart. Per frame one NMS group
    (arg-max person): B falls (equal scores keep the first); the person is each frame's first
    kept box; the others take class 8 with e/Z. Kept: A, C, D, E, F."""
    model = fixed_classifier(make_model("sgdet"), {1: 2.0, 8: 1.0}).eval()
    boxes = [
        [0, 0.0, 0.0, 10.0, 10.0],
        [0, 1.0, 0.0, 11.0, 10.0],
        [0, 20.0, 20.0, 30.0, 30.0],
        [1, 0.0, 0.0, 10.0, 10.0],
        [1, 40.0, 0.0, 50.0, 10.0],
        [1, 80.0, 0.0, 90.0, 10.0],
    ]
    batch = det_batch(2, boxes, [3] * 6)
    with torch.no_grad():
        out = model(batch)
    z = math.e**2 + math.e + 35
    assert torch.equal(out["boxes"], torch.tensor(boxes)[[0, 2, 3, 4, 5]])
    assert out["pred_labels"].tolist() == [1, 8, 1, 8, 8]
    assert torch.equal(out["labels"], out["pred_labels"])
    torch.testing.assert_close(
        out["pred_scores"], torch.tensor([math.e**2, math.e, math.e**2, math.e, math.e]) / z
    )
    assert out["pair_idx"].tolist() == [[0, 1], [2, 3], [2, 4]]
    assert out["im_idx"].tolist() == [0, 1, 1]
    assert out["object_distribution"].shape == (5, 36)
    torch.testing.assert_close(out["object_distribution"][:, 7], torch.full((5,), math.e / z))
    assert out["attention_distribution"].shape == (3, 3)


def test_relation_positions_rank_the_subject_box_in_sgdet() -> None:
    """Pairs (person 0, 1), (0, 2), (person 3, 4), (3, 5), all objects class 8: one relation
    sequence; positions = rank of the subject box among the sequence's subjects: 0, 0, 1, 1
    (predcls/sgcls would give the plain rank 0, 1, 2, 3)."""
    model = fixed_classifier(make_model("sgdet"), {1: 2.0, 8: 1.0}).eval()
    boxes = [[f, 30.0 * k, 0.0, 30.0 * k + 10, 10.0] for f in range(2) for k in range(3)]
    batch = det_batch(2, boxes, [3] * 6)
    seen: list[tuple[list[int], list[int]]] = []
    encoder = model.global_encoder
    original = encoder.forward

    def spy(x: torch.Tensor, sequence: torch.Tensor, position: torch.Tensor | None = None):
        assert position is not None
        seen.append((sequence.tolist(), position.tolist()))
        return original(x, sequence, position)

    encoder.forward = spy  # type: ignore[method-assign]
    with torch.no_grad():
        out = model(batch)
    assert out["pair_idx"].tolist() == [[0, 1], [0, 2], [3, 4], [3, 5]]
    assert seen == [([0, 0, 0, 0], [0, 0, 1, 1])]


def test_training_relates_the_assigned_labels_and_learns_the_background(
    toy: list[VideoSample],
) -> None:
    """det_train: the relation token's classes are the assigned labels (0 for a detection
    assigned to nothing); the object loss is the mean over videos of each video's mean
    cross-entropy against them, background included."""
    model = no_randomness(toy_model())
    batch = collate(toy, "det_train")
    assert bool((batch.labels == 0).any())  # detections assigned to no GT box
    labels_seen: list[torch.Tensor] = []
    relation = model.relation
    original = relation.forward

    def spy(features, boxes, labels, pair_idx, maps):  # type: ignore[no-untyped-def]
        labels_seen.append(labels)
        return original(features, boxes, labels, pair_idx, maps)

    relation.forward = spy  # type: ignore[method-assign]
    with torch.no_grad():
        out = model(batch)
        losses = model.loss(out, batch)
    assert torch.equal(labels_seen[0], batch.labels)
    assert torch.equal(out["pred_labels"], batch.labels)
    assert out["object_logits"].shape == (len(batch.labels), 37)
    per_video = []
    for v in range(batch.num_videos):
        b0, b1 = batch.box_offsets[v], batch.box_offsets[v + 1]
        per_video.append(F.cross_entropy(out["object_logits"][b0:b1], batch.labels[b0:b1]))
    torch.testing.assert_close(losses["object"], torch.stack(per_video).mean())
    assert set(losses) == {"attention", "spatial", "contacting", "object"}


@pytest.mark.parametrize("train", [False, True])
def test_videos_together_equal_videos_alone(toy: list[VideoSample], train: bool) -> None:
    model = no_randomness(toy_model()) if train else toy_model().eval()
    section = model.train_section if train else model.input_section
    assert section == ("det_train" if train else "det")
    with torch.no_grad():
        batch = collate(toy, section)
        together = split_predictions(batch, model(batch))
        for sample, (_, joint) in zip(toy, together, strict=True):
            alone = collate([sample], section)
            ((_, single),) = split_predictions(alone, model(alone))
            for key, value in single.items():
                if value.is_floating_point():
                    torch.testing.assert_close(joint[key], value, rtol=1e-5, atol=1e-5)
                else:
                    assert torch.equal(joint[key], value), key


def test_sections_and_distributions_are_checked(toy: list[VideoSample]) -> None:
    model = toy_model()
    with pytest.raises(ConfigError, match=r"training\) needs batches collated with "):
        model(collate(toy[:1], "det"))
    model.eval()
    with pytest.raises(ConfigError, match=r"section='det', got 'det_train'"):
        model(collate(toy[:1], "det_train"))
    batch = dataclasses.replace(collate(toy[:1], "det"), class_dists=None)
    with pytest.raises(ConfigError, match="class distributions"):
        model(batch)


def test_the_sgdet_recipe_trains_and_evaluates_on_toy_data_through_the_engine(
    toy_cache: Path, tmp_path: Path
) -> None:
    """examples/configs/dsg_detr_sgdet.yaml through the real Trainer on the toy dataset:
    det_train batches for training, det for evaluation, a checkpoint on disk."""
    from m3sgg.config import load_config
    from m3sgg.engine.checkpoint import load_checkpoint
    from m3sgg.engine.trainer import Trainer

    recipe = Path(__file__).resolve().parents[2] / "examples" / "configs" / "dsg_detr_sgdet.yaml"
    config = load_config(
        recipe,
        [
            "data.toy_videos=16",
            "train.epochs=1",
            "log.every_iters=1000",
            f"run.output={tmp_path}",
            "run.name=sgdet",
        ],
    )
    trainer = Trainer.from_config(config)
    assert trainer.core_model.mode == "sgdet"
    metrics = trainer.train_loop().eval_metrics
    assert 0.0 <= metrics["with/R@20"] <= 1.0 and math.isfinite(metrics["with/R@20"])
    assert any(key.startswith("with/") for key in metrics)
    last = load_checkpoint(tmp_path / "sgdet" / "checkpoints" / "last.pt")
    assert last["engine"]["iteration"] == last["engine"]["epoch_length"] > 0

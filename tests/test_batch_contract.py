"""docs/batch.md names every field of both batch classes; plugins add fields with
register_batch_field, and the fields travel with the batch."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from m3sgg.data import batch_fields
from m3sgg.data.batch_fields import CollateWithFields, register_batch_field, with_batch_fields
from m3sgg.data.collate import Batch
from m3sgg.data.collate_easg import EASGBatch, collate_easg
from m3sgg.engine.trainer import Trainer

DOC = Path(__file__).resolve().parents[1] / "docs" / "batch.md"


@pytest.mark.parametrize("cls", [Batch, EASGBatch])
def test_docs_batch_md_names_every_field(cls):
    text = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_]+)`", text, re.M))
    documented |= {"frame_offsets", "box_offsets", "pair_offsets"} & set(
        re.findall(r"`([a-z_]+)`", text)
    )
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in documented]
    assert not missing, f"docs/batch.md does not describe {cls.__name__} fields {missing}"


@pytest.fixture
def frames_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(batch_fields._FIELDS, "action_genome", {})

    def frames_per_video(samples, batch):
        return torch.tensor([s.gt.num_frames for s in samples])

    register_batch_field("action_genome", "frames_per_video", frames_per_video)
    register_batch_field("action_genome", "note", lambda samples, batch: "not a tensor")


def test_a_registered_field_reaches_every_training_batch(small_config, frames_field):
    trainer = Trainer.from_config(small_config("data.videos_per_batch=3"))
    batch = next(iter(trainer.dataloader_train))
    # the same count read another way: the batch's own frame offsets
    per_video = np.diff(batch.frame_offsets).tolist()
    assert batch.extras["frames_per_video"].tolist() == per_video and len(per_video) == 3
    assert batch.extras["note"] == "not a tensor"
    moved = batch.to("meta")
    assert moved.extras["frames_per_video"].device.type == "meta"
    assert moved.boxes.device.type == "meta" and moved.extras["note"] == "not a tensor"
    assert batch.extras["frames_per_video"].device.type == "cpu"  # a copy, not in place
    evaluation = next(iter(trainer.evaluator.dataloader))
    assert "frames_per_video" in evaluation.extras


@pytest.fixture
def easg_batch(tmp_path: Path) -> EASGBatch:
    from m3sgg.data.easg import EASG
    from m3sgg.data.toy_easg import make_toy_easg

    dataset = EASG(make_toy_easg(tmp_path / "easg", clips=4, seed=0), "train")
    return collate_easg([dataset[0], dataset[1]])


def test_fields_are_checked(frames_field, easg_batch: EASGBatch):
    with pytest.raises(ValueError, match="already registered"):
        register_batch_field("action_genome", "note", lambda samples, batch: 1)
    with pytest.raises(ValueError, match="identifier"):
        register_batch_field("action_genome", "a-b", lambda samples, batch: 1)
    register_batch_field("action_genome", "boxes", lambda samples, batch: 1)
    collate = with_batch_fields(lambda samples: easg_batch, "action_genome")
    with pytest.raises(ValueError, match=r"batch fields \['boxes'\] exist already"):
        collate([])


def test_no_field_leaves_the_collate_untouched():
    def collate(samples):
        return samples

    assert with_batch_fields(collate, "no_such_dataset") is collate


def test_easg_batches_take_fields_too(easg_batch: EASGBatch):
    assert easg_batch.extras == {}
    collate = CollateWithFields(
        lambda samples: easg_batch,
        {"objects": lambda samples, batch: torch.tensor(batch.object_counts)},
    )
    batch = collate([])
    assert batch.extras["objects"].tolist() == np.diff(batch.object_offsets).tolist()
    assert batch.to("meta").extras["objects"].device.type == "meta"
    assert easg_batch.extras == {}  # with_extras made a copy

"""Fixtures for the data tests: hand-written Action Genome folders and the toy dataset."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from m3sgg.data.action_genome import clear_annotation_cache
from m3sgg.data.toy import make_toy_action_genome
from m3sgg.vocab import AG_OBJECT_CLASSES, AG_PREDICATES, squash

PERSON = np.array([[1.0, 2.0, 101.0, 202.0]], dtype=np.float32)


def ag_object(
    cls: str = "cup/glass/bottle",
    bbox: Any = (10.0, 20.0, 30.0, 40.0),
    att: Iterable[str] | None = ("looking_at",),
    spa: Iterable[str] | None = ("in_front_of",),
    con: Iterable[str] | None = ("holding",),
    *,
    split: str = "train",
    visible: bool = True,
    key: str = "",
) -> dict[str, Any]:
    """One entry of ``object_bbox_and_relationship.pkl`` in the release's layout."""
    if not visible:
        bbox = att = spa = con = None
    return {
        "class": cls,
        "bbox": bbox,
        "attention_relationship": None if att is None else list(att),
        "spatial_relationship": None if spa is None else list(spa),
        "contacting_relationship": None if con is None else list(con),
        "metadata": {"tag": key, "set": split},
        "visible": visible,
    }


def person_entry(boxes: Any = PERSON) -> dict[str, Any]:
    """One entry of ``person_bbox.pkl``; ``boxes`` (k, 4) xyxy, k = 0 for no person."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return {
        "bbox": boxes,
        "bbox_score": np.ones(len(boxes), np.float32),
        "bbox_size": (480, 270),
        "bbox_mode": "xyxy",
        "keypoints": None,
    }


def write_ag(
    root: Path,
    objects: dict[str, Any],
    persons: dict[str, Any] | None = None,
    *,
    class_lines: list[str] | None = None,
    predicate_lines: list[str] | None = None,
) -> Path:
    """Write ``root/annotations`` (default person: :data:`PERSON` on every frame)."""
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    if class_lines is None:
        class_lines = [squash(c) for c in AG_OBJECT_CLASSES[1:]]
    if predicate_lines is None:
        predicate_lines = [squash(p) for p in AG_PREDICATES]
    (ann / "object_classes.txt").write_text("\n".join(class_lines) + "\n")
    (ann / "relationship_classes.txt").write_text("\n".join(predicate_lines) + "\n")
    if persons is None:
        persons = {key: person_entry() for key in objects}
    with open(ann / "person_bbox.pkl", "wb") as fh:
        pickle.dump(persons, fh, protocol=4)
    with open(ann / "object_bbox_and_relationship.pkl", "wb") as fh:
        pickle.dump(objects, fh, protocol=4)
    return root


def video_frames(
    video: str, numbers: Iterable[int], make: Callable[[str], list] | None = None, **kw: Any
) -> dict[str, list]:
    """Frames ``video/<n>.png`` each holding ``make(key)`` (default: one visible object)."""
    out = {}
    for n in numbers:
        key = f"{video}/{n:06d}.png"
        out[key] = make(key) if make else [ag_object(key=key, **kw)]
    return out


class AGFiles:
    """The helpers above as one fixture object, writing under a test's ``tmp_path``."""

    PERSON = PERSON

    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "ag"

    obj = staticmethod(ag_object)
    person = staticmethod(person_entry)
    frames = staticmethod(video_frames)

    def write(
        self, objects: dict[str, Any], persons: dict[str, Any] | None = None, **kw: Any
    ) -> Path:
        return write_ag(self.root, objects, persons, **kw)


@pytest.fixture
def ag(tmp_path: Path) -> AGFiles:
    """Write hand-made Action Genome annotation folders: ``ag.write(objects, persons)``."""
    return AGFiles(tmp_path)


@pytest.fixture(autouse=True)
def _fresh_annotation_cache() -> Iterable[None]:
    """Each test parses its own files (the reader caches the last pickles it read)."""
    clear_annotation_cache()
    yield
    clear_annotation_cache()


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default toy dataset (24 videos, seed 0, with detections), written once per session."""
    return make_toy_action_genome(tmp_path_factory.mktemp("toy") / "ag")

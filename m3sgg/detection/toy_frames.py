"""Frame images for the toy dataset: coloured boxes whose colour is the class.

:func:`write_toy_frames` draws ``<root>/frames/<video>/<frame>.png`` for a toy Action Genome
(:func:`m3sgg.data.toy.make_toy_action_genome`), so that ``m3sgg extract-features`` can run on it.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m3sgg.data.action_genome import ANNOTATION_FILES
from m3sgg.data.safe_pickle import load_pickle
from m3sgg.errors import DataError
from m3sgg.vocab import AG_OBJECT_CLASSES

__all__ = ["class_color", "write_toy_frames"]

_PERSON = 1


def _pillow() -> Any:
    from m3sgg.detection.frames import _import_pillow  # at call time: no import cycle

    return _import_pillow()


def class_color(cls: int) -> tuple[int, int, int]:
    """A distinct RGB colour per Action Genome class index (1 person, 2..36 objects).

    Hues step by the golden ratio; saturation and brightness alternate, so neighbouring class
    indices differ strongly.
    """
    hue = (cls * 0.618033988749895) % 1.0
    saturation = (0.95, 0.6, 0.8)[cls % 3]
    value = (0.95, 0.65)[(cls // 3) % 2]
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def _draw_box(draw: Any, box: Sequence[float], cls: int, sx: float, sy: float) -> None:
    """Fill xyxy ``box`` (annotation pixels, scaled by ``sx``, ``sy``) with ``cls``'s colour."""
    x1, y1, x2, y2 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], fill=class_color(cls))


def write_toy_frames(
    root: str | os.PathLike[str],
    seed: int = 0,
    size: tuple[int, int] | None = None,
) -> int:
    """Render a PNG for every annotated frame of an Action Genome dataset (the toy one).

    Each image is a grey background with the person box and then the visible objects (in
    annotation order, later ones on top) drawn as filled rectangles whose colour encodes the
    class (:func:`class_color`), plus mild Gaussian pixel noise (std 6, seeded per frame), so
    features extracted from them predict the object classes. Existing images are replaced.

    Args:
        root: the dataset folder (``annotations/``); images go to ``<root>/frames/<key>``.
        seed: seed of the pixel noise; the same seed gives identical images.
        size: ``(width, height)`` of every image; default: each frame's annotated size
            (``bbox_size``). Boxes are scaled per axis, as :func:`extract_features` scales back.

    Returns:
        The number of images written.

    Raises:
        DataError: a missing or malformed annotation pickle.
        ValueError: ``size`` is not two positive ints.
    """
    if size is not None and (
        len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in size)
    ):
        raise ValueError(f"size must be (width, height) positive ints, got {size!r}")
    image_module = _pillow()
    from PIL import ImageDraw

    root = Path(root)
    ann = root / "annotations"
    persons = load_pickle(ann / ANNOTATION_FILES["person_bbox"])
    objects_path = ann / ANNOTATION_FILES["objects"]
    objects = load_pickle(objects_path)
    if not isinstance(persons, dict) or not isinstance(objects, dict):
        raise DataError(ann, "annotation pickles must hold dicts of frame key -> entry")
    class_index = {name: i for i, name in enumerate(AG_OBJECT_CLASSES)}
    written = 0
    for number, key in enumerate(sorted(objects)):
        entry = persons.get(key)
        if not isinstance(entry, dict) or "bbox_size" not in entry:
            raise DataError(
                ann / ANNOTATION_FILES["person_bbox"],
                "no entry with a bbox_size",
                field=f"frame {key!r}",
            )
        frame_w, frame_h = (float(v) for v in entry["bbox_size"])
        out_w, out_h = size if size is not None else (round(frame_w), round(frame_h))
        sx, sy = out_w / frame_w, out_h / frame_h
        image = image_module.new("RGB", (out_w, out_h), (128, 128, 128))
        draw = ImageDraw.Draw(image)
        bbox = entry.get("bbox")
        person = np.zeros((0, 4)) if bbox is None else np.asarray(bbox, np.float64).reshape(-1, 4)
        if len(person):
            _draw_box(draw, person[0], _PERSON, sx, sy)
        for j, obj in enumerate(objects[key]):
            if not (isinstance(obj, dict) and obj.get("visible") and obj.get("bbox") is not None):
                continue
            cls = class_index.get(obj.get("class"))  # type: ignore[arg-type]
            if cls is None:
                raise DataError(
                    objects_path,
                    f"unknown object class {obj.get('class')!r}",
                    field=f"frame {key!r} object {j} class",
                )
            x, y, w, h = (float(v) for v in obj["bbox"])
            _draw_box(draw, (x, y, x + w, y + h), cls, sx, sy)
        rng = np.random.default_rng([seed, number])
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 6.0, (out_h, out_w, 3))
        path = root / "frames" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        image_module.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
        written += 1
    return written

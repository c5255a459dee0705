"""The detections file of ``m3sgg extract-features --detections`` (sgdet with your own detector).

JSON or npz, boxes xyxy in the annotations' pixel coordinates, classes in Action Genome's 37-class
space; the layouts are documented in :mod:`m3sgg.detection.extraction`.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from m3sgg.errors import DataError
from m3sgg.vocab import NUM_AG_CLASSES

__all__ = ["Detections", "read_detections"]

_PERSON = 1


class Detections(NamedTuple):
    """One frame's detections, validated: ``(k, 4)`` xyxy boxes, ``(k,)`` scores, ``(k, 37)``
    class probabilities (float32)."""

    boxes: np.ndarray
    scores: np.ndarray
    class_dists: np.ndarray


def read_detections(path: str | os.PathLike[str]) -> dict[str, Detections]:
    """Read and validate a detections file in the JSON or npz layout of the module docstring.

    Raises:
        DataError: the file is missing, not JSON/npz, or a record is malformed; the message
            names the file, the frame and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "detections file not found")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _read_detections_json(path)
    if suffix == ".npz":
        return _read_detections_npz(path)
    raise DataError(path, f"unknown detections format {suffix!r}: expected .json or .npz")


def _read_detections_json(path: Path) -> dict[str, Detections]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"cannot read JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), dict):
        raise DataError(
            path, 'expected an object {"frames": {frame key: record}}', field="top level"
        )
    out: dict[str, Detections] = {}
    for key, record in data["frames"].items():
        where = f"frames[{key!r}]"
        if not isinstance(record, dict):
            raise DataError(path, f"expected an object, found {type(record).__name__}", field=where)
        for name in ("boxes", "scores"):
            if name not in record:
                raise DataError(path, "missing field", field=f"{where}.{name}")
        if "class_dists" not in record and "labels" not in record:
            raise DataError(path, "missing field (or 'labels')", field=f"{where}.class_dists")

        boxes = _json_array(path, where, record, "boxes", empty_shape=(0, 4))
        scores = _json_array(path, where, record, "scores", empty_shape=(0,))
        if "class_dists" in record:
            dists = _json_array(path, where, record, "class_dists", (0, NUM_AG_CLASSES))
            labels = None
        else:
            dists, labels = None, _json_array(path, where, record, "labels", (0,))
        out[str(key)] = _validated(path, where, boxes, scores, dists, labels)
    return out


def _json_array(
    path: Path, where: str, record: dict, name: str, empty_shape: tuple[int, ...]
) -> np.ndarray:
    """``record[name]`` as float64; an empty list becomes an empty array of ``empty_shape``."""
    try:
        array = np.asarray(record[name], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(path, f"not an array of numbers ({err})", field=f"{where}.{name}") from None
    return array.reshape(empty_shape) if array.size == 0 else array


def _read_detections_npz(path: Path) -> dict[str, Detections]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(path, f"cannot read npz ({err})") from None
    for name in ("keys", "box_offsets", "boxes", "scores"):
        if name not in arrays:
            raise DataError(path, "missing array", field=name)
    if "class_dists" not in arrays and "labels" not in arrays:
        raise DataError(path, "missing array (or 'labels')", field="class_dists")
    keys = arrays["keys"]
    if keys.ndim != 1 or keys.dtype.kind not in "US":
        raise DataError(
            path, f"expected a 1-d string array, found {keys.dtype} {keys.shape}", field="keys"
        )
    keys_list = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in keys.tolist()]
    offsets = arrays["box_offsets"]
    if offsets.dtype.kind not in "iu" or offsets.shape != (len(keys_list) + 1,):
        raise DataError(
            path,
            f"expected {len(keys_list) + 1} integers (len(keys) + 1), found {offsets.dtype} "
            f"{offsets.shape}",
            field="box_offsets",
        )
    offsets = offsets.astype(np.int64)
    n = int(arrays["boxes"].shape[0]) if arrays["boxes"].ndim else -1
    if offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) < 0).any():
        raise DataError(
            path,
            f"must start at 0, never decrease and end at the number of boxes ({n})",
            field="box_offsets",
        )
    dists = arrays.get("class_dists")
    labels = None if dists is not None else arrays["labels"]
    numeric = {"boxes": arrays["boxes"], "scores": arrays["scores"]}
    numeric["class_dists" if dists is not None else "labels"] = (
        dists if dists is not None else labels
    )
    for name, value in numeric.items():
        if value.dtype.kind not in "fiu":
            raise DataError(path, f"dtype {value.dtype} is not numeric", field=name)
    # Validate once for the whole file, then hand out per-frame views.
    flat = _validated(
        path,
        "arrays",
        arrays["boxes"].astype(np.float64),
        arrays["scores"].astype(np.float64),
        None if dists is None else dists.astype(np.float64),
        None if labels is None else labels.astype(np.float64),
    )
    out: dict[str, Detections] = {}
    for f, key in enumerate(keys_list):
        if key in out:
            raise DataError(path, f"duplicate frame key {key!r}", field="keys")
        rows = slice(int(offsets[f]), int(offsets[f + 1]))
        out[key] = Detections(flat.boxes[rows], flat.scores[rows], flat.class_dists[rows])
    return out


def _validated(
    path: Path,
    where: str,
    boxes: np.ndarray,
    scores: np.ndarray,
    dists: np.ndarray | None,
    labels: np.ndarray | None,
) -> Detections:
    """Shapes, finiteness, box order, probability range; labels → one-hot distributions."""
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(path, f"shape {boxes.shape}, expected (k, 4)", field=f"{where}.boxes")
    k = boxes.shape[0]
    if scores.shape != (k,):
        raise DataError(path, f"shape {scores.shape}, expected ({k},)", field=f"{where}.scores")
    for name, value in (("boxes", boxes), ("scores", scores)):
        if not np.isfinite(value).all():
            raise DataError(path, "non-finite value", field=f"{where}.{name}")
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            path,
            f"box {i} {boxes[i].tolist()} is not xyxy (x2 < x1 or y2 < y1)",
            field=f"{where}.boxes",
        )
    if dists is not None:
        if dists.shape != (k, NUM_AG_CLASSES):
            raise DataError(
                path,
                f"shape {dists.shape}, expected ({k}, {NUM_AG_CLASSES}): Action Genome's "
                "classes with background (0) and person (1)",
                field=f"{where}.class_dists",
            )
        if not np.isfinite(dists).all() or (dists.size and (dists.min() < 0 or dists.max() > 1)):
            raise DataError(
                path,
                "class probabilities must be finite and in [0, 1]",
                field=f"{where}.class_dists",
            )
    else:
        assert labels is not None
        if labels.shape != (k,):
            raise DataError(path, f"shape {labels.shape}, expected ({k},)", field=f"{where}.labels")
        if ((labels != np.round(labels)) | (labels < 1) | (labels >= NUM_AG_CLASSES)).any():
            raise DataError(
                path,
                f"labels must be class indices in 1..{NUM_AG_CLASSES - 1}",
                field=f"{where}.labels",
            )
        dists = np.zeros((k, NUM_AG_CLASSES))
        dists[np.arange(k), labels.astype(np.int64)] = 1.0
    return Detections(boxes.astype(np.float32), scores.astype(np.float32), dists.astype(np.float32))


def _arrange(det: Detections) -> tuple[np.ndarray, np.ndarray]:
    """Row order of the ``det`` section (person first) and its pairs (person, each other)."""
    k = det.boxes.shape[0]
    if k == 0:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
    labels = np.argmax(det.class_dists[:, 1:], axis=1) + 1
    persons = np.flatnonzero(labels == _PERSON)
    if persons.size == 0:
        return np.arange(k, dtype=np.int64), np.zeros((0, 2), np.int64)
    person = int(persons[np.argmax(det.scores[persons])])
    order = np.concatenate([[person], np.delete(np.arange(k), person)]).astype(np.int64)
    others = np.arange(1, k, dtype=np.int64)
    return order, np.stack([np.zeros_like(others), others], axis=1)

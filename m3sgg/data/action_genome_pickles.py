"""Action Genome's two annotation pickles, parsed in one pass into flat arrays, and cached.

``object_bbox_and_relationship.pkl`` and ``person_bbox.pkl`` (layout and quirks: the module
docstring of :mod:`m3sgg.data.action_genome`) become one :class:`ParsedAnnotations` holding
every annotated frame of both splits; :class:`~m3sgg.data.action_genome.ActionGenome` filters
and slices it per split. The pickles are read through :func:`~m3sgg.data.safe_pickle.load_pickle`,
one after the other (only one is in memory at a time), with the cyclic garbage collector paused.
The result is kept in a one-entry cache keyed by the files' path, size and modification time, so
a train and a test reader of the same root parse once. A malformed record is a
:class:`~m3sgg.errors.DataError` naming the pickle, the frame, the object and the field.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3sgg.data.safe_pickle import load_pickle
from m3sgg.errors import DataError
from m3sgg.vocab import (
    AG_OBJECT_CLASSES,
    AG_PREDICATES,
    PREDICATE_GROUPS,
    PREDICATE_OFFSETS,
    squash,
)

__all__ = ["SPLITS", "ParsedAnnotations", "clear_annotation_cache", "parse_annotations"]

#: The splits a frame's ``metadata["set"]`` names.
SPLITS: tuple[str, ...] = ("train", "test")

_GROUP_FIELDS = tuple(f"{group}_relationship" for group in PREDICATE_GROUPS)

# Name -> index tables. Object classes exclude __background__ and person: neither is an object.
_CLASS_INDEX: dict[str, int] = {}
for _i, _name in enumerate(AG_OBJECT_CLASSES[2:], start=2):
    _CLASS_INDEX[_name] = _i
    _CLASS_INDEX[squash(_name)] = _i
_GROUP_TABLES: list[dict[str, int]] = []
for _group, _end in zip(PREDICATE_GROUPS, (3, 9, 26), strict=True):
    _start = PREDICATE_OFFSETS[_group]
    _table: dict[str, int] = {}
    for _i in range(_start, _end):
        _table[AG_PREDICATES[_i]] = _i
        _table[squash(AG_PREDICATES[_i])] = _i
    _GROUP_TABLES.append(_table)
_SPLIT_CODE = {name: code for code, name in enumerate(SPLITS)}


@dataclass(frozen=True, eq=False)
class ParsedAnnotations:
    """Every annotated frame of both splits, frames sorted by (video, key); objects by frame."""

    keys: list[str]
    videos: list[str]  # video id per frame
    split: np.ndarray  # int8 (F,): index into SPLITS, -1 when the frame has no objects
    has_person: np.ndarray  # bool (F,)
    person_boxes: np.ndarray  # float32 (F, 4) xyxy, zeros without a person
    frame_size: np.ndarray  # float64 (F, 2) annotated (height, width), NaN when absent
    obj_frame: np.ndarray  # int64 (O,) visible objects only
    obj_rank: np.ndarray  # int32 (O,) index among the frame's visible objects
    obj_class: np.ndarray  # int64 (O,)
    obj_boxes: np.ndarray  # float64 (O, 4) xyxy
    obj_wh: np.ndarray  # float64 (O, 2) width, height of the annotated xywh box
    rel_count: np.ndarray  # int64 (O,)
    rel_pred: np.ndarray  # int64 (R,) global predicate ids, grouped by object


_cache_lock = threading.Lock()
_cache: dict[str, Any] = {"key": None, "value": None}


def clear_annotation_cache() -> None:
    """Forget the pickles parsed last (they are otherwise kept for the next split's reader)."""
    with _cache_lock:
        _cache["key"] = None
        _cache["value"] = None


def _file_stamp(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def parse_annotations(person_path: Path, objects_path: Path) -> ParsedAnnotations:
    """Both pickles parsed, or the cached result when neither file changed since the last call.

    Raises:
        DataError: a file is missing or a record is malformed (naming the frame and field).
    """
    key = (_file_stamp(person_path), _file_stamp(objects_path))
    with _cache_lock:
        if _cache["key"] == key:
            return _cache["value"]
        _cache["key"] = _cache["value"] = None
    parsed = _parse_without_gc(person_path, objects_path)
    with _cache_lock:
        _cache["key"], _cache["value"] = key, parsed
    return parsed


def _parse_without_gc(person_path: Path, objects_path: Path) -> ParsedAnnotations:
    """:func:`_parse` with the cyclic garbage collector paused: unpickling a million small dicts
    otherwise triggers it over and over (5.7 s instead of 1.2 s for the full object pickle)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse(person_path, objects_path)
    finally:
        if enabled:
            gc.enable()


def _frame_sort_key(key: str) -> tuple[str, str]:
    video, _, frame = key.partition("/")
    return video, frame


def _parse(person_path: Path, objects_path: Path) -> ParsedAnnotations:
    """Both pickles -> :class:`ParsedAnnotations`, one after the other (only one is in memory at
    a time)."""
    objects = load_pickle(objects_path)
    if not isinstance(objects, dict):
        raise DataError(
            objects_path,
            f"expected a dict of frame key -> object list, found {type(objects).__name__}",
            field="top level",
        )
    for key in objects:
        if type(key) is not str or "/" not in key:
            raise DataError(
                objects_path, "frame keys must be strings '<video>/<frame>'", field=f"frame {key!r}"
            )
    keys = sorted(objects, key=_frame_sort_key)
    parsed = _parse_objects(objects_path, objects, keys)
    del objects
    persons = load_pickle(person_path)
    if not isinstance(persons, dict):
        raise DataError(
            person_path,
            f"expected a dict of frame key -> person entry, found {type(persons).__name__}",
            field="top level",
        )
    has_person, person_boxes = _parse_persons(person_path, persons, keys)
    frame_size = _frame_sizes(persons, keys)
    return ParsedAnnotations(
        keys=keys,
        videos=[k.partition("/")[0] for k in keys],
        has_person=has_person,
        person_boxes=person_boxes,
        frame_size=frame_size,
        **parsed,
    )


def _parse_objects(path: Path, objects: dict, keys: list[str]) -> dict[str, np.ndarray]:
    """The single pass over the object pickle: visible objects and their relations as arrays."""
    split_codes: list[int] = []
    frame_counts: list[int] = []  # visible objects per frame
    obj_class: list[int] = []
    obj_box: list[Any] = []
    rel_end: list[int] = []  # end of each object's relations in rel_pred
    rel_pred: list[int] = []
    add_split, add_count = split_codes.append, frame_counts.append
    add_class, add_box, add_end = obj_class.append, obj_box.append, rel_end.append
    add_pred = rel_pred.append
    att_table, spa_table, con_table = _GROUP_TABLES
    att_field, spa_field, con_field = _GROUP_FIELDS
    class_index = _CLASS_INDEX
    split_code = _SPLIT_CODE
    key = ""
    try:
        for key in keys:
            objs = objects[key]
            if type(objs) is not list:
                raise TypeError
            add_split(split_code[objs[0]["metadata"]["set"]] if objs else -1)
            count = 0
            for obj in objs:
                if not obj["visible"]:
                    continue
                bbox = obj["bbox"]
                if bbox is None:
                    raise TypeError
                add_class(class_index[obj["class"]])
                add_box(bbox)
                count += 1
                att = obj[att_field]
                spa = obj[spa_field]
                con = obj[con_field]
                if type(att) is not list or type(spa) is not list or type(con) is not list:
                    raise TypeError
                for name in att:
                    add_pred(att_table[name])
                for name in spa:
                    add_pred(spa_table[name])
                for name in con:
                    add_pred(con_table[name])
                add_end(len(rel_pred))
            add_count(count)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
        _diagnose_frame(path, key, objects.get(key))
        raise DataError(
            path, f"malformed record ({type(err).__name__}: {err})", field=f"frame {key!r}"
        ) from err

    counts = np.asarray(frame_counts, dtype=np.int64)
    obj_frame = np.repeat(np.arange(len(keys), dtype=np.int64), counts)
    obj_rank = np.arange(len(obj_frame), dtype=np.int64) - np.repeat(
        np.cumsum(counts) - counts, counts
    )
    xywh = _object_boxes(path, keys, objects, obj_frame, obj_rank, obj_box)
    del obj_box
    bad = ~np.isfinite(xywh).all(axis=1) | (xywh[:, 2] < 0) | (xywh[:, 3] < 0)
    if bad.any():
        o = int(np.argmax(bad))
        raise DataError(
            path,
            f"invalid xywh box {xywh[o].tolist()} (non-finite, or negative width/height)",
            field=_object_field(keys, objects, obj_frame, obj_rank, o) + " bbox",
        )
    boxes = xywh.copy()
    boxes[:, 2:] += boxes[:, :2]
    return {
        "split": np.asarray(split_codes, dtype=np.int8),
        "obj_frame": obj_frame,
        "obj_rank": obj_rank.astype(np.int32),
        "obj_class": np.asarray(obj_class, dtype=np.int64),
        "obj_boxes": boxes,
        "obj_wh": xywh[:, 2:].copy(),
        "rel_count": np.diff(np.asarray(rel_end, dtype=np.int64), prepend=0),
        "rel_pred": np.asarray(rel_pred, dtype=np.int64),
    }


def _object_field(
    keys: list[str], objects: dict, obj_frame: np.ndarray, obj_rank: np.ndarray, o: int
) -> str:
    """``frame '<key>' object <j>`` for visible object ``o`` (``j`` counts invisible ones too)."""
    key = keys[int(obj_frame[o])]
    visible = [j for j, obj in enumerate(objects[key]) if obj["visible"]]
    return f"frame {key!r} object {visible[int(obj_rank[o])]}"


def _parse_persons(path: Path, persons: dict, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Person box (first row) of every frame in ``keys``: (has_person bool, float32 (F, 4))."""
    has_person: list[bool] = []
    person_rows: list[np.ndarray] = []
    key = ""
    try:
        for key in keys:
            person = persons[key]["bbox"]
            if type(person) is not np.ndarray or person.ndim != 2 or person.shape[1] != 4:
                person = _person_array(path, key, person)
            if person.shape[0]:
                person_rows.append(person[:1])
                has_person.append(True)
            else:
                has_person.append(False)
    except (KeyError, TypeError, IndexError) as err:
        if key not in persons:
            raise DataError(
                path, "frame listed in the object annotations has no entry", field=f"frame {key!r}"
            ) from None
        raise DataError(
            path,
            f"expected a dict with 'bbox', found {_describe(persons[key])}",
            field=f"frame {key!r}",
        ) from err

    n_frames = len(keys)
    person_boxes = np.zeros((n_frames, 4), dtype=np.float32)
    has_person_arr = np.asarray(has_person, dtype=bool).reshape(n_frames)
    if person_rows:
        person_boxes[has_person_arr] = np.concatenate(person_rows).astype(np.float32, copy=False)
    bad = (
        ~np.isfinite(person_boxes).all(axis=1)
        | (person_boxes[:, 2] < person_boxes[:, 0])
        | (person_boxes[:, 3] < person_boxes[:, 1])
    )
    if bad.any():
        f = int(np.argmax(bad))
        raise DataError(
            path,
            f"invalid xyxy person box {person_boxes[f].tolist()} "
            "(non-finite, or x2 < x1 / y2 < y1)",
            field=f"frame {keys[f]!r} bbox",
        )
    return has_person_arr, person_boxes


def _frame_sizes(persons: dict, keys: list[str]) -> np.ndarray:
    """float64 ``(F, 2)`` (height, width) from each frame's ``bbox_size`` ``(w, h)``; NaN where
    it is absent or not two positive numbers (only models that need it, DSG-DETR's tracker,
    complain)."""
    sizes = np.full((len(keys), 2), np.nan)
    for f, key in enumerate(keys):
        size = persons[key].get("bbox_size")
        try:
            w, h = (float(v) for v in size)
        except (TypeError, ValueError):
            continue
        if w > 0 and h > 0:
            sizes[f] = (h, w)
    return sizes


def _person_array(path: Path, key: str, value: Any) -> np.ndarray:
    """A person ``bbox`` that is not already a (k, 4) array: convert it or say what is wrong."""
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim not in (1, 2) or (arr.shape[-1] != 4 and arr.size != 0):
        raise DataError(
            path,
            f"expected a (k, 4) xyxy array, found {_describe(value)}",
            field=f"frame {key!r} bbox",
        )
    return arr.reshape(-1, 4)


def _object_boxes(
    path: Path,
    keys: list[str],
    objects: dict,
    obj_frame: np.ndarray,
    obj_rank: np.ndarray,
    boxes: list[Any],
) -> np.ndarray:
    """The collected xywh boxes as one float64 (O, 4) array; names the first malformed one."""
    try:
        arr = np.array(boxes, dtype=np.float64)
        if arr.shape == (len(boxes), 4) or (not boxes and arr.size == 0):
            return arr.reshape(-1, 4)
    except (TypeError, ValueError):
        pass
    for o, box in enumerate(boxes):
        try:
            ok = np.asarray(box, dtype=np.float64).shape == (4,)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(
                path,
                f"expected an (x, y, w, h) box, found {_describe(box)}",
                field=_object_field(keys, objects, obj_frame, obj_rank, o) + " bbox",
            )
    raise DataError(path, "object boxes are not all (x, y, w, h)", field="bbox")


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _diagnose_frame(objects_path: Path, key: str, objs: Any) -> None:
    """Raise a precise DataError for a frame the fast loop choked on (returns if none found)."""
    frame = f"frame {key!r}"
    if not isinstance(objs, list):
        raise DataError(
            objects_path, f"expected a list of objects, found {_describe(objs)}", field=frame
        )
    for j, obj in enumerate(objs):
        where = f"{frame} object {j}"
        if not isinstance(obj, dict):
            raise DataError(
                objects_path, f"expected an object dict, found {_describe(obj)}", field=where
            )
        if j == 0:
            meta = obj.get("metadata")
            if not isinstance(meta, dict) or "set" not in meta:
                raise DataError(
                    objects_path,
                    "missing metadata {'set': 'train'|'test'}",
                    field=f"{where} metadata",
                )
            if meta["set"] not in _SPLIT_CODE:
                raise DataError(
                    objects_path,
                    f"split must be 'train' or 'test', found {meta['set']!r}",
                    field=f"{where} metadata.set",
                )
        if "visible" not in obj:
            raise DataError(objects_path, "missing field", field=f"{where} visible")
        if not obj["visible"]:
            continue
        if obj.get("bbox") is None:
            raise DataError(objects_path, "visible object without a box", field=f"{where} bbox")
        if "class" not in obj:
            raise DataError(objects_path, "missing field", field=f"{where} class")
        name = obj["class"]
        if not isinstance(name, str) or name not in _CLASS_INDEX:
            hint = " (the person is not an object)" if name == "person" else ""
            raise DataError(
                objects_path, f"unknown object class {name!r}{hint}", field=f"{where} class"
            )
        for field, table in zip(_GROUP_FIELDS, _GROUP_TABLES, strict=True):
            if field not in obj:
                raise DataError(objects_path, "missing field", field=f"{where} {field}")
            labels = obj[field]
            if not isinstance(labels, list):
                raise DataError(
                    objects_path,
                    f"expected a list of predicate names, found {_describe(labels)}",
                    field=f"{where} {field}",
                )
            for label in labels:
                if not isinstance(label, str) or label not in table:
                    group = field.removesuffix("_relationship")
                    raise DataError(
                        objects_path,
                        f"unknown {group} predicate {label!r}",
                        field=f"{where} {field}",
                    )

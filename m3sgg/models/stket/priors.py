"""STKET's knowledge priors: counted from training annotations, read and written as JSON.

STKET (Pu et al., TIP 2024) starts two learnable tables from statistics of the training split:

- ``initial`` ``[37, 26]``: for object class ``o``, the fraction of class-``o`` instances (visible
  objects of kept training frames) that carry each of the 26 predicates (attention 0..2, spatial
  3..8, contacting 9..25). An instance counts once per predicate.
- ``specific`` ``[37, 17, 26]``: for object class ``o`` and contacting relation ``c``, a predicate
  distribution conditioned on ``c``. The original repository ships this table
  (``data/TrainPrior.json``, removed from its history in commit 302baed) but no counting script,
  and its rows are not plain count ratios (their denominators exceed the number of instances
  carrying ``c``). m3sgg counts a documented transition rule instead: for every instance of class
  ``o`` carrying ``c`` in a kept frame, the class-``o`` instances of the video's next kept frame
  are its successors, and ``specific[o, c, p]`` is the fraction of successors (pooled over the
  split) that carry ``p``; zero when ``c`` has no successor. To reproduce the published model
  exactly, import the original file (:func:`load_priors` reads it as it is).

The file format is the original's, so either side reads the other's file: a JSON object keyed by
the object class index (``"2"`` .. ``"36"``; classes without instances are left out)::

    {"33": {"obj_cls_name": "television",
            "c_rel_name": ["holding", ...],      # names of c_rel_idx
            "c_rel_idx": [5, 6, ...],           # contacting indices (0..16) seen with the class
            "initial_prior": [26 floats],
            "specific_prior": [[26 floats], ...]}, ...}   # one row per c_rel_idx entry

``specific`` rows of contacting relations not listed for a class are zero.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3sgg.data.structures import VideoGT
from m3sgg.errors import DataError, WriteError
from m3sgg.vocab import (
    AG_CONTACTING,
    AG_OBJECT_CLASSES,
    GROUP_SIZES,
    NUM_AG_CLASSES,
    NUM_AG_PREDICATES,
    PREDICATE_OFFSETS,
)

__all__ = ["STKETPriors", "count_priors", "load_priors", "save_priors"]

_NUM_CONTACTING = GROUP_SIZES["contacting"]
_CONTACT_OFFSET = PREDICATE_OFFSETS["contacting"]


@dataclass(frozen=True, eq=False)
class STKETPriors:
    """The two prior tables and the contacting relations listed per class.

    Attributes:
        initial: float64 ``[37, 26]`` (rows of absent classes, background and person are zero).
        specific: float64 ``[37, 17, 26]``.
        contacts: per class (37 entries), the contacting indices the file lists (``c_rel_idx``).
        present: per class, whether the file has an entry for it.
    """

    initial: np.ndarray
    specific: np.ndarray
    contacts: tuple[tuple[int, ...], ...]
    present: tuple[bool, ...]

    def to_json(self) -> dict[str, Any]:
        """The original's layout (see the module docstring)."""
        out: dict[str, Any] = {}
        for o in range(NUM_AG_CLASSES):
            if not self.present[o]:
                continue
            contacts = list(self.contacts[o])
            out[str(o)] = {
                "obj_cls_name": AG_OBJECT_CLASSES[o],
                "c_rel_name": [AG_CONTACTING[c] for c in contacts],
                "c_rel_idx": contacts,
                "initial_prior": [float(x) for x in self.initial[o]],
                "specific_prior": [[float(x) for x in self.specific[o, c]] for c in contacts],
            }
        return out


def _instance_predicates(gt: VideoGT) -> np.ndarray:
    """bool ``[O, 26]``: object ``i`` carries predicate ``p`` (duplicates count once)."""
    hot = np.zeros((gt.num_objects, NUM_AG_PREDICATES), dtype=bool)
    hot[gt.rel_obj, gt.rel_pred] = True
    return hot


def count_priors(videos: Iterable[VideoGT]) -> STKETPriors:
    """Count the priors over ``videos`` (the training split after the protocol's filtering).

    ``initial`` is the original's rule; ``specific`` is m3sgg's transition rule (module
    docstring). Classes 0 (background) and 1 (person) never appear as objects.
    """
    instances = np.zeros(NUM_AG_CLASSES, dtype=np.int64)
    carrying = np.zeros((NUM_AG_CLASSES, NUM_AG_PREDICATES), dtype=np.int64)
    successors = np.zeros((NUM_AG_CLASSES, _NUM_CONTACTING), dtype=np.int64)
    following = np.zeros((NUM_AG_CLASSES, _NUM_CONTACTING, NUM_AG_PREDICATES), dtype=np.int64)
    for gt in videos:
        if gt.num_objects == 0:
            continue
        hot = _instance_predicates(gt)
        cls = gt.obj_class
        instances += np.bincount(cls, minlength=NUM_AG_CLASSES)
        np.add.at(carrying, cls, hot.astype(np.int64))
        # (i, j): j is a same-class instance in the frame right after i's
        i, j = np.nonzero(
            (gt.obj_frame[None, :] == gt.obj_frame[:, None] + 1) & (cls[None, :] == cls[:, None])
        )
        if i.size == 0:
            continue
        contact = hot[i, _CONTACT_OFFSET:]  # [pairs, 17]: the contacts of the earlier instance
        pi, c = np.nonzero(contact)
        np.add.at(successors, (cls[i[pi]], c), 1)
        np.add.at(following, (cls[i[pi]], c), hot[j[pi]].astype(np.int64))
    initial = np.divide(
        carrying, instances[:, None], out=np.zeros(carrying.shape), where=instances[:, None] > 0
    )
    specific = np.divide(
        following,
        successors[:, :, None],
        out=np.zeros(following.shape),
        where=successors[:, :, None] > 0,
    )
    contacts = tuple(
        tuple(int(c) for c in np.flatnonzero(carrying[o, _CONTACT_OFFSET:] > 0))
        for o in range(NUM_AG_CLASSES)
    )
    present = tuple(bool(n > 0) for n in instances)
    return STKETPriors(initial, specific, contacts, present)


def _numbers(path: Path, value: Any, length: int, field: str) -> np.ndarray:
    if not isinstance(value, list) or len(value) != length:
        raise DataError(path, f"expected a list of {length} numbers", field=field)
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise DataError(path, "expected numbers only", field=field)
    array = np.asarray(value, dtype=np.float64)
    if not np.isfinite(array).all():
        raise DataError(path, "holds a value that is not finite", field=field)
    return array


def load_priors(path: str | os.PathLike[str]) -> STKETPriors:
    """Read a prior file (ours or the original's ``TrainPrior.json``; the layout is the same).

    Raises:
        DataError: the file is missing, not JSON, or an entry is malformed (the message names
            the class key and the field).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(path, "prior file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"not a JSON prior file ({err})") from None
    if not isinstance(data, dict):
        raise DataError(path, "expected a JSON object keyed by object class index")
    initial = np.zeros((NUM_AG_CLASSES, NUM_AG_PREDICATES))
    specific = np.zeros((NUM_AG_CLASSES, _NUM_CONTACTING, NUM_AG_PREDICATES))
    contacts: list[tuple[int, ...]] = [()] * NUM_AG_CLASSES
    present = [False] * NUM_AG_CLASSES
    for key, entry in data.items():
        if not (isinstance(key, str) and key.isdigit() and 0 <= int(key) < NUM_AG_CLASSES):
            raise DataError(path, f"not an object class index 0..{NUM_AG_CLASSES - 1}", field=key)
        o = int(key)
        if not isinstance(entry, dict):
            raise DataError(path, "expected an object", field=key)
        for name in ("c_rel_idx", "initial_prior", "specific_prior"):
            if name not in entry:
                raise DataError(path, "missing", field=f"{key}.{name}")
        idx = entry["c_rel_idx"]
        if not isinstance(idx, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < _NUM_CONTACTING for c in idx
        ):
            raise DataError(
                path,
                f"expected contacting indices 0..{_NUM_CONTACTING - 1}",
                field=f"{key}.c_rel_idx",
            )
        if len(set(idx)) != len(idx):
            raise DataError(path, "repeats an index", field=f"{key}.c_rel_idx")
        initial[o] = _numbers(
            path, entry["initial_prior"], NUM_AG_PREDICATES, f"{key}.initial_prior"
        )
        rows = entry["specific_prior"]
        if not isinstance(rows, list) or len(rows) != len(idx):
            raise DataError(
                path, f"expected {len(idx)} rows (one per c_rel_idx)", field=f"{key}.specific_prior"
            )
        for n, (c, row) in enumerate(zip(idx, rows, strict=True)):
            specific[o, c] = _numbers(path, row, NUM_AG_PREDICATES, f"{key}.specific_prior[{n}]")
        contacts[o] = tuple(idx)
        present[o] = True
    return STKETPriors(initial, specific, tuple(contacts), tuple(present))


def save_priors(priors: STKETPriors, path: str | os.PathLike[str]) -> Path:
    """Write ``priors`` as JSON, atomically (a temporary file renamed into place).

    Raises:
        WriteError: the file could not be written; an existing file at ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(priors.to_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteError(
            f"{path}: could not write the prior file ({err.strerror or err})"
        ) from None
    return path

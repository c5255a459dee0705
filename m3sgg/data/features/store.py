"""Reading a store: :class:`FeatureStore` validates it at open and memory-maps its arrays."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m3sgg.data.features.layout import (
    _FRAMES,
    _MANIFEST,
    FEATURE_DTYPES,
    FORMAT,
    SECTIONS,
    UNION_DIAGONAL,
    FrameFeatures,
    VideoFeatures,
    _array_specs,
    _is_int,
    _sha256_file,
    union_counts,
)
from m3sgg.errors import DataError


class FeatureStore:
    """Read a ``m3sgg-features/2`` store through memory maps.

    Opening validates the store (cheaply: sizes, dims, offsets, union counts and pair indices,
    without reading the features) and raises :class:`~m3sgg.errors.DataError` naming the file and
    field of the first problem. Frame keys map to rows through a dict built once. Memory maps
    open lazily and are not pickled (a store sent to a DataLoader worker reopens its files there).

    Args:
        path: the store folder.
        verify: also check the sha256 of every file (reads the whole store).

    Attributes:
        path, manifest, object_dim, union_channels, union_size, num_classes, dtype (storage dtype
        of the features), keys (frame keys in row order), sections (those present).

    Example::

        store = FeatureStore("feats")
        store.require(dataset.frame_keys, source="annotations/frame_list.txt")
        video = store.video(keys_of_one_video, section="gt")
    """

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = False):
        self.path = Path(path)
        self._arrays: dict[tuple[str, str], np.ndarray] = {}
        if not self.path.is_dir():
            what = "is not a folder" if self.path.exists() else "does not exist"
            raise DataError(self.path, f"feature store {what}")
        self.manifest = self._read_manifest()
        m = self.manifest
        self.object_dim: int = m["object_dim"]
        self.union_channels: int = m["union_channels"]
        self.union_size: int = m["union_size"]
        self.num_classes: int = m["num_classes"]
        self.dtype: str = m["dtype"]
        self.sections: tuple[str, ...] = tuple(s for s in SECTIONS if s in m["sections"])
        self.keys: tuple[str, ...] = self._read_frames(m["num_frames"])
        self._row = {key: row for row, key in enumerate(self.keys)}
        self._specs: dict[str, dict[str, tuple[tuple[int, ...], np.dtype, str]]] = {}
        self._offsets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for section in self.sections:
            counts = m["sections"][section]
            self._specs[section] = _array_specs(
                section,
                num_frames=len(self.keys),
                num_boxes=counts["boxes"],
                num_pairs=counts["pairs"],
                num_unions=counts["unions"],
                object_dim=self.object_dim,
                union_channels=self.union_channels,
                union_size=self.union_size,
                num_classes=self.num_classes,
                class_dists=counts["class_dists"],
                dtype=self.dtype,
            )
            for name, spec in self._specs[section].items():
                self._check_file(section, name, *spec)
        for section in self.sections:
            box_off = self._check_offsets(section, "box_offsets")
            pair_off = self._check_offsets(section, "pair_offsets")
            union_off = np.concatenate(
                [[0], np.cumsum(union_counts(np.diff(box_off), UNION_DIAGONAL[section]))]
            ).astype(np.int64)
            if int(union_off[-1]) != m["sections"][section]["unions"]:
                raise DataError(
                    self.path / _MANIFEST,
                    f"expected {int(union_off[-1])} union rows from {section}/box_offsets.bin "
                    f"(one per box pair{' and box' if UNION_DIAGONAL[section] else ''} of each "
                    f"frame), got {m['sections'][section]['unions']}",
                    field=f"sections.{section}.unions",
                )
            self._offsets[section] = (box_off, pair_off, union_off)
            self._check_pairs(section)
        if verify:
            self.verify()

    # -- opening and validation ---------------------------------------------------------------

    @property
    def has_detections(self) -> bool:
        """Whether the store has the ``det`` section (sgdet evaluation)."""
        return "det" in self.sections

    def has_class_dists(self, section: str = "gt") -> bool:
        """Whether ``section`` carries the detector's class distributions."""
        return section in self.sections and "class_dists" in self._specs[section]

    def _read_manifest(self) -> dict[str, Any]:
        path = self.path / _MANIFEST
        if not path.is_file():
            raise DataError(
                path,
                "missing: not a feature store (expected format "
                f"{FORMAT!r}, see docs/feature_store.md)",
            )
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(path, f"cannot parse: {err}") from None
        if not isinstance(m, dict):
            raise DataError(path, f"expected a JSON object, got {type(m).__name__}")
        if m.get("format") != FORMAT:
            hint = ""
            if m.get("format") == "m3sgg-features/1":
                hint = " (a format-1 store has no union maps: extract the features again)"
            raise DataError(
                path, f"expected {FORMAT!r}, got {m.get('format')!r}{hint}", field="format"
            )

        def need(field: str, ok: bool, wanted: str) -> None:
            if not ok:
                got = m.get(field, "<missing>")
                raise DataError(path, f"expected {wanted}, got {got!r}", field=field)

        for field in ("object_dim", "union_channels", "union_size"):
            need(field, _is_int(m.get(field)) and m[field] > 0, "a positive int")
        need("num_classes", _is_int(m.get("num_classes")) and m["num_classes"] >= 2, "an int >= 2")
        need("dtype", m.get("dtype") in FEATURE_DTYPES, f"one of {FEATURE_DTYPES}")
        need(
            "num_frames",
            _is_int(m.get("num_frames")) and m["num_frames"] >= 0,
            "a non-negative int",
        )
        need("files", isinstance(m.get("files"), dict), "an object")
        sections = m.get("sections")
        need(
            "sections",
            isinstance(sections, dict) and "gt" in sections and set(sections) <= set(SECTIONS),
            f'an object with "gt" and optionally {list(SECTIONS[1:])}',
        )
        for section in sections:
            counts = sections[section]
            for count in ("boxes", "pairs", "unions"):
                value = counts.get(count) if isinstance(counts, dict) else None
                if not _is_int(value) or value < 0:
                    raise DataError(
                        path,
                        f"expected a non-negative int, got {value!r}",
                        field=f"sections.{section}.{count}",
                    )
            if counts.get("union_diagonal") is not UNION_DIAGONAL[section]:
                raise DataError(
                    path,
                    f"expected {str(UNION_DIAGONAL[section]).lower()} (the format's rule), "
                    f"got {counts.get('union_diagonal')!r}",
                    field=f"sections.{section}.union_diagonal",
                )
            dists = counts.get("class_dists")
            if not isinstance(dists, bool) or (section != "gt" and not dists):
                raise DataError(
                    path,
                    f"expected {'a bool' if section == 'gt' else 'true'}, got {dists!r}",
                    field=f"sections.{section}.class_dists",
                )
        return m

    def _read_frames(self, num_frames: int) -> tuple[str, ...]:
        path = self.path / _FRAMES
        if not path.is_file():
            raise DataError(path, "missing (listed by the format)")
        try:
            keys = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(path, f"cannot parse: {err}") from None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise DataError(path, "expected a JSON list of frame-key strings")
        if len(keys) != num_frames:
            raise DataError(
                path, f"holds {len(keys)} keys, manifest num_frames={num_frames}", field="length"
            )
        if len(set(keys)) != len(keys):
            seen: set[str] = set()
            for i, key in enumerate(keys):
                if key in seen:
                    raise DataError(path, f"duplicate frame key {key!r}", field=f"[{i}]")
                seen.add(key)
        return tuple(keys)

    def _check_file(
        self, section: str, name: str, shape: tuple[int, ...], dtype: np.dtype, reason: str
    ) -> None:
        rel = f"{section}/{name}.bin"
        manifest, file = self.path / _MANIFEST, self.path / rel
        entry = self.manifest["files"].get(rel)
        if not isinstance(entry, dict):
            raise DataError(manifest, "not listed", field=f"files[{rel!r}]")
        listed: np.dtype | None = None
        if isinstance(entry.get("dtype"), str):
            try:
                listed = np.dtype(entry["dtype"])
            except TypeError:
                listed = None
        if listed is None or listed.byteorder == ">" or listed.newbyteorder("<") != dtype:
            raise DataError(
                manifest,
                f"expected {dtype.name}, got {entry.get('dtype')!r}",
                field=f"files[{rel!r}].dtype",
            )
        if not file.is_file():
            raise DataError(file, "missing (listed in manifest.json)", field=f"files[{rel!r}]")
        expected = math.prod(shape) * dtype.itemsize
        size = file.stat().st_size
        if size != expected:
            raise DataError(
                file,
                f"expected {shape} {dtype.name} ({expected} bytes) from manifest "
                f"{reason}, file holds {size} bytes",
                field="shape",
            )
        if entry.get("shape") != list(shape):
            raise DataError(
                manifest,
                f"expected {list(shape)} from {reason}, got {entry.get('shape')!r}",
                field=f"files[{rel!r}].shape",
            )
        if entry.get("bytes") != expected:
            raise DataError(
                manifest,
                f"expected {expected}, got {entry.get('bytes')!r}",
                field=f"files[{rel!r}].bytes",
            )

    def _check_offsets(self, section: str, name: str) -> np.ndarray:
        offsets = np.array(self.array(name, section))  # small: F + 1 ints, kept in RAM
        total_name = "boxes" if name == "box_offsets" else "pairs"
        total = self.manifest["sections"][section][total_name]
        file = self.path / section / f"{name}.bin"
        if offsets[0] != 0:
            raise DataError(file, f"must start at 0, starts at {offsets[0]}", field="[0]")
        steps = np.diff(offsets)
        if (steps < 0).any():
            f = int(np.argmax(steps < 0))
            raise DataError(
                file,
                f"decreases at frame {f} ({self.keys[f]!r}): {offsets[f]} -> {offsets[f + 1]}",
                field=f"[{f + 1}]",
            )
        if offsets[-1] != total:
            raise DataError(
                file,
                f"last offset {offsets[-1]} != manifest sections.{section}.{total_name}={total}",
                field=f"[{len(offsets) - 1}]",
            )
        return offsets

    def _check_pairs(self, section: str) -> None:
        """Every pair index lies within its own frame's boxes (one vectorized pass)."""
        box_off, pair_off, _ = self._offsets[section]
        pairs = self.array("pairs", section)
        if not pairs.shape[0]:
            return
        frame = np.repeat(np.arange(len(self.keys)), np.diff(pair_off))
        limit = np.diff(box_off)[frame]
        bad = (pairs < 0) | (pairs >= limit[:, None])
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            f = int(frame[row])
            raise DataError(
                self.path / section / "pairs.bin",
                f"{('subject', 'object')[col]} index {int(pairs[row, col])} is "
                f"outside frame {f} ({self.keys[f]!r}) with {int(limit[row])} boxes",
                field=f"[{row}, {col}]",
            )

    def verify(self) -> None:
        """Check the sha256 of every array file and of ``frames.json`` against the manifest.

        Raises:
            DataError: naming the file whose content differs (field ``sha256``).
        """
        for section in self.sections:
            for name in self._specs[section]:
                rel = f"{section}/{name}.bin"
                wanted = self.manifest["files"][rel].get("sha256")
                self._verify_one(self.path / rel, wanted, f"files[{rel!r}].sha256")
        if "frames_sha256" in self.manifest:
            self._verify_one(self.path / _FRAMES, self.manifest["frames_sha256"], "frames_sha256")

    def _verify_one(self, file: Path, wanted: Any, field: str) -> None:
        if not isinstance(wanted, str):
            raise DataError(
                self.path / _MANIFEST, f"expected a hex digest, got {wanted!r}", field=field
            )
        got = _sha256_file(file)
        if got != wanted.lower():
            raise DataError(
                file,
                f"mismatch: manifest {wanted[:16]}..., file {got[:16]}...; "
                "the file is corrupt or was changed after writing",
                field="sha256",
            )

    # -- reading ------------------------------------------------------------------------------

    def array(self, name: str, section: str = "gt") -> np.ndarray:
        """The whole array ``<section>/<name>.bin``, read-only and memory-mapped, in its storage
        dtype (e.g. ``store.array("box_features")``). Empty arrays are plain ndarrays."""
        self._check_section(section)
        cached = self._arrays.get((section, name))
        if cached is not None:
            return cached
        specs = self._specs[section]
        if name not in specs:
            raise KeyError(f"no array {name!r} in section {section!r}; one of {sorted(specs)}")
        shape, dtype, _ = specs[name]
        if math.prod(shape) == 0:
            array = np.zeros(shape, dtype)
            array.flags.writeable = False
        else:
            array = np.memmap(
                self.path / section / f"{name}.bin", dtype=dtype, mode="r", shape=shape
            )
        self._arrays[(section, name)] = array
        return array

    def _check_section(self, section: str) -> None:
        if section not in SECTIONS:
            raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
        if section not in self._specs:
            if section not in self.sections:
                why = {
                    "det": "detections (sgdet evaluation needs them)",
                    "det_train": "sgdet training inputs (section det_train)",
                    "gt": "ground-truth section",
                }[section]
                raise DataError(
                    self.path / _MANIFEST, f"this store has no {why}", field=f"sections.{section}"
                )
            raise RuntimeError("feature store used before it finished opening")

    def _rows(self, keys: Sequence[str]) -> np.ndarray:
        if isinstance(keys, str):
            raise TypeError("keys must be a sequence of frame keys, not one str")
        rows = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            row = self._row.get(key)
            if row is None:
                raise DataError(self.path, f"feature store has no frame {key!r}", field=_FRAMES)
            rows[i] = row
        return rows

    def frame(self, key: str, section: str = "gt") -> FrameFeatures:
        """One frame's features (numpy copies; box features as float32, union maps stored)."""
        self._check_section(section)
        video = self.video([key], section)
        pairs = video.pair_idx
        return FrameFeatures(
            boxes=video.boxes[:, 1:].copy(),
            box_features=video.box_features,
            pairs=pairs,
            union_maps=video.union_maps,
            class_dists=video.class_dists,
            scores=video.scores,
            labels=video.labels,
            pair_targets=video.pair_targets,
        )

    def video(self, keys: Sequence[str], section: str = "gt") -> VideoFeatures:
        """Frames ``keys`` (usually one video's, in temporal order) concatenated.

        Pair indices become video-level indices into the concatenated boxes; ``im_idx`` and the
        first column of ``boxes`` give each pair's and box's position in ``keys``. One vectorized
        gather per array (a slice when the frames are consecutive rows of the store).
        """
        self._check_section(section)
        rows = self._rows(keys)
        box_off, pair_off, union_off = self._offsets[section]
        box_idx, box_counts = _gather_index(box_off[rows], box_off[rows + 1])
        pair_idx, pair_counts = _gather_index(pair_off[rows], pair_off[rows + 1])
        union_idx, union_rows = _gather_index(union_off[rows], union_off[rows + 1])
        frame_of_box = np.repeat(np.arange(len(rows)), box_counts)
        frame_of_pair = np.repeat(np.arange(len(rows)), pair_counts)
        box_base = np.cumsum(box_counts) - box_counts
        boxes = np.empty((len(frame_of_box), 5), dtype=np.float32)
        boxes[:, 0] = frame_of_box
        boxes[:, 1:] = self.array("boxes", section)[box_idx]
        pairs = np.asarray(self.array("pairs", section)[pair_idx], dtype=np.int64)
        pairs = pairs + box_base[frame_of_pair][:, None]
        specs = self._specs[section]

        def per_box(name: str) -> np.ndarray | None:
            return np.array(self.array(name, section)[box_idx]) if name in specs else None

        return VideoFeatures(
            frame_keys=tuple(keys),
            boxes=boxes,
            box_features=_as_float32(self.array("box_features", section)[box_idx]),
            pair_idx=pairs,
            im_idx=frame_of_pair.astype(np.int64),
            union_maps=np.array(self.array("union_maps", section)[union_idx]),
            union_offsets=np.concatenate([[0], np.cumsum(union_rows)]).astype(np.int64),
            union_diagonal=UNION_DIAGONAL[section],
            class_dists=per_box("class_dists"),
            scores=per_box("scores"),
            labels=per_box("labels"),
            pair_targets=(
                np.array(self.array("pair_targets", section)[pair_idx])
                if "pair_targets" in specs
                else None
            ),
        )

    def require(self, keys: Iterable[str], source: str | os.PathLike[str]) -> None:
        """Check the store holds every frame in ``keys`` (e.g. a dataset's annotated frames).

        Raises:
            DataError: naming ``source`` and the first missing key, with the number missing.
        """
        missing = [key for key in keys if key not in self._row]
        if missing:
            more = f" ({len(missing)} frames missing in all)" if len(missing) > 1 else ""
            raise DataError(source, f"feature store {self.path} has no frame {missing[0]!r}{more}")

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._row

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # memory maps reopen lazily instead of being copied into the pickle
        return state

    def __repr__(self) -> str:
        return (
            f"FeatureStore('{self.path}', frames={len(self)}, object_dim={self.object_dim}, "
            f"union_channels={self.union_channels}, union_size={self.union_size}, "
            f"sections={list(self.sections)}, dtype={self.dtype!r})"
        )


def _gather_index(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray | slice, np.ndarray]:
    """Row index selecting ``[starts[i], ends[i])`` for every i, concatenated, and the counts.

    Returns a slice when the ranges are back to back (consecutive frames), else an int array.
    """
    counts = ends - starts
    if len(starts) and (starts[1:] == ends[:-1]).all():
        return slice(int(starts[0]), int(ends[-1])), counts
    shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return shift + np.arange(int(counts.sum())), counts


def _as_float32(array: np.ndarray) -> np.ndarray:
    """A float32 copy (upcasting float16 storage); never a view of a memory map."""
    return np.array(array, dtype=np.float32)

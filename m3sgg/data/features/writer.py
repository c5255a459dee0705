"""Writing a store: :class:`FeatureStoreWriter` streams frames to a temporary folder and
renames it into place at ``close()`` (atomic and durable)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from m3sgg import __version__
from m3sgg.data.features.layout import (
    _FRAMES,
    _MANIFEST,
    FEATURE_DTYPES,
    FORMAT,
    SECTIONS,
    UNION_DIAGONAL,
    FrameFeatures,
    _array_specs,
    _is_int,
    union_counts,
)
from m3sgg.errors import DataError


def _fsync_dir(path: Path) -> None:
    """Make a rename or file creation inside ``path`` durable (no-op where dirs can't be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Sink:
    """One ``.bin`` being written: a buffered file plus a running sha256 and byte count."""

    def __init__(self, path: Path):
        self.path = path
        self.fh: BinaryIO = open(path, "wb", buffering=1 << 20)  # noqa: SIM115
        self.digest = hashlib.sha256()
        self.nbytes = 0

    def write(self, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
        self.fh.write(data)
        self.digest.update(data)
        self.nbytes += data.nbytes

    def close(self, *, sync: bool) -> None:
        if self.fh.closed:
            return
        if sync:
            self.fh.flush()
            os.fsync(self.fh.fileno())
        self.fh.close()


class FeatureStoreWriter:
    """Write a feature store frame by frame, streaming to disk; atomic on :meth:`close`.

    Everything goes into a temporary folder beside ``path`` (``.<name>.<random>.tmp``), which
    :meth:`close` fsyncs and renames to ``path``. Used as a context manager, the writer closes on
    success and deletes the temporary folder if the block raises, so nothing half-written is ever
    left at ``path``.

    Args:
        path: the store folder to create.
        object_dim: width of the per-box features (2048 for the AG detector).
        union_channels: channels of the union maps (1024 for the AG detector).
        union_size: side of the union maps (7: RoIAlign 7x7).
        num_classes: classes of the detector including background (37 for AG); class
            distributions have ``num_classes - 1`` columns (classes ``1..``).
        sections: the sections every frame has: ``"gt"`` and optionally ``"det"`` (sgdet
            evaluation) and ``"det_train"`` (sgdet training).
        gt_class_dists: whether the ``gt`` section carries ``class_dists`` (sgcls needs them).
        dtype: storage dtype of the features and union maps, ``"float32"`` or ``"float16"``
            (half the disk; the reader upcasts box features to float32).
        overwrite: replace an existing store at ``path`` (only a feature store or an empty
            folder is ever replaced). Otherwise an existing ``path`` is an error.

    Raises:
        DataError: ``path`` exists (and may not be replaced), or a frame is invalid.
        ValueError: a dimension, section or dtype argument is invalid.

    Example::

        with FeatureStoreWriter(out, object_dim=2048, union_channels=1024,
                                sections=("gt", "det")) as w:
            for key, gt, det in extract(frames):
                w.add_frame(key, gt, det=det)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        object_dim: int,
        union_channels: int,
        union_size: int = 7,
        num_classes: int = 37,
        sections: Sequence[str] = ("gt",),
        gt_class_dists: bool = True,
        dtype: str = "float32",
        overwrite: bool = False,
    ):
        for name, value in (
            ("object_dim", object_dim),
            ("union_channels", union_channels),
            ("union_size", union_size),
        ):
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not _is_int(num_classes) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if isinstance(sections, str):
            sections = (sections,)
        unknown = [s for s in sections if s not in SECTIONS]
        if unknown or "gt" not in sections or len(set(sections)) != len(sections):
            raise ValueError(
                f"sections must hold 'gt' and optionally 'det', 'det_train' (once each), "
                f"got {list(sections)!r}"
            )
        try:
            dtype_name = np.dtype(dtype).name
        except TypeError:
            dtype_name = repr(dtype)
        if dtype_name not in FEATURE_DTYPES:
            raise ValueError(f"dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
        self.path = Path(path)
        self.object_dim = object_dim
        self.union_channels = union_channels
        self.union_size = union_size
        self.num_classes = num_classes
        self.sections = tuple(s for s in SECTIONS if s in sections)
        self.gt_class_dists = bool(gt_class_dists)
        self.dtype = dtype_name
        self.overwrite = overwrite
        self._check_target()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        )
        self._keys: list[str] = []
        self._key_set: set[str] = set()
        self._counts = {s: {"boxes": 0, "pairs": 0, "unions": 0} for s in self.sections}
        self._sinks: dict[str, dict[str, _Sink]] = {}
        self._closed = False
        try:
            for section in self.sections:
                (self._tmp / section).mkdir()
                specs = self._specs(section, 0, 0, 0, 0)
                self._sinks[section] = {n: _Sink(self._tmp / section / f"{n}.bin") for n in specs}
                zero = np.zeros(1, dtype="<i8")
                self._sinks[section]["box_offsets"].write(zero)
                self._sinks[section]["pair_offsets"].write(zero)
        except BaseException:
            self.abort()
            raise

    @property
    def num_frames(self) -> int:
        """Frames added so far."""
        return len(self._keys)

    def _has_dists(self, section: str) -> bool:
        return section != "gt" or self.gt_class_dists

    def _specs(self, section: str, f: int, n: int, p: int, u: int) -> dict[str, Any]:
        return _array_specs(
            section,
            num_frames=f,
            num_boxes=n,
            num_pairs=p,
            num_unions=u,
            object_dim=self.object_dim,
            union_channels=self.union_channels,
            union_size=self.union_size,
            num_classes=self.num_classes,
            class_dists=self._has_dists(section),
            dtype=self.dtype,
        )

    def _check_target(self) -> None:
        """Refuse an existing ``path``, unless ``overwrite`` and it is a store or an empty dir."""
        if not self.path.exists() and not self.path.is_symlink():
            return
        if not self.overwrite:
            raise DataError(self.path, "already exists; pass overwrite=True to replace it")
        if not self.path.is_dir() or self.path.is_symlink():
            raise DataError(self.path, "exists and is not a folder; refusing to overwrite it")
        if any(self.path.iterdir()) and not (self.path / _MANIFEST).is_file():
            raise DataError(
                self.path,
                "exists and is not a feature store (no manifest.json); refusing to overwrite it",
            )

    # -- adding frames -------------------------------------------------------------------------

    def add_frame(
        self,
        key: str,
        gt: FrameFeatures,
        det: FrameFeatures | None = None,
        det_train: FrameFeatures | None = None,
    ) -> None:
        """Append one frame. Validates everything first; an invalid frame writes nothing.

        Args:
            key: the frame key, e.g. ``"50N4E.mp4/000682.png"``; unique in the store.
            gt: features of the frame's ground-truth boxes.
            det: detections for sgdet evaluation; required iff the writer has ``"det"``.
            det_train: sgdet training inputs; required iff the writer has ``"det_train"``.

        Raises:
            DataError: wrong shape or dtype, NaN/inf values (or values beyond float16's range
                with ``dtype="float16"``), pair index out of range, class probabilities outside
                [0, 1], duplicate key, or a section missing/unexpected. The error names the
                store, the frame and the array.
            RuntimeError: the writer is already closed.
        """
        if self._closed:
            raise RuntimeError(f"feature store writer for {self.path} is closed")
        if not isinstance(key, str) or not key:
            raise DataError(
                self.path, f"frame key must be a non-empty str, got {key!r}", field="frames"
            )
        if key in self._key_set:
            raise DataError(self.path, f"duplicate frame key {key!r}", field="frames")
        given = {"gt": gt, "det": det, "det_train": det_train}
        prepared: dict[str, dict[str, np.ndarray]] = {}
        for section, ff in given.items():
            if (ff is None) == (section in self.sections):
                why = (
                    f"is required for every frame (the writer's sections {list(self.sections)})"
                    if ff is None
                    else f"given but the writer's sections are {list(self.sections)}"
                )
                raise DataError(self.path, f"{section} {why}", field=f"frame {key!r} {section}")
            if ff is not None:
                prepared[section] = self._prepare(key, section, ff)
        for section, arrays in prepared.items():
            sinks, counts = self._sinks[section], self._counts[section]
            counts["boxes"] += arrays["boxes"].shape[0]
            counts["pairs"] += arrays["pairs"].shape[0]
            counts["unions"] += arrays["union_maps"].shape[0]
            for name, array in arrays.items():
                sinks[name].write(array)
            sinks["box_offsets"].write(np.array([counts["boxes"]], dtype="<i8"))
            sinks["pair_offsets"].write(np.array([counts["pairs"]], dtype="<i8"))
        self._keys.append(key)
        self._key_set.add(key)

    def _prepare(self, key: str, section: str, ff: FrameFeatures) -> dict[str, np.ndarray]:
        """Validate one section of one frame; return its arrays in storage dtype."""
        where = f"frame {key!r} {section}"
        if not isinstance(ff, FrameFeatures):
            raise TypeError(f"{where}: expected FrameFeatures, got {type(ff).__name__}")
        wanted = {
            "class_dists": self._has_dists(section),
            "scores": section != "gt",
            "labels": section == "det_train",
            "pair_targets": section == "det_train",
        }
        for name, needed in wanted.items():
            if (getattr(ff, name) is None) == needed:
                message = (
                    f"is required in {section}"
                    if needed
                    else f"does not belong to {section}"
                    + (" (the writer has gt_class_dists=False)" if name == "class_dists" else "")
                )
                raise DataError(self.path, message, field=f"{where}.{name}")
        feat = np.dtype(self.dtype).newbyteorder("<")
        f32 = np.dtype("<f4")

        def real(name: str, value: Any, shape: tuple[int | None, ...], out: np.dtype) -> np.ndarray:
            array = self._checked(where, name, value, shape, kinds="fiu")
            with np.errstate(over="ignore", invalid="ignore"):
                converted = array.astype(out)
            finite = np.isfinite(converted)
            if not finite.all():
                at = tuple(int(i) for i in np.argwhere(~finite)[0])
                value = float(array[at])
                if math.isfinite(value):
                    raise DataError(
                        self.path,
                        f"value {value:g} at {at} overflows {out.name} "
                        f"(|x| <= {float(np.finfo(out).max):g})",
                        field=f"{where}.{name}",
                    )
                raise DataError(
                    self.path, f"non-finite value {value} at {at}", field=f"{where}.{name}"
                )
            return converted

        def index(name: str, value: Any, shape: tuple[int | None, ...]) -> np.ndarray:
            return self._checked(where, name, value, shape, kinds="iu").astype("<i8")

        boxes = real("boxes", ff.boxes, (None, 4), f32)
        k = boxes.shape[0]
        out = {
            "boxes": boxes,
            "box_features": real("box_features", ff.box_features, (k, self.object_dim), feat),
        }
        pairs = index("pairs", ff.pairs, (None, 2))
        bad = (pairs < 0) | (pairs >= k)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataError(
                self.path,
                f"pair {int(row)} {('subject', 'object')[col]} index "
                f"{pairs[row, col]} is outside the frame's {k} boxes",
                field=f"{where}.pairs",
            )
        out["pairs"] = pairs
        p = pairs.shape[0]
        u = int(union_counts(k, UNION_DIAGONAL[section]))
        c, s = self.union_channels, self.union_size
        out["union_maps"] = real("union_maps", ff.union_maps, (u, c, s, s), feat)
        if self._has_dists(section):
            dists = real("class_dists", ff.class_dists, (k, self.num_classes - 1), f32)
            if dists.size and (dists.min() < 0 or dists.max() > 1 + 1e-5):
                raise DataError(
                    self.path,
                    f"class probabilities must lie in [0, 1], found "
                    f"[{dists.min():g}, {dists.max():g}]",
                    field=f"{where}.class_dists",
                )
            out["class_dists"] = dists
        if section != "gt":
            out["scores"] = real("scores", ff.scores, (k,), f32)
        if section == "det_train":
            labels = index("labels", ff.labels, (k,))
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise DataError(
                    self.path,
                    f"labels must lie in 0..{self.num_classes - 1}, found "
                    f"[{labels.min()}, {labels.max()}]",
                    field=f"{where}.labels",
                )
            out["labels"] = labels
            targets = index("pair_targets", ff.pair_targets, (p,))
            if targets.size and targets.min() < 0:
                raise DataError(
                    self.path,
                    f"pair targets must be >= 0, found {targets.min()}",
                    field=f"{where}.pair_targets",
                )
            out["pair_targets"] = targets
        return out

    def _checked(
        self, where: str, name: str, value: Any, shape: tuple[int | None, ...], *, kinds: str
    ) -> np.ndarray:
        """``value`` as an array of the expected shape (None = any length) and dtype kind."""
        field = f"{where}.{name}"
        try:
            array = np.asarray(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise DataError(
                self.path, f"not convertible to a numpy array ({err})", field=field
            ) from err
        if array.dtype.kind not in kinds and array.size:
            wanted = "integer" if kinds == "iu" else "real-valued"
            raise DataError(self.path, f"dtype {array.dtype} is not {wanted}", field=field)
        if array.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
        ):
            expected = "(" + ", ".join("any" if d is None else str(d) for d in shape) + ")"
            raise DataError(
                self.path, f"shape {tuple(array.shape)}, expected {expected}", field=field
            )
        if not array.size:
            array = array.astype(np.int64 if kinds == "iu" else np.float64)
        return array

    # -- finishing ----------------------------------------------------------------------------

    def close(self) -> Path:
        """Flush and fsync all files, write ``frames.json`` and ``manifest.json``, and rename the
        temporary folder to ``path`` (durably). Idempotent; returns ``path``.

        With ``overwrite=True`` an existing store is first renamed aside, then deleted after the
        new one is in place. If closing fails, the temporary folder is removed.
        """
        if self._closed:
            return self.path
        old: Path | None = None
        try:
            for sinks in self._sinks.values():
                for sink in sinks.values():
                    sink.close(sync=True)
            frames = json.dumps(self._keys, ensure_ascii=False).encode("utf-8")
            manifest = self._manifest(hashlib.sha256(frames).hexdigest())
            self._write_durably(self._tmp / _FRAMES, frames)
            self._write_durably(
                self._tmp / _MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
            )
            for section in self._sinks:
                _fsync_dir(self._tmp / section)
            _fsync_dir(self._tmp)
            self._check_target()
            if self.path.exists():
                old = Path(
                    tempfile.mkdtemp(
                        prefix=f".{self.path.name}.", suffix=".old", dir=self.path.parent
                    )
                )
                os.replace(self.path, old)  # onto the empty placeholder dir
            os.replace(self._tmp, self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Discard everything written: close the files and delete the temporary folder."""
        self._closed = True
        for sinks in getattr(self, "_sinks", {}).values():
            for sink in sinks.values():
                sink.close(sync=False)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _manifest(self, frames_sha256: str) -> dict[str, Any]:
        files: dict[str, Any] = {}
        sections: dict[str, Any] = {}
        for section, sinks in self._sinks.items():
            counts = self._counts[section]
            n, p, u = counts["boxes"], counts["pairs"], counts["unions"]
            sections[section] = {
                "boxes": n,
                "pairs": p,
                "unions": u,
                "union_diagonal": UNION_DIAGONAL[section],
                "class_dists": self._has_dists(section),
            }
            for name, (shape, dtype, _) in self._specs(section, self.num_frames, n, p, u).items():
                sink = sinks[name]
                assert sink.nbytes == math.prod(shape) * dtype.itemsize, (name, sink.nbytes)
                files[f"{section}/{name}.bin"] = {
                    "dtype": dtype.name,
                    "shape": list(shape),
                    "bytes": sink.nbytes,
                    "sha256": sink.digest.hexdigest(),
                }
        return {
            "format": FORMAT,
            "object_dim": self.object_dim,
            "union_channels": self.union_channels,
            "union_size": self.union_size,
            "num_classes": self.num_classes,
            "dtype": self.dtype,
            "num_frames": self.num_frames,
            "sections": sections,
            "files": files,
            "frames_sha256": frames_sha256,
            "created_by": f"m3sgg {__version__}",
        }

    @staticmethod
    def _write_durably(path: Path, data: bytes) -> None:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        return (
            f"FeatureStoreWriter('{self.path}', frames={self.num_frames}, object_dim="
            f"{self.object_dim}, union_channels={self.union_channels}, union_size="
            f"{self.union_size}, sections={list(self.sections)}, dtype={self.dtype!r})"
        )

"""Precomputed detector features on disk: the ``m3sgg-features/2`` store.

Why: the classic Action Genome loop runs a frozen Faster R-CNN on every frame at every step, which
costs several times the relation model itself. m3sgg reads features computed once instead: per-box
object features, the detector's class distributions, a table of union-box feature maps for every
box pair of a frame and (for sgdet) the detections themselves. Full Action Genome is 288k frames
and about a million boxes, so a store is large: the writer streams every frame straight to disk and
the reader memory-maps the arrays, so neither holds the features in RAM.

Format (a folder; the full spec with examples and disk costs is ``docs/feature_store.md``)::

    <store>/
      manifest.json    format, dims, storage dtype, counts, and dtype/shape/bytes/sha256 per file
      frames.json      frame keys ("50N4E.mp4/000682.png"), the row order of the offsets
      gt/              the frame's ground-truth boxes: person first, then visible objects
        boxes.bin           (N, 4)             float32  xyxy pixels
        box_offsets.bin     (F + 1,)           int64    boxes of frame f: [off[f], off[f + 1])
        box_features.bin    (N, object_dim)    float32 or float16 (the manifest's "dtype")
        class_dists.bin     (N, num_classes-1) float32  detector distribution over classes 1..
                                                        (optional in gt: "class_dists": true)
        pairs.bin           (P, 2)             int64    frame-local (subject, object) indices
        pair_offsets.bin    (F + 1,)           int64    pairs of frame f: [off[f], off[f + 1])
        union_maps.bin      (U, C, S, S)       float32 or float16: the union table (below)
      det/             optional, detections for sgdet evaluation: the files of gt/, plus
        scores.bin          (N,)               float32
      det_train/       optional, sgdet training inputs (detections + supplied GT boxes): det/'s
        labels.bin          (N,)               int64    assigned class (0: none)
        pair_targets.bin    (P,)               int64    GT object (frame-local, annotation order)

The union table of a frame with ``k`` boxes holds one map per unordered box pair, rows in
lexicographic order of ``(i, j)``: ``i < j`` in ``gt`` and ``det_train``, ``i <= j`` in ``det``
(a box may be paired with a copy of itself in sgdet evaluation; the union of a box with itself is
the box). :func:`union_index` gives the row of a pair. The union box of ``(i, j)`` is symmetric,
so one table serves the stored pairs and any pairs a model forms.

Every ``.bin`` is a raw little-endian C-order array whose dtype and shape the manifest lists. A
frame may have no boxes or pairs in a section. Features stored as float16 are returned as float32
(box features); union maps are returned in their storage dtype (the model upcasts the rows it
uses).

Write with :class:`FeatureStoreWriter` (atomic: a temporary folder beside the target, renamed into
place at :meth:`~FeatureStoreWriter.close`); read with :class:`FeatureStore`, which validates the
store at open and raises :class:`~m3sgg.errors.DataError` naming the file and field of any problem.

Example::

    with FeatureStoreWriter("feats", object_dim=2048, union_channels=1024) as writer:
        writer.add_frame("50N4E.mp4/000682.png", FrameFeatures(boxes, feats, pairs, maps, dists))
    store = FeatureStore("feats")
    video = store.video(["50N4E.mp4/000682.png"])
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from m3sgg import __version__
from m3sgg.errors import DataError

__all__ = [
    "FORMAT",
    "SECTIONS",
    "UNION_DIAGONAL",
    "FeatureStore",
    "FeatureStoreWriter",
    "FrameFeatures",
    "VideoFeatures",
    "union_counts",
    "union_index",
    "union_pairs",
]

FORMAT = "m3sgg-features/2"

#: Storage dtypes allowed for the feature arrays.
FEATURE_DTYPES = ("float32", "float16")
#: Section folders, in the order they are written and validated.
SECTIONS = ("gt", "det", "det_train")
#: Whether a section's union table pairs each box with itself too (``i <= j``) or not (``i < j``).
UNION_DIAGONAL = {"gt": False, "det": True, "det_train": False}
_MANIFEST = "manifest.json"
_FRAMES = "frames.json"
_CHUNK = 1 << 22  # bytes per read when hashing


def union_counts(box_counts: Any, diagonal: bool) -> Any:
    """Rows of the union table of frames with ``box_counts`` boxes (numpy or torch ints)."""
    return box_counts * (box_counts - 1) // 2 + (box_counts if diagonal else 0)


def union_index(first: Any, second: Any, num_boxes: Any, diagonal: bool) -> Any:
    """Row of the unordered pair ``{first, second}`` in its frame's union table (frame-local
    indices; ``num_boxes`` boxes in the frame). Works elementwise on numpy arrays and tensors.

    Rows enumerate ``(i, j)`` lexicographically with ``i < j`` (``i <= j`` when ``diagonal``).
    """
    lo = (first + second - abs(first - second)) // 2  # min, for ints, arrays and tensors
    hi = first + second - lo
    if diagonal:
        return lo * (2 * num_boxes - lo + 1) // 2 + (hi - lo)
    return lo * (2 * num_boxes - lo - 1) // 2 + (hi - lo - 1)


def union_pairs(
    box_counts: np.ndarray, diagonal: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row of the union tables of frames with ``box_counts`` boxes, in storage order.

    Returns:
        ``(frame, i, j)`` int64 arrays, one entry per row: the frame (position in
        ``box_counts``) and the frame-local box indices, ``i < j`` (``i <= j`` when diagonal).
    """
    counts = np.asarray(box_counts, dtype=np.int64)
    frame_of_box = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    first = np.arange(len(frame_of_box), dtype=np.int64) - starts[frame_of_box]
    run = counts[frame_of_box] - first - (0 if diagonal else 1)
    total = int(run.sum())
    row_first = np.repeat(first, run)
    row_frame = np.repeat(frame_of_box, run)
    step = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(run) - run, run)
    return row_frame, row_first, row_first + step + (0 if diagonal else 1)


def _array_specs(
    section: str,
    *,
    num_frames: int,
    num_boxes: int,
    num_pairs: int,
    num_unions: int,
    object_dim: int,
    union_channels: int,
    union_size: int,
    num_classes: int,
    class_dists: bool,
    dtype: str,
) -> dict[str, tuple[tuple[int, ...], np.dtype, str]]:
    """File name → (shape, little-endian dtype, the manifest fields the shape comes from)."""
    f32, i64, feat = np.dtype("<f4"), np.dtype("<i8"), np.dtype(dtype).newbyteorder("<")
    n = f"sections.{section}.boxes={num_boxes}"
    p = f"sections.{section}.pairs={num_pairs}"
    u = f"sections.{section}.unions={num_unions}"
    frames = f"num_frames={num_frames}"
    side = f"union_channels={union_channels}, union_size={union_size}"
    specs = {
        "boxes": ((num_boxes, 4), f32, n),
        "box_offsets": ((num_frames + 1,), i64, frames),
        "box_features": ((num_boxes, object_dim), feat, f"{n}, object_dim={object_dim}"),
        "pairs": ((num_pairs, 2), i64, p),
        "pair_offsets": ((num_frames + 1,), i64, frames),
        "union_maps": (
            (num_unions, union_channels, union_size, union_size),
            feat,
            f"{u}, {side}",
        ),
    }
    if class_dists:
        specs["class_dists"] = (
            (num_boxes, num_classes - 1),
            f32,
            f"{n}, num_classes={num_classes}",
        )
    if section != "gt":
        specs["scores"] = ((num_boxes,), f32, n)
    if section == "det_train":
        specs["labels"] = ((num_boxes,), i64, n)
        specs["pair_targets"] = ((num_pairs,), i64, p)
    return specs


def _fsync_dir(path: Path) -> None:
    """Make a rename or file creation inside ``path`` durable (no-op where dirs can't be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, eq=False)
class FrameFeatures:
    """The features of one frame in one section, as numpy arrays.

    ``k`` is the frame's box count, ``p`` its pair count and ``u`` its union-table rows
    (:func:`union_counts` of ``k``); any may be zero.

    Attributes:
        boxes: ``(k, 4)`` xyxy boxes in pixels. In ``gt`` the person comes first, then the
            visible objects in annotation order.
        box_features: ``(k, object_dim)`` per-box object features.
        pairs: ``(p, 2)`` integer (subject, object) indices into this frame's boxes.
        union_maps: ``(u, union_channels, union_size, union_size)`` feature maps of the union
            box of every unordered box pair, rows in :func:`union_index` order.
        class_dists: ``(k, num_classes - 1)`` the detector's class probabilities over classes
            ``1..num_classes-1`` (person first); required in ``det`` and ``det_train``,
            optional in ``gt`` (all frames or none).
        scores: ``(k,)`` detection scores; ``det`` and ``det_train`` only.
        labels: ``(k,)`` assigned class of each box (0: none); ``det_train`` only.
        pair_targets: ``(p,)`` the GT object (frame-local index among the frame's visible
            objects, annotation order) whose relations each pair carries; ``det_train`` only.
    """

    boxes: np.ndarray
    box_features: np.ndarray
    pairs: np.ndarray
    union_maps: np.ndarray
    class_dists: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    pair_targets: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class VideoFeatures:
    """Several frames of one section concatenated (numpy copies, never memory maps).

    Attributes:
        frame_keys: the ``F`` frame keys, in the order requested.
        boxes: float32 ``(N, 5)``: ``[frame index within the video, x1, y1, x2, y2]``.
        box_features: float32 ``(N, object_dim)``.
        pair_idx: int64 ``(P, 2)`` (subject, object) indices into ``boxes`` (video-level).
        im_idx: int64 ``(P,)`` frame index within the video of each pair.
        union_maps: ``(U, C, S, S)`` in the storage dtype: the frames' union tables, back to back.
        union_offsets: int64 ``(F + 1,)``: union rows of frame ``f`` are
            ``union_offsets[f]:union_offsets[f + 1]``.
        union_diagonal: whether the tables pair each box with itself (the section's rule).
        class_dists: float32 ``(N, num_classes - 1)`` or None.
        scores: float32 ``(N,)`` for ``det``/``det_train``, else None.
        labels: int64 ``(N,)`` for ``det_train``, else None.
        pair_targets: int64 ``(P,)`` for ``det_train``, else None.
    """

    frame_keys: tuple[str, ...]
    boxes: np.ndarray
    box_features: np.ndarray
    pair_idx: np.ndarray
    im_idx: np.ndarray
    union_maps: np.ndarray
    union_offsets: np.ndarray
    union_diagonal: bool
    class_dists: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    pair_targets: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return len(self.frame_keys)

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def num_pairs(self) -> int:
        return int(self.pair_idx.shape[0])

    def box_counts(self) -> np.ndarray:
        """int64 ``(F,)`` boxes per frame."""
        return np.bincount(self.boxes[:, 0].astype(np.int64), minlength=self.num_frames)[
            : self.num_frames
        ]


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

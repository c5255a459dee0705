"""The store's layout: format constants, the union table's row order (:func:`union_index`),
the per-section array specs, and the in-memory :class:`FrameFeatures` / :class:`VideoFeatures`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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

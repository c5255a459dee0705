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

Modules: :mod:`.layout` (constants, union rows, frame/video features), :mod:`.writer`,
:mod:`.store`.
"""

from __future__ import annotations

from m3sgg.data.features.layout import (
    FEATURE_DTYPES,
    FORMAT,
    SECTIONS,
    UNION_DIAGONAL,
    FrameFeatures,
    VideoFeatures,
    union_counts,
    union_index,
    union_pairs,
)
from m3sgg.data.features.store import FeatureStore
from m3sgg.data.features.writer import FeatureStoreWriter

__all__ = [
    "FEATURE_DTYPES",
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

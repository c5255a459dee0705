"""Action Genome reader: the real on-disk format, indexed into flat arrays, one video per sample.

Layout read (``<root>/annotations/``)::

    object_classes.txt                  36 class names, squashed spelling (``closetcabinet``)
    relationship_classes.txt            26 predicate names, squashed spelling (``lookingat``)
    person_bbox.pkl                     frame key -> {"bbox": (k, 4) xyxy, "bbox_size": (w, h), ...}
    object_bbox_and_relationship.pkl    frame key -> [{"class", "bbox" xywh | None, "visible",
                                          "attention_relationship", "spatial_relationship",
                                          "contacting_relationship", "metadata": {"set", "tag"}}]
    frame_list.txt                      optional; not needed (the pickles list every frame)

Format quirks handled here:

- The text files use the squashed spelling, the pickles the readable one (``cup/glass/bottle``,
  ``in_front_of``). The text files are checked line by line against :mod:`m3sgg.vocab` (either
  spelling is accepted per line); names inside the pickles are mapped to indices by dict lookup
  (the squashed spelling is accepted there too, since it is unambiguous).
- Object boxes are xywh and become xyxy (float64); person boxes are already xyxy. A person entry
  with ``k > 1`` rows contributes its first row; ``k = 0`` means the frame has no person.
- Invisible objects (``visible`` false; their ``bbox`` and relationship lists are ``None``) are
  dropped without further inspection.
- A frame's split is the ``metadata["set"]`` of its first object (the reference loader's rule).

Filtering protocol (STTran's, the one every published AG number uses), applied per split:

1. optional small-box filter (``filter_small_boxes=True``): a visible object whose box width or
   height (in pixels, ``w`` and ``h`` of the xywh box) is below ``min_box_size`` is dropped;
2. a frame is kept if it has at least one (remaining) visible object and a person box, and, with
   ``require_frames=True``, its image ``<root>/frames/<key>`` exists;
3. a video is kept only if it has **more than 2** kept frames.

Frames are sorted by key within a video and videos by id. One sample is one video.

Speed: the pickles are read once (both splits at a time, shared by an ``ActionGenome(root,
"train")`` and a following ``ActionGenome(root, "test")`` through a one-entry cache keyed by the
files' size and modification time) and turned, in a single pass, into a few flat numpy arrays for
the whole dataset (:mod:`m3sgg.data.action_genome_pickles`). ``ds[i]`` slices them into a
:class:`~m3sgg.data.structures.VideoGT`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from m3sgg.data.action_genome_pickles import (
    SPLITS,
    ParsedAnnotations,
    clear_annotation_cache,
    parse_annotations,
)
from m3sgg.data.features import FeatureStore, VideoFeatures, union_counts, union_pairs
from m3sgg.data.structures import VideoGT
from m3sgg.errors import ConfigError, DataError
from m3sgg.vocab import (
    AG_OBJECT_CLASSES,
    AG_PREDICATES,
    PREDICATE_GROUPS,
    PREDICATE_OFFSETS,
    squash,
)

__all__ = [
    "ANNOTATION_FILES",
    "SPLITS",
    "ActionGenome",
    "VideoSample",
    "clear_annotation_cache",
    "read_class_file",
]

#: File names under ``<root>/annotations``.
ANNOTATION_FILES = {
    "object_classes": "object_classes.txt",
    "relationship_classes": "relationship_classes.txt",
    "person_bbox": "person_bbox.pkl",
    "objects": "object_bbox_and_relationship.pkl",
    "frame_list": "frame_list.txt",
}


@dataclass(frozen=True, eq=False)
class VideoSample:
    """One training/evaluation sample: a whole video.

    Attributes:
        index: position in the dataset.
        video_id: e.g. ``"50N4E.mp4"``.
        gt: the video's ground truth (kept frames, visible objects, relations).
        features: the feature store's ``"gt"`` section for the video's frames (person box first,
            then the visible objects of each frame), or ``None`` without a store.
        det: the store's ``"det"`` section (detections, for sgdet evaluation), or ``None`` when
            the store has none or no store is used.
        det_train: the store's ``"det_train"`` section (sgdet training inputs), or ``None``;
            its ``pair_targets`` index the frame's objects as kept in ``gt`` (after the
            small-box filter).
    """

    index: int
    video_id: str
    gt: VideoGT
    features: VideoFeatures | None = None
    det: VideoFeatures | None = None
    det_train: VideoFeatures | None = None


# ----------------------------------------------------------------------------------------------
# Class files


def read_class_file(path: str | os.PathLike[str], expected: Sequence[str]) -> list[str]:
    """Read a class/predicate text file and check it lists ``expected`` in order.

    Each line may use the squashed (``cupglassbottle``) or the readable (``cup/glass/bottle``)
    spelling; blank lines at the end are ignored. Returns the readable names.

    Raises:
        DataError: the file is missing or a line differs (the error names the line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read ({err})") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for n, (line, name) in enumerate(zip(lines, expected, strict=False), start=1):
        if line not in (name, squash(name)):
            raise DataError(
                path, f"expected {squash(name)!r} ({name!r}), found {line!r}", field=f"line {n}"
            )
    if len(lines) != len(expected):
        raise DataError(
            path,
            f"expected {len(expected)} names, found {len(lines)}",
            field=f"line {min(len(lines), len(expected)) + 1}",
        )
    return list(expected)


def _image_size(size: np.ndarray) -> tuple[float, float] | None:
    """``(height, width)`` or None for a NaN row."""
    if np.isnan(size).any():
        return None
    return float(size[0]), float(size[1])


def _select_boxes(feats: VideoFeatures, rows: np.ndarray) -> VideoFeatures:
    """Keep boxes ``rows`` (sorted) of a video's features, the pairs among them and the union
    table rows of the kept boxes (still in union_index order: kept boxes keep their order)."""
    new_index = np.full(feats.num_boxes, -1, dtype=np.int64)
    new_index[rows] = np.arange(len(rows))
    mapped = new_index[feats.pair_idx]
    keep = (mapped >= 0).all(axis=1)
    counts = feats.box_counts()
    frame, first, second = union_pairs(counts, feats.union_diagonal)
    box_start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    kept_box = np.zeros(feats.num_boxes, dtype=bool)
    kept_box[rows] = True
    keep_union = kept_box[box_start[frame] + first] & kept_box[box_start[frame] + second]
    new_counts = np.bincount(feats.boxes[rows, 0].astype(np.int64), minlength=len(counts))
    return replace(
        feats,
        boxes=feats.boxes[rows],
        box_features=feats.box_features[rows],
        pair_idx=mapped[keep],
        im_idx=feats.im_idx[keep],
        union_maps=feats.union_maps[keep_union],
        union_offsets=np.concatenate(
            [[0], np.cumsum(union_counts(new_counts, feats.union_diagonal))]
        ).astype(np.int64),
        class_dists=None if feats.class_dists is None else feats.class_dists[rows],
        scores=None if feats.scores is None else feats.scores[rows],
        labels=None if feats.labels is None else feats.labels[rows],
        pair_targets=None if feats.pair_targets is None else feats.pair_targets[keep],
    )


# ----------------------------------------------------------------------------------------------
# The dataset


class ActionGenome:
    """Action Genome videos of one split, as :class:`VideoSample` objects (one per video).

    Args:
        root: the dataset folder (holding ``annotations/`` and, optionally, ``frames/``).
        split: ``"train"`` or ``"test"``.
        filter_small_boxes: drop visible objects whose annotated box is smaller than
            ``min_box_size`` pixels in width **or** height (``w < min_box_size or h <
            min_box_size`` on the xywh box), before the frame and video filters run, so a frame
            left without objects is dropped too. Meant for sgcls/sgdet; off by default (predcls).
            With a feature store, the ``"gt"`` features follow: the dropped objects' rows and
            their pairs are removed.
        min_box_size: the threshold of the small-box filter, in pixels (default 16).
        require_frames: keep only frames whose image ``<root>/frames/<key>`` exists.
        features: a feature store folder; each sample then carries its ``"gt"`` section (and
            ``"det"`` section when the store has one). The store must hold every kept frame, with
            ``1 +`` (visible objects) boxes per frame in the ``"gt"`` section.

    Raises:
        DataError: a file is missing or malformed, or the feature store does not match.
        ConfigError: ``split`` or ``min_box_size`` is invalid.

    Example::

        ds = ActionGenome("data/ag", "test")
        sample = ds[0]
        sample.gt.frame_keys, sample.gt.obj_class, sample.gt.rel_pred
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        filter_small_boxes: bool = False,
        min_box_size: float = 16.0,
        require_frames: bool = False,
        features: str | os.PathLike[str] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS} for Action Genome, got {split!r}")
        if not min_box_size >= 0 or not np.isfinite(min_box_size):
            raise ConfigError(f"min_box_size must be a finite number >= 0, got {min_box_size!r}")
        self.root = Path(root)
        self.split = split
        self.filter_small_boxes = bool(filter_small_boxes)
        self.min_box_size = float(min_box_size)
        self.require_frames = bool(require_frames)
        ann = self.root / "annotations"
        if not ann.is_dir():
            raise DataError(ann, "annotation folder not found (expected <root>/annotations)")
        self.object_classes = read_class_file(
            ann / ANNOTATION_FILES["object_classes"], AG_OBJECT_CLASSES[1:]
        )
        self.predicates = read_class_file(
            ann / ANNOTATION_FILES["relationship_classes"], AG_PREDICATES
        )
        parsed = parse_annotations(
            ann / ANNOTATION_FILES["person_bbox"], ann / ANNOTATION_FILES["objects"]
        )
        self._index(parsed)
        self.store: FeatureStore | None = None
        if features is not None:
            self._attach_store(Path(features))

    # -- indexing ----------------------------------------------------------------------------

    def _index(self, p: ParsedAnnotations) -> None:
        n_frames = len(p.keys)
        obj_keep = np.ones(len(p.obj_class), dtype=bool)
        if self.filter_small_boxes:
            obj_keep = (p.obj_wh >= self.min_box_size).all(axis=1)
        n_visible = np.bincount(p.obj_frame[obj_keep], minlength=n_frames)
        frame_keep = (p.split == SPLITS.index(self.split)) & p.has_person & (n_visible > 0)
        if self.require_frames:
            frame_keep &= self._frames_exist(p.keys, frame_keep)
        kept = np.flatnonzero(frame_keep)
        # Videos are contiguous runs of frames (keys are sorted by video); keep runs longer than 2.
        videos = [p.videos[f] for f in kept.tolist()]
        starts = [i for i in range(len(videos)) if i == 0 or videos[i] != videos[i - 1]]
        bounds = np.asarray([*starts, len(videos)], dtype=np.int64)
        lengths = np.diff(bounds)
        long_enough = lengths > 2
        frame_keep[kept[np.repeat(~long_enough, lengths)]] = False
        kept = np.flatnonzero(frame_keep)

        self._video_ids = [
            videos[s] for s, ok in zip(starts, long_enough.tolist(), strict=True) if ok
        ]
        self._video_offsets = np.concatenate([[0], np.cumsum(lengths[long_enough])]).astype(
            np.int64
        )
        self._keys = [p.keys[f] for f in kept.tolist()]
        self._person_boxes = p.person_boxes[kept]
        self._frame_size = p.frame_size[kept]

        obj_sel = obj_keep & frame_keep[p.obj_frame]
        rel_sel = np.repeat(obj_sel, p.rel_count)
        self._obj_class = p.obj_class[obj_sel]
        self._obj_boxes = p.obj_boxes[obj_sel]
        self._obj_rank = p.obj_rank[obj_sel]
        new_frame = np.cumsum(frame_keep) - 1
        obj_counts = np.bincount(new_frame[p.obj_frame[obj_sel]], minlength=len(kept))
        self._obj_offsets = np.concatenate([[0], np.cumsum(obj_counts)]).astype(np.int64)
        self._rel_offsets = np.concatenate([[0], np.cumsum(p.rel_count[obj_sel])]).astype(np.int64)
        self._rel_pred = p.rel_pred[rel_sel]
        # Visible objects per kept frame before the small-box filter: the store holds them all.
        self._visible_counts = np.bincount(p.obj_frame, minlength=n_frames)[kept]

    def _frames_exist(self, keys: list[str], candidates: np.ndarray) -> np.ndarray:
        """bool (F,): the image of each candidate frame exists (one directory listing per video)."""
        frames_dir = self.root / "frames"
        exists = np.zeros(len(keys), dtype=bool)
        listings: dict[str, set[str]] = {}
        for f in np.flatnonzero(candidates).tolist():
            video, _, name = keys[f].partition("/")
            if "/" in name:
                exists[f] = (frames_dir / keys[f]).is_file()
                continue
            listing = listings.get(video)
            if listing is None:
                try:
                    listing = set(os.listdir(frames_dir / video))
                except (FileNotFoundError, NotADirectoryError):
                    listing = set()
                listings[video] = listing
            exists[f] = name in listing
        return exists

    def _attach_store(self, path: Path) -> None:
        store = FeatureStore(path)
        store.require(self._keys, source=path)
        row = {key: i for i, key in enumerate(store.keys)}
        rows = np.fromiter((row[key] for key in self._keys), dtype=np.int64, count=len(self._keys))
        offsets = np.asarray(store.array("box_offsets", "gt"))
        counts = offsets[rows + 1] - offsets[rows]
        expected = self._visible_counts + 1
        bad = np.flatnonzero(counts != expected)
        if bad.size:
            f = int(bad[0])
            raise DataError(
                path,
                f"the 'gt' section holds {int(counts[f])} boxes but the "
                f"annotations have 1 person + {int(expected[f]) - 1} visible objects",
                field=f"frame {self._keys[f]!r}",
            )
        self.store = store

    # -- dataset protocol ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._video_ids)

    def __iter__(self) -> Iterator[VideoSample]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, index: int) -> VideoSample:
        n = len(self._video_ids)
        if not -n <= index < n:
            raise IndexError(f"video index {index} out of range for {n} videos")
        index = int(index) % n
        gt = self.video_gt(index)
        features = det = det_train = None
        if self.store is not None:
            features = self._store_section(index, "gt")
            if "det" in self.store.sections:
                det = self.store.video(gt.frame_keys, section="det")
            if "det_train" in self.store.sections:
                det_train = self._det_train(index, gt)
        return VideoSample(
            index=index,
            video_id=gt.video_id,
            gt=gt,
            features=features,
            det=det,
            det_train=det_train,
        )

    def _det_train(self, index: int, gt: VideoGT) -> VideoFeatures:
        """The ``det_train`` rows of video ``index``; with the small-box filter, pair targets
        are renumbered among the kept objects and pairs naming a dropped object are left out."""
        assert self.store is not None
        feats = self.store.video(gt.frame_keys, section="det_train")
        if not self.filter_small_boxes or feats.pair_targets is None:
            return feats
        f0, f1 = int(self._video_offsets[index]), int(self._video_offsets[index + 1])
        o0, o1 = int(self._obj_offsets[f0]), int(self._obj_offsets[f1])
        visible = self._visible_counts[f0:f1]
        vis_start = np.concatenate([[0], np.cumsum(visible)]).astype(np.int64)
        renumber = np.full(int(vis_start[-1]), -1, dtype=np.int64)
        obj_counts = np.diff(self._obj_offsets[f0 : f1 + 1])
        kept_frame = np.repeat(np.arange(f1 - f0), obj_counts)
        renumber[vis_start[kept_frame] + self._obj_rank[o0:o1]] = (
            np.arange(o1 - o0) - (self._obj_offsets[f0:f1] - o0)[kept_frame]
        )
        targets = feats.pair_targets
        in_range = targets < visible[feats.im_idx]
        new = np.full_like(targets, -1)
        new[in_range] = renumber[vis_start[feats.im_idx[in_range]] + targets[in_range]]
        keep = new >= 0
        return replace(
            feats,
            pair_idx=feats.pair_idx[keep],
            im_idx=feats.im_idx[keep],
            pair_targets=new[keep],
        )

    def video_gt(self, index: int) -> VideoGT:
        """The ground truth of video ``index`` (no features)."""
        f0, f1 = int(self._video_offsets[index]), int(self._video_offsets[index + 1])
        o0, o1 = int(self._obj_offsets[f0]), int(self._obj_offsets[f1])
        r0, r1 = int(self._rel_offsets[o0]), int(self._rel_offsets[o1])
        obj_counts = np.diff(self._obj_offsets[f0 : f1 + 1])
        rel_counts = np.diff(self._rel_offsets[o0 : o1 + 1])
        return VideoGT(
            video_id=self._video_ids[index],
            frame_keys=tuple(self._keys[f0:f1]),
            person_boxes=self._person_boxes[f0:f1].copy(),
            obj_frame=np.repeat(np.arange(f1 - f0, dtype=np.int64), obj_counts),
            obj_class=self._obj_class[o0:o1].copy(),
            obj_boxes=self._obj_boxes[o0:o1].copy(),
            rel_obj=np.repeat(np.arange(o1 - o0, dtype=np.int64), rel_counts),
            rel_pred=self._rel_pred[r0:r1].copy(),
            image_size=_image_size(self._frame_size[f0]),
        )

    def _store_section(self, index: int, section: str) -> VideoFeatures:
        """The store's rows for video ``index``; with the small-box filter, only kept objects."""
        assert self.store is not None
        f0, f1 = int(self._video_offsets[index]), int(self._video_offsets[index + 1])
        keys = self._keys[f0:f1]
        feats = self.store.video(keys, section=section)
        if not self.filter_small_boxes:
            return feats
        o0, o1 = int(self._obj_offsets[f0]), int(self._obj_offsets[f1])
        # Store rows of one frame: person, then every visible object; keep the person and the
        # objects that survived the filter.
        frame_rows = np.concatenate([[0], np.cumsum(self._visible_counts[f0:f1] + 1)])[:-1]
        obj_counts = np.diff(self._obj_offsets[f0 : f1 + 1])
        obj_rows = np.repeat(frame_rows, obj_counts) + 1 + self._obj_rank[o0:o1]
        return _select_boxes(feats, np.sort(np.concatenate([frame_rows, obj_rows])))

    # -- introspection -------------------------------------------------------------------------

    @property
    def video_ids(self) -> list[str]:
        """Video ids in dataset order (sorted)."""
        return list(self._video_ids)

    def frame_keys(self) -> list[str]:
        """Every kept frame key, in dataset order (videos sorted, frames sorted within)."""
        return list(self._keys)

    def stats(self) -> dict[str, Any]:
        """Counts for ``m3sgg inspect-data``: videos, frames, objects, relations by group, and
        per object class and per predicate (readable names; zero counts included)."""
        classes = np.bincount(self._obj_class, minlength=len(AG_OBJECT_CLASSES))
        preds = np.bincount(self._rel_pred, minlength=len(AG_PREDICATES))
        groups = {
            group: int(preds[PREDICATE_OFFSETS[group] : end].sum())
            for group, end in zip(PREDICATE_GROUPS, (3, 9, 26), strict=True)
        }
        return {
            "videos": len(self._video_ids),
            "frames": len(self._keys),
            "objects": int(self._obj_class.shape[0]),
            "relations": groups,
            "object_classes": {
                AG_OBJECT_CLASSES[c]: int(classes[c]) for c in range(2, len(AG_OBJECT_CLASSES))
            },
            "predicates": {name: int(preds[i]) for i, name in enumerate(AG_PREDICATES)},
        }

    def __repr__(self) -> str:
        return (
            f"ActionGenome(root={str(self.root)!r}, split={self.split!r}, "
            f"videos={len(self)}, frames={len(self._keys)})"
        )

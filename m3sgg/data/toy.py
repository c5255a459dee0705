"""The built-in toy Action Genome dataset: real on-disk formats, tiny, learnable, deterministic.

:func:`make_toy_action_genome` writes a few dozen videos exactly the way the real release lays
them out, so everything that reads real AG reads the toy data through the same code path::

    <out>/README.txt
    <out>/annotations/object_classes.txt          squashed spellings (closetcabinet, ...)
    <out>/annotations/relationship_classes.txt    squashed spellings (lookingat, ...)
    <out>/annotations/person_bbox.pkl             key -> {"bbox": float32 (k, 4) xyxy, ...}
    <out>/annotations/object_bbox_and_relationship.pkl
                                                  key -> [{"class", "bbox" xywh | None, ...}]
    <out>/annotations/frame_list.txt
    <out>/features/                               an m3sgg feature store (see features.py)

It carries every quirk of the real data: readable names inside the pickles, xywh object boxes
beside xyxy person boxes, invisible objects (``bbox`` None), frames without a person (``k = 0``)
and with two person rows, short videos that the protocol drops (at most 2 usable frames), both
splits, multi-label spatial and contacting relations (empty lists included), a few boxes under
16 pixels (for the small-box filter) and frames listed in shuffled order.

Learnable signal: each object class has a fixed random prototype vector and each predicate a
prototype union map ``[union_channels, 7, 7]``. An object's feature is its class prototype plus
Gaussian noise; a person-object pair's union map is the sum of the prototypes of its attention,
spatial and contacting labels plus noise; other box pairs' union maps are noise. The noise is
larger than the signal (per entry 2.5x the prototypes' std for objects, 3x for unions). Class
distributions (the store's ``class_dists``) are a noisy softmax peaked on the true class.
Predicates follow per-class priors (random, fixed by the seed: each class has a few likely
predicates) and persist across a video's frames, so they correlate with classes and time as in
the real data.

The same seed gives byte-identical files.
"""

from __future__ import annotations

import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m3sgg.data.action_genome import ANNOTATION_FILES
from m3sgg.data.features import FeatureStoreWriter, FrameFeatures, union_pairs
from m3sgg.errors import DataError
from m3sgg.vocab import (
    AG_ATTENTION,
    AG_CONTACTING,
    AG_OBJECT_CLASSES,
    AG_PREDICATES,
    AG_SPATIAL,
    NUM_AG_CLASSES,
    NUM_AG_PREDICATES,
    squash,
)

__all__ = ["TOY_FRAME_SIZES", "ToyConfig", "make_toy_action_genome"]

#: Frame sizes (width, height) of the toy videos, like AG's (mostly 480x270).
TOY_FRAME_SIZES: tuple[tuple[int, int], ...] = ((480, 270), (480, 270), (480, 360), (270, 480))
_ID_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PICKLE_PROTOCOL = 4


@dataclass(frozen=True)
class ToyConfig:
    """Knobs of the generator (the defaults are what ``m3sgg toy-data`` writes).

    Attributes:
        feature_noise: std of the Gaussian noise added to each feature entry; the prototypes'
            entries have std 1, so 1.0 means noise as large as the signal per dimension.
        union_noise: the same for union features.
        detection_miss: probability that a visible object is missed by the toy detector.
        false_positives: expected false-positive detections per frame.
    """

    feature_noise: float = 2.5
    union_noise: float = 3.0
    detection_miss: float = 0.15
    false_positives: float = 0.3


@dataclass
class _Frame:
    """One generated frame, kept for writing the feature store after the annotations."""

    key: str
    size: tuple[int, int]
    person: np.ndarray  # float32 (k, 4)
    visible: list[tuple[int, tuple[float, float, float, float], list[int]]] = field(
        default_factory=list
    )  # (class index, xywh, global predicate ids)


class _World:
    """The seed's fixed randomness: class frequencies, predicate priors, feature prototypes."""

    def __init__(self, seed: int, object_dim: int, union_channels: int, union_size: int):
        rng = np.random.default_rng([seed, 0])
        n_obj = NUM_AG_CLASSES - 2
        ranks = rng.permutation(n_obj)
        weights = 1.0 / (1.0 + ranks) ** 0.8
        self.class_p = weights / weights.sum()  # over classes 2..36
        self.attention = rng.dirichlet(np.full(len(AG_ATTENTION), 0.7), size=n_obj)
        self.spatial = self._sparse_priors(rng, n_obj, len(AG_SPATIAL), 0.04, (1, 2), (0.5, 0.9))
        self.contacting = self._sparse_priors(
            rng, n_obj, len(AG_CONTACTING), 0.02, (1, 3), (0.3, 0.85)
        )
        feat_rng = np.random.default_rng([seed, 1])
        self.class_proto = feat_rng.standard_normal((NUM_AG_CLASSES, object_dim))
        self.pred_proto = feat_rng.standard_normal(
            (NUM_AG_PREDICATES, union_channels, union_size, union_size)
        )

    @staticmethod
    def _sparse_priors(
        rng: np.random.Generator,
        n: int,
        k: int,
        base: float,
        dominant: tuple[int, int],
        strength: tuple[float, float],
    ) -> np.ndarray:
        priors = np.full((n, k), base)
        for c in range(n):
            picks = rng.choice(
                k, size=int(rng.integers(dominant[0], dominant[1] + 1)), replace=False
            )
            priors[c, picks] = rng.uniform(*strength, size=len(picks))
        return priors

    def labels(self, rng: np.random.Generator, cls: int) -> list[int]:
        """Global predicate ids of one person-object relation drawn from class ``cls``'s priors."""
        c = cls - 2
        att = int(rng.choice(len(AG_ATTENTION), p=self.attention[c]))
        spa = np.flatnonzero(rng.random(len(AG_SPATIAL)) < self.spatial[c]) + 3
        con = np.flatnonzero(rng.random(len(AG_CONTACTING)) < self.contacting[c]) + 9
        return [att, *spa.tolist(), *con.tolist()]


def make_toy_action_genome(
    out_dir: str | os.PathLike[str],
    *,
    videos: int | None = 24,
    seed: int = 0,
    object_dim: int = 64,
    union_channels: int = 8,
    union_size: int = 7,
    with_detections: bool = True,
    overwrite: bool = False,
    config: ToyConfig | None = None,
) -> Path:
    """Write the toy Action Genome dataset (annotations + feature store) to ``out_dir``.

    Args:
        out_dir: the dataset root to create (``annotations/``, ``features/``, ``README.txt``).
        videos: number of videos, both splits together (every fifth is too short for the
            protocol and is dropped by the reader); None means the default, 24.
        seed: all randomness derives from it; the same seed gives byte-identical files.
        object_dim: width of the per-box features in the store.
        union_channels: channels of the union maps ``[union_channels, union_size, union_size]``.
        union_size: side of the union maps (7: what STTran's union branch expects).
        with_detections: also write the store's ``det`` and ``det_train`` sections (sgdet).
        overwrite: replace the toy files of an existing dataset at ``out_dir`` (other files
            there are left alone). Otherwise a non-empty ``out_dir`` is an error.
        config: noise levels and detector behaviour (:class:`ToyConfig`).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: ``out_dir`` is not empty and ``overwrite`` is false.
        ValueError: a count or dimension is not positive.

    Example::

        root = make_toy_action_genome("toy_ag", videos=24, seed=0)
        ds = ActionGenome(root, "train", features=root / "features")
    """
    videos = 24 if videos is None else videos
    for name, value in (
        ("videos", videos),
        ("object_dim", object_dim),
        ("union_channels", union_channels),
        ("union_size", union_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    config = config or ToyConfig()
    out = Path(out_dir)
    _prepare_folder(out, overwrite)

    world = _World(seed, object_dim, union_channels, union_size)
    frames, persons, objects = _generate_annotations(world, videos, seed)
    ann = out / "annotations"
    ann.mkdir(parents=True)
    (ann / ANNOTATION_FILES["object_classes"]).write_text(
        "".join(squash(n) + "\n" for n in AG_OBJECT_CLASSES[1:]), encoding="utf-8"
    )
    (ann / ANNOTATION_FILES["relationship_classes"]).write_text(
        "".join(squash(n) + "\n" for n in AG_PREDICATES), encoding="utf-8"
    )
    for name, data in (("person_bbox", persons), ("objects", objects)):
        with open(ann / ANNOTATION_FILES[name], "wb") as fh:
            pickle.dump(data, fh, protocol=_PICKLE_PROTOCOL)
    (ann / ANNOTATION_FILES["frame_list"]).write_text(
        "".join(key + "\n" for key in sorted(objects)), encoding="utf-8"
    )
    _write_features(out / "features", world, frames, seed, config, with_detections, overwrite)
    (out / "README.txt").write_text(
        _readme(videos, seed, object_dim, union_channels, union_size, with_detections)
    )
    return out


def _prepare_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(
                out,
                "folder is not empty; pass overwrite=True (--overwrite) to "
                "replace the toy dataset in it",
            )
        shutil.rmtree(out / "annotations", ignore_errors=True)
        (out / "README.txt").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _video_ids(rng: np.random.Generator, n: int) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        vid = "".join(rng.choice(list(_ID_CHARS), size=5)) + ".mp4"
        if vid not in seen:
            seen.add(vid)
            ids.append(vid)
    return ids


def _generate_annotations(
    world: _World, n_videos: int, seed: int
) -> tuple[list[_Frame], dict[str, dict], dict[str, list]]:
    """Both pickles' contents (in a shuffled, fixed order) and the frames in sorted order."""
    rng = np.random.default_rng([seed, 2])
    frames: list[_Frame] = []
    person_entries: dict[str, dict] = {}
    object_entries: dict[str, list] = {}
    for v, vid in enumerate(_video_ids(rng, n_videos)):
        split = "test" if v % 4 == 1 else "train"
        width, height = TOY_FRAME_SIZES[int(rng.integers(len(TOY_FRAME_SIZES)))]
        # Frame defects: "noperson" (k = 0) and "hidden" (every object invisible).
        if v % 5 == 4:  # too short for the protocol: at most 2 usable frames
            n_frames = int(rng.integers(1, 5))
            defects = ["ok"] * min(n_frames, 2) + ["noperson", "hidden"][: max(n_frames - 2, 0)]
            defects = [defects[i] for i in rng.permutation(n_frames)]
        else:
            n_frames = int(rng.integers(4, 11))
            defects = rng.choice(["ok", "noperson", "hidden"], p=[0.82, 0.1, 0.08], size=n_frames)
            defects = [str(d) for d in defects]
            for i in rng.permutation(n_frames):  # keep at least three usable frames
                if sum(d == "ok" for d in defects) >= 3:
                    break
                defects[i] = "ok"
        numbers = np.sort(rng.choice(1200, size=n_frames, replace=False))

        n_obj = int(rng.integers(1, 5))
        classes = 2 + rng.choice(NUM_AG_CLASSES - 2, size=n_obj, replace=False, p=world.class_p)
        base_labels = [world.labels(rng, int(c)) for c in classes]
        base_boxes = [_base_box(rng, width, height) for _ in classes]
        person_base = _base_box(rng, width, height, person=True)

        for number, defect in zip(numbers.tolist(), defects, strict=True):
            key = f"{vid}/{number:06d}.png"
            meta = {"tag": key, "set": split}
            k = 0 if defect == "noperson" else (2 if rng.random() < 0.05 else 1)
            person = np.array(
                [_jitter(rng, person_base, width, height) for _ in range(k)], dtype=np.float32
            ).reshape(k, 4)
            person[:, 2:] += person[:, :2]  # xywh -> xyxy
            frame = _Frame(key, (width, height), person)
            visible = rng.random(n_obj) < 0.85
            if defect == "hidden":
                visible[:] = False
            elif not visible.any():
                visible[int(rng.integers(n_obj))] = True
            objs = []
            for i, cls in enumerate(classes.tolist()):
                entry: dict[str, Any] = {"class": AG_OBJECT_CLASSES[cls]}
                if visible[i]:
                    if rng.random() < 0.25:  # relations change now and then
                        base_labels[i] = world.labels(rng, cls)
                    labels = base_labels[i]
                    box = _jitter(rng, base_boxes[i], width, height)
                    entry.update(
                        bbox=box,
                        attention_relationship=[AG_PREDICATES[p] for p in labels if p < 3],
                        spatial_relationship=[AG_PREDICATES[p] for p in labels if 3 <= p < 9],
                        contacting_relationship=[AG_PREDICATES[p] for p in labels if p >= 9],
                        metadata=meta,
                        visible=True,
                    )
                    frame.visible.append((cls, box, list(labels)))
                else:
                    entry.update(
                        bbox=None,
                        attention_relationship=None,
                        spatial_relationship=None,
                        contacting_relationship=None,
                        metadata=meta,
                        visible=False,
                    )
                objs.append(entry)
            frames.append(frame)
            keypoints = None
            if k and rng.random() < 0.5:
                keypoints = rng.uniform(0, min(width, height), size=(k, 17, 3)).astype(np.float32)
            person_entries[key] = {
                "bbox": person,
                "bbox_score": rng.uniform(0.8, 1.0, size=k).astype(np.float32),
                "bbox_size": (width, height),
                "bbox_mode": "xyxy",
                "keypoints": keypoints,
            }
            object_entries[key] = objs
    # The release's pickles are not sorted; write both in one shuffled (seeded) order.
    order = [frames[i].key for i in rng.permutation(len(frames))]
    persons = {key: person_entries[key] for key in order}
    objects = {key: object_entries[key] for key in order}
    return frames, persons, objects


def _base_box(
    rng: np.random.Generator, width: int, height: int, *, person: bool = False
) -> tuple[float, float, float, float]:
    """A video-level xywh box; objects are now and then tiny (under 16 pixels on a side)."""
    if person:
        w, h = rng.uniform(0.2, 0.5) * width, rng.uniform(0.5, 0.95) * height
    elif rng.random() < 0.06:
        w, h = rng.uniform(6, 15), rng.uniform(6, 40)
        if rng.random() < 0.5:
            w, h = h, w
    else:
        w, h = rng.uniform(0.08, 0.45) * width, rng.uniform(0.08, 0.45) * height
    x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return (x, y, w, h)


def _jitter(
    rng: np.random.Generator, box: tuple[float, float, float, float], width: int, height: int
) -> tuple[float, float, float, float]:
    """The box drifted a little in this frame, clipped to the image, rounded to 0.1 px."""
    x, y, w, h = box
    dx, dy = rng.normal(0, 0.03, size=2) * (w, h)
    x = min(max(x + dx, 0.0), width - w)
    y = min(max(y + dy, 0.0), height - h)
    return (round(float(x), 1), round(float(y), 1), round(float(w), 1), round(float(h), 1))


def _xyxy(box: tuple[float, float, float, float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def _write_features(
    path: Path,
    world: _World,
    frames: list[_Frame],
    seed: int,
    config: ToyConfig,
    with_detections: bool,
    overwrite: bool,
) -> None:
    """The feature store: every frame with a person box, in sorted key order.

    ``gt``: the person box, then the frame's visible objects in annotation order; pairs (0, j)
    for every object j. ``det`` (optional): the person, then the detected objects (jittered GT
    boxes, some missed) and false positives; pairs (0, j) likewise. ``det_train``: ``det``'s
    boxes with their assigned classes (0 for false positives), then the missed GT objects
    supplied (score 1); pairs (0, m) for every GT object, found or supplied.
    """
    gt_rng = np.random.default_rng([seed, 3])
    det_rng = np.random.default_rng([seed, 4])
    object_dim = world.class_proto.shape[1]
    union_shape = world.pred_proto.shape[1:]

    def obj_features(rng: np.random.Generator, classes: list[int]) -> np.ndarray:
        noise = rng.normal(0.0, config.feature_noise, size=(len(classes), object_dim))
        return (world.class_proto[classes] + noise).astype(np.float32)

    def union_maps(
        rng: np.random.Generator, labels: list[list[int] | None], diagonal: bool
    ) -> np.ndarray:
        """The union table of a frame whose box ``m`` has relation ``labels[m]`` with box 0."""
        k = len(labels)
        _, first, second = union_pairs(np.array([k]), diagonal)
        out = rng.normal(0.0, config.union_noise, size=(len(first), *union_shape))
        for row in np.flatnonzero((first == 0) & (second > 0)).tolist():
            preds = labels[int(second[row])]
            if preds:
                out[row] += world.pred_proto[preds].sum(axis=0)
        return out.astype(np.float32)

    def class_dists(rng: np.random.Generator, classes: list[int]) -> np.ndarray:
        n = len(classes)
        logits = rng.normal(0.0, 1.0, size=(n, NUM_AG_CLASSES - 1))
        logits[np.arange(n), np.asarray(classes, dtype=np.int64) - 1] += rng.uniform(
            2.0, 6.0, size=n
        )
        dists = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (dists / dists.sum(axis=1, keepdims=True)).astype(np.float32)

    def pairs(n: int) -> np.ndarray:
        return np.stack([np.zeros(n, np.int64), np.arange(1, n + 1, dtype=np.int64)], axis=1)

    writer = FeatureStoreWriter(
        path,
        object_dim=object_dim,
        union_channels=int(union_shape[0]),
        union_size=int(union_shape[1]),
        num_classes=NUM_AG_CLASSES,
        sections=("gt", "det", "det_train") if with_detections else ("gt",),
        overwrite=overwrite,
    )
    tools = (obj_features, union_maps, class_dists)
    with writer:
        for frame in sorted(frames, key=lambda f: f.key):
            if not len(frame.person):
                continue
            person = frame.person[0].astype(np.float64)
            classes = [1] + [cls for cls, _, _ in frame.visible]
            boxes = np.array([person] + [_xyxy(b) for _, b, _ in frame.visible], np.float32)
            labels: list[list[int] | None] = [None] + [lab for _, _, lab in frame.visible]
            gt = FrameFeatures(
                boxes=boxes.reshape(-1, 4),
                box_features=obj_features(gt_rng, classes),
                pairs=pairs(len(labels) - 1),
                union_maps=union_maps(gt_rng, labels, diagonal=False),
                class_dists=class_dists(gt_rng, classes),
            )
            if not with_detections:
                writer.add_frame(frame.key, gt)
                continue
            det, det_train = _detections(det_rng, world, frame, config, tools, pairs)
            writer.add_frame(frame.key, gt, det=det, det_train=det_train)


def _detections(
    rng: np.random.Generator,
    world: _World,
    frame: _Frame,
    config: ToyConfig,
    tools: tuple[Any, Any, Any],
    pairs: Any,
) -> tuple[FrameFeatures, FrameFeatures]:
    """The toy detector's output for one frame (person always found, first), and the sgdet
    training inputs built from it (assigned labels, missed GT objects supplied)."""
    obj_features, union_maps, class_dists = tools
    width, height = frame.size
    boxes = [frame.person[0].astype(np.float64)]
    true_classes = [1]
    labels: list[list[int] | None] = [None]
    found: list[int] = []  # GT object of each found detection (after the person)
    missed: list[int] = []
    for g, (cls, box, lab) in enumerate(frame.visible):
        if rng.random() < config.detection_miss:
            missed.append(g)
            continue
        x, y, w, h = box
        dx, dy, dw, dh = rng.normal(0, 0.06, size=4) * (w, h, w, h)
        boxes.append(np.array([x + dx, y + dy, x + w + dx + dw, y + h + dy + dh]))
        true_classes.append(cls)
        labels.append(lab)
        found.append(g)
    for _ in range(int(rng.poisson(config.false_positives))):
        x, y, w, h = _base_box(rng, width, height)
        boxes.append(np.array([x, y, x + w, y + h]))
        true_classes.append(int(2 + rng.choice(NUM_AG_CLASSES - 2, p=world.class_p)))
        labels.append([])  # no relation: union maps are noise only
    n = len(boxes)
    arr = np.array(boxes, dtype=np.float64)
    arr[:, 0::2] = arr[:, 0::2].clip(0, width)
    arr[:, 1::2] = arr[:, 1::2].clip(0, height)
    dists = class_dists(rng, true_classes)
    scores = (dists.max(axis=1) * rng.uniform(0.7, 1.0, size=n)).astype(np.float32)
    features = obj_features(rng, true_classes)
    det = FrameFeatures(
        boxes=arr.astype(np.float32),
        box_features=features,
        pairs=pairs(n - 1),
        union_maps=union_maps(rng, labels, diagonal=True),
        class_dists=dists,
        scores=scores,
    )
    # Training inputs: detections keep their boxes; matched ones take their GT class.
    assigned = np.zeros(n, dtype=np.int64)
    assigned[: 1 + len(found)] = true_classes[: 1 + len(found)]
    supplied = [frame.visible[g] for g in missed]
    sup_classes = [cls for cls, _, _ in supplied]
    train_boxes = np.concatenate(
        [arr, np.array([_xyxy(b) for _, b, _ in supplied], np.float64).reshape(-1, 4)]
    )
    train_labels = labels + [lab for _, _, lab in supplied]
    targets = np.array(found + missed, dtype=np.int64)
    objects = np.concatenate([np.arange(1, 1 + len(found)), np.arange(n, n + len(missed))]).astype(
        np.int64
    )
    det_train = FrameFeatures(
        boxes=train_boxes.astype(np.float32),
        box_features=np.concatenate([features, obj_features(rng, sup_classes)]),
        pairs=np.stack([np.zeros_like(objects), objects], axis=1),
        union_maps=union_maps(rng, train_labels, diagonal=False),
        class_dists=np.concatenate([dists, class_dists(rng, sup_classes)]),
        scores=np.concatenate([scores, np.ones(len(missed), np.float32)]),
        labels=np.concatenate([assigned, np.asarray(sup_classes, dtype=np.int64)]),
        pair_targets=targets,
    )
    return det, det_train


def _readme(
    videos: int, seed: int, object_dim: int, union_channels: int, union_size: int, with_det: bool
) -> str:
    det = (
        "with 'det' and 'det_train' sections (toy detections for sgdet)"
        if with_det
        else "without detections"
    )
    return f"""m3sgg toy Action Genome dataset
================================

Synthetic data written by `m3sgg toy-data` (m3sgg.data.toy.make_toy_action_genome):
{videos} videos, seed {seed}. It is NOT real Action Genome: boxes, labels and features are random,
drawn from per-class priors, for tests, examples and smoke runs.

annotations/  exactly the real AG formats: squashed names in the text files, readable names in
              the pickles, xywh object boxes, xyxy person boxes, invisible objects, frames
              without a person, short videos the protocol drops, train and test splits.
features/     an m3sgg feature store (object_dim={object_dim}, union maps
              {union_channels}x{union_size}x{union_size}) {det}.
              Every frame with a person box. Object features = class prototype + noise; union
              maps of person-object pairs = sum of the pair's predicate prototypes + noise,
              so classes and predicates are learnable but not trivially.

Read it with:  m3sgg.data.action_genome.ActionGenome(root, "train", features=root / "features")
Regenerate:    m3sgg toy-data <out> --seed {seed} --videos {videos} --overwrite
"""

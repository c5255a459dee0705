"""Synthetic Action Genome videos (VideoSample with gt and det feature sections) for model tests.

The features carry signal: an object's box feature is a fixed random code of its class plus
noise, a person-object union map a fixed random code of its relation labels plus noise, so a model
can learn from them in a few steps. Widths are tiny (CPU tests).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from m3sgg.data.action_genome import VideoSample
from m3sgg.data.features import VideoFeatures, union_counts, union_pairs
from m3sgg.data.structures import VideoGT

OBJECT_DIM = 12
UNION_CHANNELS = 6
NUM_CLASSES = 37
#: Small STTran widths (token 3 * 8 + 2 * 4 = 32, divisible by the 4 heads).
TINY = {
    "object_dim": OBJECT_DIM,
    "union_channels": UNION_CHANNELS,
    "proj_dim": 8,
    "embed_dim": 4,
    "conv_dim": 8,
    "heads": 4,
    "ff_dim": 32,
    "enc_layers": 1,
    "dec_layers": 2,
}

_CODES = np.random.default_rng(1234)
CLASS_CODES = _CODES.normal(size=(NUM_CLASSES, OBJECT_DIM)).astype(np.float32)
RELATION_CODES = _CODES.normal(size=(26, UNION_CHANNELS * 49)).astype(np.float32)


def _random_box(rng: np.random.Generator) -> np.ndarray:
    x1, y1 = rng.uniform(0, 200, size=2)
    w, h = rng.uniform(20, 120, size=2)
    return np.array([x1, y1, x1 + w, y1 + h])


def make_video(
    index: int = 0,
    *,
    frames: int = 3,
    max_objects: int = 2,
    seed: int = 0,
    classes: tuple[int, ...] = (2, 3, 4, 5),
    det: bool = True,
    noise: float = 0.1,
) -> VideoSample:
    """One video: ``frames`` frames with 1..max_objects visible objects each.

    The det section holds, per frame, the person and each object jittered (IoU > 0.5 with its GT
    box) plus one spurious box far from everything; pairs are (person detection, every other
    detection).
    """
    rng = np.random.default_rng(seed)
    video_id = f"v{index:03d}.mp4"
    keys = tuple(f"{video_id}/{f:06d}.png" for f in range(frames))
    counts = rng.integers(1, max_objects + 1, size=frames)
    person = np.stack([_random_box(rng) for _ in range(frames)]).astype(np.float32)
    obj_frame = np.repeat(np.arange(frames), counts)
    num_obj = int(counts.sum())
    obj_class = rng.choice(classes, size=num_obj)
    obj_boxes = np.stack([_random_box(rng) for _ in range(num_obj)])
    rel_obj: list[int] = []
    rel_pred: list[int] = []
    multi_hot = np.zeros((num_obj, 26), dtype=np.float32)
    for o in range(num_obj):
        labels = [int(rng.integers(0, 3))]
        labels += sorted((3 + rng.choice(6, size=int(rng.integers(1, 3)), replace=False)).tolist())
        labels += sorted((9 + rng.choice(17, size=int(rng.integers(1, 3)), replace=False)).tolist())
        rel_obj += [o] * len(labels)
        rel_pred += labels
        multi_hot[o, labels] = 1
    gt = VideoGT(
        video_id=video_id,
        frame_keys=keys,
        person_boxes=person,
        obj_frame=obj_frame.astype(np.int64),
        obj_class=obj_class.astype(np.int64),
        obj_boxes=obj_boxes.astype(np.float64),
        rel_obj=np.array(rel_obj, dtype=np.int64),
        rel_pred=np.array(rel_pred, dtype=np.int64),
    )

    def box_code(cls: np.ndarray) -> np.ndarray:
        return CLASS_CODES[cls] + noise * rng.normal(size=(len(cls), OBJECT_DIM))

    def union_code(hot: np.ndarray) -> np.ndarray:
        """Union maps ``[len(hot), C, 7, 7]`` of relations with multi-hot labels ``hot``."""
        codes = hot @ RELATION_CODES + noise * rng.normal(size=(len(hot), UNION_CHANNELS * 49))
        return codes.reshape(-1, UNION_CHANNELS, 7, 7)

    # gt section: per frame the person then its objects; pairs (person, object).
    frame_of_box = np.repeat(np.arange(frames), counts + 1)
    box_xyxy = np.zeros((len(frame_of_box), 4))
    box_class = np.ones(len(frame_of_box), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts + 1)[:-1]])
    obj_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    box_xyxy[starts] = person
    obj_box = starts[obj_frame] + 1 + np.arange(num_obj) - obj_start[obj_frame]
    box_xyxy[obj_box] = obj_boxes
    box_class[obj_box] = obj_class
    gt_features = VideoFeatures(
        frame_keys=keys,
        boxes=np.column_stack([frame_of_box, box_xyxy]).astype(np.float32),
        box_features=box_code(box_class).astype(np.float32),
        pair_idx=np.column_stack([starts[obj_frame], obj_box]).astype(np.int64),
        im_idx=obj_frame.astype(np.int64),
        **_union_table(counts + 1, multi_hot, union_code, rng, diagonal=False),
        class_dists=_dists(rng, box_class),
    )
    det_features = _det_section(rng, gt, box_code, union_code, multi_hot) if det else None
    return VideoSample(index, video_id, gt, gt_features, det_features)


def _det_section(
    rng: np.random.Generator,
    gt: VideoGT,
    box_code: Callable[[np.ndarray], np.ndarray],
    union_code: Callable[[np.ndarray], np.ndarray],
    multi_hot: np.ndarray,
) -> VideoFeatures:
    boxes, classes, pairs, im_idx, hots = [], [], [], [], []
    offsets = gt.object_offsets()
    for f in range(gt.num_frames):
        first = len(boxes)
        frame_boxes = [gt.person_boxes[f].astype(np.float64)]
        frame_classes = [1]
        for o in range(offsets[f], offsets[f + 1]):
            frame_boxes.append(gt.obj_boxes[o] + rng.uniform(-2, 2, size=4))
            frame_classes.append(int(gt.obj_class[o]))
        frame_boxes.append(np.array([5000.0, 5000.0, 5040.0, 5040.0]))  # matches nothing
        frame_classes.append(int(gt.obj_class[0]))
        for k, (box, cls) in enumerate(zip(frame_boxes, frame_classes, strict=True)):
            boxes.append([f, *box])
            classes.append(cls)
            if k:
                pairs.append([first, first + k])
                im_idx.append(f)
                o = offsets[f] + k - 1
                hots.append(multi_hot[o] if o < offsets[f + 1] else np.zeros(26, np.float32))
    classes_arr = np.array(classes)
    counts = np.diff(offsets) + 2
    return VideoFeatures(
        frame_keys=gt.frame_keys,
        boxes=np.array(boxes, dtype=np.float32),
        box_features=box_code(classes_arr).astype(np.float32),
        pair_idx=np.array(pairs, dtype=np.int64).reshape(-1, 2),
        im_idx=np.array(im_idx, dtype=np.int64),
        **_union_table(counts, np.array(hots).reshape(-1, 26), union_code, rng, diagonal=True),
        class_dists=_dists(rng, classes_arr),
        scores=rng.uniform(0.5, 1.0, size=len(classes)).astype(np.float32),
    )


def _dists(rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
    """Detector-like distributions over classes 1..36 peaked on ``classes``."""
    dists = rng.uniform(0.0, 0.05, size=(len(classes), NUM_CLASSES - 1))
    dists[np.arange(len(classes)), classes - 1] = 0.6
    return (dists / dists.sum(axis=1, keepdims=True)).astype(np.float32)


def _union_table(
    counts: np.ndarray,
    person_hot: np.ndarray,
    union_code: Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator,
    *,
    diagonal: bool,
) -> dict:
    """Union maps of every box pair of each frame (``counts`` boxes; box 0 the person): the
    person's pair with box ``m`` codes ``person_hot`` of that object, other pairs are noise."""
    frame, first, second = union_pairs(counts, diagonal)
    hot = np.zeros((len(frame), 26), dtype=np.float32)
    person_pair = (first == 0) & (second > 0)
    obj_start = np.cumsum(counts - 1) - (counts - 1)
    hot[person_pair] = person_hot[obj_start[frame[person_pair]] + second[person_pair] - 1]
    maps = union_code(hot).astype(np.float32)
    return {
        "union_maps": maps,
        "union_offsets": np.concatenate([[0], np.cumsum(union_counts(counts, diagonal))]),
        "union_diagonal": diagonal,
    }

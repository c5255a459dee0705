"""Ground truth of one Action Genome video, held column-wise.

The reference evaluators consume the STTran structure, a list of frames where each frame is
``[{"person_bbox": (1,4), "frame": key}, obj_dict, obj_dict, ...]``. Building that for the full
dataset costs a Python dict per object, so readers and metrics use :class:`VideoGT` instead: a few
flat numpy arrays per video. :meth:`VideoGT.from_sttran` and :meth:`VideoGT.to_sttran` convert
both ways, losslessly (including repeated labels, which the reference counts twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from m3sgg.vocab import PREDICATE_OFFSETS

__all__ = ["GraphGT", "VideoGT"]

_GROUP_KEYS = (
    ("attention", "attention_relationship"),
    ("spatial", "spatial_relationship"),
    ("contacting", "contacting_relationship"),
)


def _as_index_list(value: Any) -> list[int]:
    """Group-local labels given as a list, tuple, numpy array or tensor → list of ints."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, int | np.integer):
        return [int(value)]
    return [int(v) for v in value]


@dataclass(frozen=True, eq=False)
class VideoGT:
    """Per-frame ground truth of one video, as the Action Genome metrics consume it.

    Objects are the *visible* objects of each frame in annotation order; the person is not an
    object (it is the subject of every relation and has its own box per frame).

    Attributes:
        video_id: e.g. ``"50N4E.mp4"``.
        frame_keys: ``F`` frame keys (``"50N4E.mp4/000682.png"``), in temporal order.
        person_boxes: float32 ``(F, 4)`` xyxy person box per frame.
        obj_frame: int64 ``(O,)`` frame index of each object, non-decreasing.
        obj_class: int64 ``(O,)`` class index in the 37-class space (never 0 or 1).
        obj_boxes: float64 ``(O, 4)`` xyxy object boxes.
        rel_obj: int64 ``(R,)`` object index of each ground-truth relation.
        rel_pred: int64 ``(R,)`` global predicate id (0..25) of each relation; relations are
            ordered by object, then attention, spatial, contacting, as in the annotation lists.
        image_size: ``(height, width)`` of the video's frames in box pixels (the annotated
            ``bbox_size`` of its first frame), or ``None`` when the annotations lack it.
    """

    video_id: str
    frame_keys: tuple[str, ...]
    person_boxes: np.ndarray
    obj_frame: np.ndarray
    obj_class: np.ndarray
    obj_boxes: np.ndarray
    rel_obj: np.ndarray
    rel_pred: np.ndarray
    image_size: tuple[float, float] | None = None

    @property
    def num_frames(self) -> int:
        return len(self.frame_keys)

    @property
    def num_objects(self) -> int:
        return int(self.obj_class.shape[0])

    @property
    def num_relations(self) -> int:
        return int(self.rel_pred.shape[0])

    def object_offsets(self) -> np.ndarray:
        """int64 ``(F + 1,)``: objects of frame ``f`` are ``offsets[f]:offsets[f + 1]``."""
        counts = np.bincount(self.obj_frame, minlength=self.num_frames)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @classmethod
    def from_sttran(
        cls, gt_annotation: Sequence[Sequence[dict]], video_id: str | None = None
    ) -> VideoGT:
        """Build from the STTran structure (list of frames ``[frame_info, obj, obj, ...]``).

        Boxes, classes and labels may be numbers, lists, numpy arrays or tensors. The values are
        gathered in Python lists and converted to arrays once per video (the usual inputs, plain
        lists and numpy arrays, are not converted one by one); the result is the same whatever
        the input types.
        """
        frame_keys: list[str] = []
        person: list[Any] = []
        obj_frame: list[int] = []
        obj_class: list[Any] = []
        obj_boxes: list[Any] = []
        rel_obj: list[int] = []
        rel_pred: list[int] = []
        offsets = [(PREDICATE_OFFSETS[group], key) for group, key in _GROUP_KEYS]
        for f, frame in enumerate(gt_annotation):
            info = frame[0]
            frame_keys.append(str(info.get("frame", f"{video_id or 'video'}/{f:06d}.png")))
            person.append(info["person_bbox"])
            first = len(obj_class)
            for obj in frame[1:]:
                o = len(obj_class)
                obj_class.append(obj["class"])
                obj_boxes.append(obj["bbox"])
                for offset, key in offsets:
                    labels = obj.get(key)
                    if labels is None:
                        continue
                    if type(labels) is not list:
                        labels = _as_index_list(labels)
                    if labels:
                        rel_obj.extend([o] * len(labels))
                        rel_pred.extend([offset + label for label in labels])
            obj_frame.extend([f] * (len(obj_class) - first))
        if video_id is None:
            video_id = frame_keys[0].split("/")[0] if frame_keys else ""
        return cls(
            video_id=video_id,
            frame_keys=tuple(frame_keys),
            person_boxes=_person_boxes(person),
            obj_frame=np.asarray(obj_frame, dtype=np.int64),
            obj_class=_class_array(obj_class),
            obj_boxes=_box_array(obj_boxes),
            rel_obj=np.asarray(rel_obj, dtype=np.int64),
            rel_pred=_int_array(rel_pred),
        )

    def to_sttran(self) -> list[list[dict]]:
        """The STTran structure, with group-local label lists, for code written against it."""
        offsets = self.object_offsets()
        frames: list[list[dict]] = []
        for f, key in enumerate(self.frame_keys):
            frame: list[dict] = [{"frame": key, "person_bbox": self.person_boxes[f : f + 1].copy()}]
            for o in range(offsets[f], offsets[f + 1]):
                labels = self.rel_pred[self.rel_obj == o]
                frame.append(
                    {
                        "class": int(self.obj_class[o]),
                        "bbox": self.obj_boxes[o].copy(),
                        "attention_relationship": [int(p) for p in labels if p < 3],
                        "spatial_relationship": [int(p) - 3 for p in labels if 3 <= p < 9],
                        "contacting_relationship": [int(p) - 9 for p in labels if p >= 9],
                    }
                )
            frames.append(frame)
        return frames


def _person_boxes(boxes: list[Any]) -> np.ndarray:
    """float32 ``(F, 4)``: each frame's first person box (zeros for a frame without one)."""
    try:  # the usual case: every frame one (1, 4) or (4,) box of one shape
        stacked = np.asarray([_to_numpy(box) for box in boxes], dtype=np.float32)
        if stacked.ndim >= 2 and stacked.shape[-1] == 4 and stacked.size == 4 * len(boxes):
            return stacked.reshape(-1, 4)
    except (ValueError, TypeError):
        pass
    rows = []
    for box in boxes:
        box = np.asarray(_to_numpy(box), dtype=np.float32).reshape(-1, 4)
        rows.append(box[0] if len(box) else np.zeros(4, np.float32))
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


def _box_array(boxes: list[Any]) -> np.ndarray:
    """float64 ``(O, 4)`` from boxes given as lists, arrays of shape (4,) or (1, 4)."""
    if boxes and hasattr(boxes[0], "detach"):  # tensors (any device): to numpy first
        boxes = [_to_numpy(b) for b in boxes]
    try:
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    except (ValueError, TypeError):  # mixed shapes or types: one at a time
        return np.asarray(
            [np.asarray(_to_numpy(b), dtype=np.float64).reshape(4) for b in boxes],
            dtype=np.float64,
        ).reshape(-1, 4)


def _int_array(values: list[Any]) -> np.ndarray:
    """int64 array of integer-valued labels (numpy integers and ints alike)."""
    array = np.asarray(values)
    if array.size and array.dtype.kind not in "iu":
        return np.asarray([int(v) for v in values], dtype=np.int64)
    return array.astype(np.int64, copy=False).reshape(-1)


def _class_array(classes: list[Any]) -> np.ndarray:
    """int64 ``(O,)`` from class indices given as ints, numpy scalars or one-element tensors."""
    if all(type(c) is int for c in classes):
        return np.asarray(classes, dtype=np.int64)
    return np.asarray([int(_to_numpy(c)) for c in classes], dtype=np.int64)


def _to_numpy(value: Any) -> Any:
    """Tensors → numpy without importing torch here; everything else unchanged."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


@dataclass(frozen=True, eq=False)
class GraphGT:
    """Ground truth of one EASG graph: one verb, its distinct object classes, multi-label edges.

    Attributes:
        graph_id: unique sample id (the graph uid, with ``":verb"`` appended where the SGG
            format splits one graph by verb).
        verb: verb class index.
        objects: int64 ``(n,)`` distinct object class indices (instances of a class merged).
        edges: bool ``(n, R)`` multi-hot edge labels verb → object ``i`` (R = 13 in EASG).

    GT triplets are ``(verb, objects[i], r)`` for every ``edges[i, r]``.
    """

    graph_id: str
    verb: int
    objects: np.ndarray
    edges: np.ndarray

    @property
    def num_triplets(self) -> int:
        return int(np.count_nonzero(self.edges))

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
        """Build from the STTran structure (list of frames ``[frame_info, obj, obj, ...]``)."""
        frame_keys: list[str] = []
        person: list[np.ndarray] = []
        obj_frame: list[int] = []
        obj_class: list[int] = []
        obj_boxes: list[Any] = []
        rel_obj: list[int] = []
        rel_pred: list[int] = []
        for f, frame in enumerate(gt_annotation):
            info = frame[0]
            frame_keys.append(str(info.get("frame", f"{video_id or 'video'}/{f:06d}.png")))
            box = np.asarray(_to_numpy(info["person_bbox"]), dtype=np.float32).reshape(-1, 4)
            person.append(box[0] if len(box) else np.zeros(4, np.float32))
            for obj in frame[1:]:
                o = len(obj_class)
                obj_frame.append(f)
                obj_class.append(int(_to_numpy(obj["class"])))
                obj_boxes.append(np.asarray(_to_numpy(obj["bbox"]), dtype=np.float64).reshape(4))
                for group, key in _GROUP_KEYS:
                    for label in _as_index_list(obj.get(key, ())):
                        rel_obj.append(o)
                        rel_pred.append(PREDICATE_OFFSETS[group] + label)
        if video_id is None:
            video_id = frame_keys[0].split("/")[0] if frame_keys else ""
        return cls(
            video_id=video_id,
            frame_keys=tuple(frame_keys),
            person_boxes=np.asarray(person, dtype=np.float32).reshape(-1, 4),
            obj_frame=np.asarray(obj_frame, dtype=np.int64),
            obj_class=np.asarray(obj_class, dtype=np.int64),
            obj_boxes=np.asarray(obj_boxes, dtype=np.float64).reshape(-1, 4),
            rel_obj=np.asarray(rel_obj, dtype=np.int64),
            rel_pred=np.asarray(rel_pred, dtype=np.int64),
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

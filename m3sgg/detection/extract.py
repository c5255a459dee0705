"""Run the AG detector over the frames of a video: the per-frame records of a feature store.

:func:`extract_video` takes one video's RGB frames (in temporal order) with their ground truth and
returns, per frame, one record per store section, as STTran's detector wrapper computes them
(:mod:`m3sgg.detection.modes`, :mod:`m3sgg.detection.assign`):

* ``gt``: the ground-truth boxes (person first, then the visible objects in annotation order),
  their box features, optionally their class distributions (sgcls), the pairs ``(0, j)`` (the
  person and each object) and the union map of **every unordered box pair** ``(i, j)``,
  ``i < j``, in lexicographic order (the feature store's union table);
* ``det`` (sgdet evaluation): the detections (boxes, features, class distributions, arg-max
  scores), the pairs ``(p, j)`` of the most person-like detection ``p`` (the highest score among
  the detections whose arg-max class is person) with each other detection (none without a
  person), and the union maps of every pair ``i <= j`` (a box with itself too: the union is the
  box);
* ``det_train`` (sgdet training): the detections plus the supplied ground-truth boxes, assigned
  labels, pairs, each pair's ground-truth object (index among the frame's visible objects) and
  the union maps of every pair ``i < j``.

A video's frames are preprocessed together as the original (zero-padded to the largest size,
``im_info`` scale of the first frame) and run ``batch_frames`` at a time; results do not depend
on the batching (the sgdet clipping quirk follows the frame's index in the video). On CUDA the
network can run under autocast (``dtype`` bfloat16 or float16); box arithmetic stays float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from m3sgg.detection import modes
from m3sgg.detection.assign import training_frame
from m3sgg.detection.faster_rcnn import ActionGenomeDetector
from m3sgg.detection.image import prepare_frame

__all__ = ["SECTIONS", "Record", "extract_video", "union_table_pairs"]

#: The sections :func:`extract_video` can fill.
SECTIONS = ("gt", "det", "det_train")

#: One frame's arrays per section: ``{section: {field: array}}``.
Record = dict[str, dict[str, np.ndarray]]


def union_table_pairs(count: int, diagonal: bool, device: torch.device | str = "cpu") -> Tensor:
    """Rows ``(i, j)`` of a union table of ``count`` boxes: ``i < j`` (``i <= j`` with the
    diagonal), lexicographic: ``[U, 2]``."""
    first, second = torch.triu_indices(count, count, offset=0 if diagonal else 1, device=device)
    return torch.stack([first, second], dim=1)


def _numpy(t: Tensor, dtype: np.dtype | type = np.float32) -> np.ndarray:
    return (
        t.detach().to("cpu", torch.float32 if dtype is np.float32 else None).numpy().astype(dtype)
    )


def _maps(
    detector: ActionGenomeDetector,
    base: Tensor,
    boxes: Tensor,
    index: int,
    scale: Tensor,
    diagonal: bool,
    map_dtype: torch.dtype,
) -> np.ndarray:
    pairs = union_table_pairs(boxes.shape[0], diagonal, boxes.device)
    frame = torch.full((boxes.shape[0],), index, device=boxes.device)
    maps = modes.union_maps(detector, base, boxes, frame, pairs, scale)
    return maps.to(map_dtype).cpu().numpy()


def _person_pairs(labels: Tensor, scores: Tensor) -> np.ndarray:
    person = (labels == 1).nonzero().flatten()
    if person.numel() == 0:
        return np.zeros((0, 2), dtype=np.int64)
    subject = int(person[scores[person].argmax()])
    others = [j for j in range(labels.shape[0]) if j != subject]
    return np.array([[subject, j] for j in others], dtype=np.int64).reshape(-1, 2)


def extract_video(
    detector: ActionGenomeDetector,
    images: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    sections: Sequence[str] = ("gt",),
    gt_class_dists: bool = True,
    batch_frames: int = 10,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    map_dtype: torch.dtype = torch.float16,
) -> list[Record]:
    """Records of one video's frames (see the module docstring).

    Args:
        detector: the detector, already on ``device`` and in eval mode.
        images: ``F`` RGB ``uint8`` frames ``[H, W, 3]``.
        gt_boxes: per frame ``(k, 4)`` xyxy boxes in frame pixels, person first.
        gt_labels: per frame ``(k,)`` classes in the 37-class space (person 1).
        sections: which of :data:`SECTIONS` to compute.
        gt_class_dists: give the ``gt`` boxes' class distributions too (sgcls needs them).
        batch_frames: frames per network call.
        device: where the network runs.
        dtype: ``float32``, or ``bfloat16`` / ``float16`` for autocast on CUDA.
        map_dtype: dtype of the returned union maps (the store's storage dtype).
    """
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"extract_video: unknown sections {unknown}; expected some of {SECTIONS}")
    device = torch.device(device)
    prepared = [prepare_frame(image) for image in images]
    height = max(im.shape[0] for im, _ in prepared)
    width = max(im.shape[1] for im, _ in prepared)
    scale = torch.tensor(prepared[0][1], dtype=torch.float32).to(device)
    detections = "det" in sections or "det_train" in sections
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    records: list[Record] = []
    for start in range(0, len(prepared), batch_frames):
        chunk = prepared[start : start + batch_frames]
        blob = np.zeros((len(chunk), height, width, 3), dtype=np.float32)
        for i, (im, _) in enumerate(chunk):
            blob[i, : im.shape[0], : im.shape[1]] = im
        x = torch.from_numpy(blob).permute(0, 3, 1, 2).to(device)
        info = torch.tensor([[height, width, float(scale)]] * len(chunk), dtype=torch.float32)
        info = info.to(device)
        with torch.inference_mode(), autocast:
            if detections:
                dets, base = modes.detect(detector, x, info, first_frame=start)
            else:
                base = detector.base(x)
            for i in range(len(chunk)):
                f = start + i
                records.append(
                    _frame_record(
                        detector,
                        base,
                        i,
                        scale,
                        np.asarray(gt_boxes[f], dtype=np.float32).reshape(-1, 4),
                        np.asarray(gt_labels[f], dtype=np.int64),
                        dets[i] if detections else None,
                        sections,
                        gt_class_dists,
                        map_dtype,
                    )
                )
    return records


def _frame_record(
    detector: ActionGenomeDetector,
    base: Tensor,
    index: int,
    scale: Tensor,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    dets: modes.FrameDetections | None,
    sections: Sequence[str],
    gt_class_dists: bool,
    map_dtype: torch.dtype,
) -> Record:
    record: Record = {}
    device = base.device
    if "gt" in sections:
        boxes = torch.from_numpy(gt_boxes).to(device)
        frame = torch.full((boxes.shape[0],), index, device=device)
        out = modes.gt_box_outputs(detector, base, boxes, frame, scale, gt_class_dists)
        k = boxes.shape[0]
        fields = {
            "boxes": gt_boxes,
            "box_features": _numpy(out.features),
            "pairs": np.stack([np.zeros(k - 1, np.int64), np.arange(1, k)], axis=1),
            "union_maps": _maps(detector, base, boxes, index, scale, False, map_dtype),
        }
        if out.class_dists is not None:
            fields["class_dists"] = _numpy(out.class_dists)
        record["gt"] = fields
    if dets is not None and "det" in sections:
        record["det"] = {
            "boxes": _numpy(dets.boxes),
            "box_features": _numpy(dets.features),
            "class_dists": _numpy(dets.class_dists),
            "scores": _numpy(dets.scores),
            "pairs": _person_pairs(dets.labels, dets.scores),
            "union_maps": _maps(detector, base, dets.boxes, index, scale, True, map_dtype),
        }
    if dets is not None and "det_train" in sections:
        tf = training_frame(detector, base[index : index + 1], scale, dets, gt_boxes, gt_labels)
        record["det_train"] = {
            "boxes": _numpy(tf.boxes),
            "box_features": _numpy(tf.features),
            "class_dists": _numpy(tf.class_dists),
            "scores": _numpy(tf.scores),
            "labels": _numpy(tf.labels, np.int64),
            "pairs": _numpy(tf.pairs, np.int64),
            # Stored as the index among the frame's visible objects (the person is not one).
            "pair_targets": _numpy(tf.pair_targets, np.int64) - 1,
            "union_maps": _maps(detector, base, tf.boxes, index, scale, False, map_dtype),
        }
    return record

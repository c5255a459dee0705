"""VideoGT.from_sttran: the STTran list of frames in any of the input types users pass."""

from __future__ import annotations

import numpy as np
import torch

from m3sgg.data.structures import VideoGT


def _frames(kind: str) -> list[list[dict]]:
    """Two frames of video ``v.mp4``; the second has no person box and two objects. ``kind``
    picks how values are given: python lists/ints, numpy arrays, or tensors (as STTran's loader
    gives the relationship lists)."""

    def box(values, shape=(4,)):
        if kind == "list":
            return list(values)
        array = np.asarray(values, np.float64).reshape(shape)
        return torch.from_numpy(array) if kind == "tensor" else array

    def labels(values):
        if kind == "tensor":
            return torch.tensor(values, dtype=torch.long)
        return np.asarray(values, np.int64) if kind == "numpy" else list(values)

    def cls(value):
        return (
            torch.tensor(value)
            if kind == "tensor"
            else (np.int64(value) if kind == "numpy" else value)
        )

    person0 = np.asarray([[1, 2, 3, 4]], np.float32)
    return [
        [
            {"frame": "v.mp4/000001.png", "person_bbox": person0},
            {
                "class": cls(5),
                "bbox": box([10, 10, 20, 20]),
                "attention_relationship": labels([1]),
                "spatial_relationship": labels([0, 2]),
                "contacting_relationship": labels([]),
            },
        ],
        [
            {"frame": "v.mp4/000002.png", "person_bbox": np.zeros((0, 4), np.float32)},
            {
                "class": cls(7),
                "bbox": box([0, 0, 5, 5], (1, 4)),
                "attention_relationship": labels([2]),
                "spatial_relationship": labels([]),
                "contacting_relationship": labels([16, 3]),
            },
            {"class": cls(9), "bbox": box([1, 1, 2, 2])},  # no relationship lists at all
        ],
    ]


def test_from_sttran_gives_the_same_arrays_for_every_input_type() -> None:
    for kind in ("list", "numpy", "tensor"):
        gt = VideoGT.from_sttran(_frames(kind))
        assert gt.video_id == "v.mp4"
        assert gt.frame_keys == ("v.mp4/000001.png", "v.mp4/000002.png")
        assert gt.person_boxes.dtype == np.float32
        np.testing.assert_array_equal(gt.person_boxes, [[1, 2, 3, 4], [0, 0, 0, 0]])
        assert gt.obj_frame.tolist() == [0, 1, 1] and gt.obj_class.tolist() == [5, 7, 9]
        assert gt.obj_boxes.dtype == np.float64
        np.testing.assert_array_equal(gt.obj_boxes, [[10, 10, 20, 20], [0, 0, 5, 5], [1, 1, 2, 2]])
        # attention 1 -> 1; spatial 0, 2 -> 3, 5; attention 2 -> 2; contacting 16, 3 -> 25, 12
        assert gt.rel_obj.tolist() == [0, 0, 0, 1, 1, 1]
        assert gt.rel_pred.tolist() == [1, 3, 5, 2, 25, 12]
        for array in (gt.obj_frame, gt.obj_class, gt.rel_obj, gt.rel_pred):
            assert array.dtype == np.int64
        back = VideoGT.from_sttran(gt.to_sttran())
        assert back.rel_pred.tolist() == gt.rel_pred.tolist()


def test_from_sttran_of_an_empty_video() -> None:
    gt = VideoGT.from_sttran([], video_id="empty")
    assert gt.num_frames == 0 and gt.person_boxes.shape == (0, 4)
    assert gt.obj_boxes.shape == (0, 4) and gt.rel_pred.shape == (0,)

"""Resumable extraction: an interrupted run keeps finished videos and a rerun skips them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from m3sgg.detection.extract import extract_video
from m3sgg.detection.faster_rcnn import ActionGenomeDetector
from m3sgg.detection.spool import SpoolVideo, extract_to_spool, read_spooled_video, spool_file
from m3sgg.errors import DataError


def _videos() -> tuple[list[SpoolVideo], dict[Path, np.ndarray]]:
    gen = np.random.default_rng(1)
    videos, images = [], {}
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        keys = tuple(f"{name}/{i:06d}.png" for i in range(2))
        paths = tuple(Path("/frames") / key for key in keys)
        for path in paths:
            images[path] = gen.integers(0, 256, (10, 16, 3), dtype=np.uint8)
        boxes = tuple(np.array([[1.0, 1, 6, 8], [4, 2, 12, 9]], np.float32) for _ in keys)
        labels = tuple(np.array([1, 5]) for _ in keys)
        videos.append(SpoolVideo(name, keys, paths, boxes, labels))
    return videos, images


def test_interrupted_extraction_resumes(
    tiny_detector: ActionGenomeDetector, tmp_path: Path
) -> None:
    videos, images = _videos()
    spool = tmp_path / "spool"

    def failing(path: Path) -> np.ndarray:
        if "b.mp4" in str(path):
            raise KeyboardInterrupt  # the user stops the run while video b is being read
        return images[path]

    with pytest.raises(KeyboardInterrupt):
        extract_to_spool(tiny_detector, videos, spool, failing, options={"weights": "w.pth"})
    assert spool_file(spool, "a.mp4").exists() and not spool_file(spool, "b.mp4").exists()
    assert [p.name for p in (spool / "videos").iterdir()] == ["a.mp4.npz"]  # no temporary left

    lines: list[str] = []
    counts = extract_to_spool(
        tiny_detector,
        videos,
        spool,
        images.__getitem__,
        options={"weights": "w.pth"},
        progress=lines.append,
    )
    assert counts == {"videos": 2, "skipped": 1, "frames": 4}
    assert lines[0] == "extract-features: resuming, 1 videos already done"
    assert lines[-1].startswith("extract-features: 3/3 videos, ")
    for video in videos:
        keys, records = read_spooled_video(spool_file(spool, video.video_id))
        assert keys == list(video.keys)
        expected = extract_video(
            tiny_detector, [images[p] for p in video.paths], video.gt_boxes, video.gt_labels
        )
        for got, want in zip(records, expected, strict=True):
            assert got.keys() == want.keys() == {"gt"}
            for field, value in want["gt"].items():
                np.testing.assert_array_equal(got["gt"][field], value)
                assert got["gt"][field].dtype == value.dtype
    # A rerun with other options is refused instead of mixing two extractions.
    with pytest.raises(DataError, match="other options"):
        extract_to_spool(
            tiny_detector, videos, spool, images.__getitem__, options={"weights": "other.pth"}
        )
    # Nothing left to do: everything is skipped.
    again = extract_to_spool(
        tiny_detector, videos, spool, images.__getitem__, options={"weights": "w.pth"}
    )
    assert again == {"videos": 0, "skipped": 3, "frames": 0}


def test_spooled_dtypes(tiny_detector: ActionGenomeDetector, tmp_path: Path) -> None:
    videos, images = _videos()
    extract_to_spool(
        tiny_detector, videos[:1], tmp_path, images.__getitem__, map_dtype=torch.float32
    )
    _, records = read_spooled_video(spool_file(tmp_path, "a.mp4"))
    gt = records[0]["gt"]
    assert gt["union_maps"].dtype == np.float32 and gt["union_maps"].shape[0] == 1
    assert gt["pairs"].dtype == np.int64 and gt["boxes"].dtype == np.float32

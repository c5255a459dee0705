"""Resumable extraction with the AG detector: one finished file per video, skipped on restart.

Full Action Genome is about 9.8k videos and 288k frames: hours of GPU time and days of CPU time,
so an interrupted extraction must not start over. :func:`extract_to_spool` writes each video's
records (:func:`m3sgg.detection.extract.extract_video`) to ``<spool>/videos/<video>.npz`` as soon
as the video is done, atomically (a temporary file renamed into place), and skips the videos whose
file exists. ``<spool>/options.json`` records what the files hold (sections, dtypes, weights
file); a restart with other options is refused rather than mixing two extractions.
:func:`read_spooled_video` gives a video's records back.

File layout: one ``.npz`` (``np.savez``, read without pickle) per video, keys
``"{frame index}/{section}/{field}"`` plus ``"keys"`` (the frame keys, in video order).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m3sgg.detection.extract import SECTIONS, Record, extract_video
from m3sgg.detection.faster_rcnn import ActionGenomeDetector
from m3sgg.errors import DataError

__all__ = ["SpoolVideo", "extract_to_spool", "read_spooled_video", "spool_file"]


@dataclass(frozen=True)
class SpoolVideo:
    """One video to extract: its id, frame keys and image paths (video order), ground truth.

    ``gt_boxes[f]`` is ``(k, 4)`` xyxy frame pixels, person first; ``gt_labels[f]`` ``(k,)``.
    """

    video_id: str
    keys: tuple[str, ...]
    paths: tuple[Path, ...]
    gt_boxes: tuple[np.ndarray, ...]
    gt_labels: tuple[np.ndarray, ...]


def spool_file(spool: Path, video_id: str) -> Path:
    """Where a video's records go (``/`` in an id would make folders: it is replaced)."""
    return Path(spool) / "videos" / (video_id.replace(os.sep, "_") + ".npz")


def _save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_spooled_video(path: Path) -> tuple[list[str], list[Record]]:
    """The frame keys and per-frame records of one spooled video."""
    with np.load(path, allow_pickle=False) as data:
        keys = [str(k) for k in data["keys"]]
        records: list[Record] = [{} for _ in keys]
        for name in data.files:
            if name == "keys":
                continue
            f, section, field = name.split("/")
            records[int(f)].setdefault(section, {})[field] = data[name]
    return keys, records


def _check_options(spool: Path, options: dict[str, Any]) -> None:
    path = spool / "options.json"
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != options:
            raise DataError(
                path,
                f"an unfinished extraction with other options ({previous}) is here; remove "
                f"the folder to start over, or rerun with the same options to resume",
            )
        return
    (spool / "videos").mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".options.json.tmp")
    tmp.write_text(json.dumps(options, indent=1, sort_keys=True))
    os.replace(tmp, path)


def extract_to_spool(
    detector: ActionGenomeDetector,
    videos: Sequence[SpoolVideo],
    spool: str | os.PathLike[str],
    read_image: Callable[[Path], np.ndarray],
    *,
    sections: Sequence[str] = ("gt",),
    gt_class_dists: bool = True,
    options: dict[str, Any] | None = None,
    batch_frames: int = 10,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    map_dtype: torch.dtype = torch.float16,
    workers: int = 2,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Extract every video not yet in ``spool``; returns counts (videos done / skipped, frames).

    ``options`` (JSON) identify the extraction (the caller adds e.g. the weights file); sections,
    class distributions and dtypes are added to them. ``read_image`` gives a frame's RGB
    ``uint8`` image (``DataError`` when unreadable). Images of the next video are read in
    ``workers`` threads while the detector runs.
    """
    spool = Path(spool)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"extract_to_spool: unknown sections {unknown}")
    record = dict(options or {})
    record.update(
        sections=list(sections),
        gt_class_dists=gt_class_dists,
        map_dtype=str(map_dtype).removeprefix("torch."),
    )
    _check_options(spool, record)
    todo = [v for v in videos if not spool_file(spool, v.video_id).exists()]
    counts = {"videos": 0, "skipped": len(videos) - len(todo), "frames": 0}
    total_frames = sum(len(v.keys) for v in todo)
    start = time.perf_counter()
    if progress is not None and counts["skipped"]:
        progress(f"extract-features: resuming, {counts['skipped']} videos already done")

    def load(video: SpoolVideo) -> list[np.ndarray]:
        return [read_image(path) for path in video.paths]

    pool = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="m3sgg-frames")
    try:
        pending = pool.submit(load, todo[0]) if todo else None
        for i, video in enumerate(todo):
            assert pending is not None
            images = pending.result()
            pending = pool.submit(load, todo[i + 1]) if i + 1 < len(todo) else None
            records = extract_video(
                detector,
                images,
                video.gt_boxes,
                video.gt_labels,
                sections=sections,
                gt_class_dists=gt_class_dists,
                batch_frames=batch_frames,
                device=device,
                dtype=dtype,
                map_dtype=map_dtype,
            )
            arrays: dict[str, np.ndarray] = {"keys": np.array(video.keys)}
            for f, rec in enumerate(records):
                for section, fields in rec.items():
                    for field, value in fields.items():
                        arrays[f"{f}/{section}/{field}"] = value
            _save_atomic(spool_file(spool, video.video_id), arrays)
            counts["videos"] += 1
            counts["frames"] += len(video.keys)
            if progress is not None:
                rate = counts["frames"] / max(time.perf_counter() - start, 1e-9)
                left = (total_frames - counts["frames"]) / max(rate, 1e-9)
                progress(
                    f"extract-features: {counts['videos'] + counts['skipped']}/{len(videos)} "
                    f"videos, {rate:.2f} frames/s, eta {int(left // 60)}m{int(left % 60):02d}s"
                )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return counts

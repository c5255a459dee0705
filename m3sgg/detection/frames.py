"""The frames ``m3sgg extract-features`` reads: which ones (the reader's protocol), their
images (Pillow, RGB) and batches of same-size neighbours, decoded ahead in threads."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3sgg.data.action_genome import ANNOTATION_FILES, ActionGenome
from m3sgg.data.safe_pickle import load_pickle
from m3sgg.errors import ConfigError, DataError


@dataclass(frozen=True, eq=False)
class _Frame:
    """One frame to extract: its key, image path, gt boxes (person first), annotated size."""

    key: str
    path: Path
    boxes: np.ndarray  # float32 (1 + objects, 4) xyxy, annotation pixels
    size: tuple[float, float] | None  # annotated (w, h), None if unknown


def _annotated_sizes(root: Path) -> dict[str, tuple[float, float]]:
    """``bbox_size`` (w, h) of every frame in ``person_bbox.pkl`` that has a valid one."""
    persons = load_pickle(root / "annotations" / ANNOTATION_FILES["person_bbox"])
    sizes: dict[str, tuple[float, float]] = {}
    if not isinstance(persons, dict):
        return sizes
    for key, entry in persons.items():
        size = entry.get("bbox_size") if isinstance(entry, dict) else None
        try:
            w, h = (float(v) for v in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            continue
        if np.isfinite(w) and np.isfinite(h) and w > 0 and h > 0:
            sizes[key] = (w, h)
    return sizes


def _frames_to_extract(root: Path, splits: Sequence[str], require_frames: bool) -> list[_Frame]:
    """The frames the reader keeps in ``splits`` (default protocol), sorted by key."""
    sizes = _annotated_sizes(root)
    frames: list[_Frame] = []
    for split in splits:
        dataset = ActionGenome(root, split, require_frames=require_frames)
        for index in range(len(dataset)):
            gt = dataset.video_gt(index)
            offsets = gt.object_offsets()
            for f, key in enumerate(gt.frame_keys):
                boxes = np.concatenate(
                    [gt.person_boxes[f : f + 1], gt.obj_boxes[offsets[f] : offsets[f + 1]]]
                ).astype(np.float32)
                frames.append(_Frame(key, root / "frames" / key, boxes, sizes.get(key)))
    frames.sort(key=lambda frame: frame.key)
    return frames


def _import_pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError(
            "extract-features reads frame images with Pillow, which is not installed: "
            "pip install Pillow"
        ) from None
    return Image


def _check_paths(root: Path, out: Path, overwrite: bool) -> None:
    """What an extraction checks before any work: ``out`` is free (or ``overwrite``), the
    ``<root>/frames`` folder exists and Pillow imports."""
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise DataError(out, "already exists; pass --overwrite (overwrite=True) to replace it")
    if not (root / "frames").is_dir():
        raise DataError(
            root / "frames", "frames folder not found (expected <root>/frames/<video>/<frame>)"
        )
    _import_pillow()


def _read_image(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB; DataError naming the file if it is missing or unreadable."""
    image_module = _import_pillow()
    try:
        with image_module.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DataError(
            path,
            "frame image not found (pass --skip-missing-frames to leave such frames out, and "
            "read the store with require_frames=True)",
        ) from None
    except (OSError, ValueError, SyntaxError) as err:  # UnidentifiedImageError is an OSError
        raise DataError(path, f"cannot read image ({type(err).__name__}: {err})") from None


def _prefetch(
    fn: Callable[[_Frame], np.ndarray], frames: Sequence[_Frame], ahead: int, workers: int
) -> Iterator[tuple[_Frame, np.ndarray]]:
    """``(frame, fn(frame))`` in order, decoding up to ``ahead`` frames in ``workers`` threads."""
    if workers <= 0:
        for frame in frames:
            yield frame, fn(frame)
        return
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="m3sgg-frames")
    pending: deque[tuple[_Frame, Future[np.ndarray]]] = deque()
    items = iter(frames)
    try:
        for frame in items:
            pending.append((frame, executor.submit(fn, frame)))
            if len(pending) >= ahead:
                break
        while pending:
            frame, future = pending.popleft()
            image = future.result()
            nxt = next(items, None)
            if nxt is not None:
                pending.append((nxt, executor.submit(fn, nxt)))
            yield frame, image
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _batches(
    loaded: Iterable[tuple[_Frame, np.ndarray]], batch_frames: int
) -> Iterator[list[tuple[_Frame, np.ndarray]]]:
    """Consecutive frames of one image size, at most ``batch_frames`` per batch."""
    batch: list[tuple[_Frame, np.ndarray]] = []
    for frame, image in loaded:
        if batch and (len(batch) == batch_frames or image.shape != batch[0][1].shape):
            yield batch
            batch = []
        batch.append((frame, image))
    if batch:
        yield batch

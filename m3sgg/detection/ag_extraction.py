"""``m3sgg extract-features --detector ag-faster-rcnn``: STTran's features from the frames.

Runs :class:`~m3sgg.detection.ActionGenomeDetector` (``--weights faster_rcnn_ag.pth``) over the
frames the Action Genome reader keeps and writes a feature store: ``--mode predcls`` the ``gt``
section (GT box features, union table); ``sgcls`` also the detector's class distributions of the
GT boxes; ``sgdet`` also the ``det`` and ``det_train`` sections. Videos are extracted into a
folder beside the store (``.<out>.partial``), one file per finished video, so an interrupted
run resumes where it stopped; the store is written from it at the end and the folder removed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from m3sgg.data.action_genome import SPLITS, ActionGenome
from m3sgg.data.features import FeatureStoreWriter, FrameFeatures
from m3sgg.detection.spool import SpoolVideo
from m3sgg.errors import ConfigError, DataError

__all__ = ["MODES", "ag_videos", "extract_with_detector"]

#: ``--mode`` -> (sections, GT class distributions).
MODES = {
    "predcls": (("gt",), False),
    "sgcls": (("gt",), True),
    "sgdet": (("gt", "det", "det_train"), True),
}
PRECISIONS = ("float32", "bfloat16", "float16")


def ag_videos(root: Path, splits: Sequence[str], require_frames: bool) -> list[SpoolVideo]:
    """The kept videos of ``splits`` as :class:`~m3sgg.detection.spool.SpoolVideo` records."""
    videos = []
    for split in splits:
        dataset = ActionGenome(root, split, require_frames=require_frames)
        for index in range(len(dataset)):
            gt = dataset.video_gt(index)
            offsets = gt.object_offsets()
            boxes, labels = [], []
            for f in range(len(gt.frame_keys)):
                objects = slice(offsets[f], offsets[f + 1])
                boxes.append(
                    np.concatenate([gt.person_boxes[f : f + 1], gt.obj_boxes[objects]]).astype(
                        np.float32
                    )
                )
                labels.append(np.concatenate([[1], gt.obj_class[objects]]).astype(np.int64))
            videos.append(
                SpoolVideo(
                    gt.video_id,
                    tuple(gt.frame_keys),
                    tuple(root / "frames" / key for key in gt.frame_keys),
                    tuple(boxes),
                    tuple(labels),
                )
            )
    return videos


def extract_with_detector(
    dataset_root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    *,
    mode: str = "predcls",
    splits: Sequence[str] = SPLITS,
    device: str = "cpu",
    precision: str = "float32",
    dtype: str = "float16",
    batch_frames: int = 10,
    workers: int = 2,
    skip_missing_frames: bool = False,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Extract a feature store with the AG detector (see the module docstring); returns ``out``."""
    import torch

    from m3sgg.detection import ActionGenomeDetector
    from m3sgg.detection.extraction import _device
    from m3sgg.detection.frames import _check_paths, _read_image
    from m3sgg.detection.spool import extract_to_spool, read_spooled_video, spool_file

    start = time.perf_counter()
    root, out_path, weights_path = Path(dataset_root), Path(out), Path(weights)
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if dtype not in ("float16", "float32"):
        raise ConfigError(f"dtype must be float16 or float32, got {dtype!r}")
    dev = _device(device)
    if precision != "float32" and dev.type != "cuda":
        raise ConfigError(f"precision {precision} needs a CUDA device (got {device!r})")
    _check_paths(root, out_path, overwrite)
    detector = ActionGenomeDetector.from_original(weights_path)
    if detector.config.num_classes != 37:
        raise DataError(
            weights_path,
            f"a detector with {detector.config.num_classes} classes; the Action Genome detector "
            "has 37 (background, person and 35 objects)",
            "RCNN_cls_score.weight",
        )
    detector = detector.to(dev)
    videos = ag_videos(root, splits, require_frames=skip_missing_frames)
    if not videos:
        raise DataError(root, f"no videos to extract in splits {list(splits)}")
    sections, class_dists = MODES[mode]
    spool = out_path.parent / f".{out_path.name}.partial"
    stat = weights_path.stat()
    options = {
        "weights": str(weights_path.resolve()),
        "weights_bytes": stat.st_size,
        "weights_mtime_ns": stat.st_mtime_ns,
        "splits": list(splits),
        "precision": precision,
        "skip_missing_frames": skip_missing_frames,
    }
    map_dtype = torch.float16 if dtype == "float16" else torch.float32
    extract_to_spool(
        detector,
        videos,
        spool,
        _read_image,
        sections=sections,
        gt_class_dists=class_dists,
        options=options,
        batch_frames=batch_frames,
        device=dev,
        dtype=getattr(torch, precision),
        map_dtype=map_dtype,
        workers=workers,
        progress=progress,
    )
    config = detector.config
    frames = 0
    with FeatureStoreWriter(
        out_path,
        object_dim=config.resnet.head_channels,
        union_channels=config.resnet.base_channels,
        union_size=config.pooled_size,
        num_classes=config.num_classes,
        sections=sections,
        gt_class_dists=class_dists,
        dtype=dtype,
        overwrite=overwrite,
    ) as writer:
        for video in videos:
            keys, records = read_spooled_video(spool_file(spool, video.video_id))
            for key, record in zip(keys, records, strict=True):
                parts = {s: FrameFeatures(**record[s]) for s in sections}
                writer.add_frame(
                    key, parts["gt"], det=parts.get("det"), det_train=parts.get("det_train")
                )
                frames += 1
    shutil.rmtree(spool, ignore_errors=True)
    if progress is not None:
        progress(
            f"extract-features: wrote {frames} frames of {len(videos)} videos ({mode}, {dtype}) "
            f"to {out_path} in {time.perf_counter() - start:.0f} s"
        )
    return out_path

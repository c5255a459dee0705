"""``m3sgg extract-features``: backbone + RoIAlign over Action Genome frames → a feature store.

Why: training reads precomputed features (:mod:`m3sgg.data.features`) instead of running a
detector backbone at every step. This module computes them once from the frame images:

1. the frames the Action Genome reader keeps (default protocol, both splits unless told
   otherwise) are read from ``<root>/frames/<video>.mp4/<frame>.png`` with Pillow, as RGB in
   [0, 1] normalised with the ImageNet mean and std (torchvision's convention);
2. a backbone turns a batch of frames into feature maps ``[B, C, H / stride, W / stride]``;
3. :func:`~m3sgg.ops.roi_align.roi_align` (``pool_size`` x ``pool_size`` bins, ``sampling_ratio``
   samples per bin, aligned) pools each box, and the bins are averaged: one ``C``-vector per box;
4. the store's ``gt`` section gets, per frame, the person box then the visible objects in
   annotation order (exactly what :class:`~m3sgg.data.action_genome.ActionGenome` expects), pairs
   ``(0, j)`` for every object ``j``, and union features pooled the same way over the union box
   of each pair (the smallest box holding both);
5. with ``detections`` (sgdet), the ``det`` section gets the detected boxes the same way (see
   the layout below).

``object_dim`` and ``union_channels`` of the store both equal the backbone's channel count ``C``
(the union maps are the ``pool_size`` x ``pool_size`` RoIAlign bins, not averaged; STTran needs
7x7); the ``gt`` section has no class distributions (a plain backbone has no classifier);
features are stored as float16 by default (``dtype``). Images are read with Pillow (a dependency
of this command only; a clear error says so when it is missing). A missing or unreadable image
is an error naming the file, unless ``skip_missing_frames`` leaves missing ones out (then read
the store with ``ActionGenome(..., require_frames=True)``, which drops the same frames).

Boxes: the store keeps boxes in the annotations' pixel coordinates. When an image's size differs
from the annotated frame size (``bbox_size`` in ``person_bbox.pkl``), boxes are scaled per axis
onto the image before pooling, so downscaled frames work. Frames are batched with their
neighbours of the same image size (up to ``batch_frames``), so the features of a frame never
depend on the batching (no padding).

Backbones:

- ``"builtin"``: :func:`builtin_backbone`, four 3x3 conv + ReLU blocks, output stride 8, 256
  channels, weights drawn from a fixed seed (no download; deterministic). Its features are
  untrained: they encode colour and local texture, enough for the toy frames of
  :func:`write_toy_frames`, not a substitute for a detector backbone on real video.
- ``"package.module:attr"``: ``attr`` (dots allowed) is a ``torch.nn.Module`` instance, or a
  callable taking no arguments that returns one. Its ``forward`` takes ``[B, 3, H, W]`` float
  images (the dtype of its first floating-point parameter) and returns one ``[B, C, h, w]``
  tensor. The output stride is ``stride=`` (``--stride``) or else the module's ``stride``
  attribute (a number, or a pair of equal numbers as on ``nn.Conv2d``); it is checked against
  the feature maps' size at every batch.

Detections file (sgdet), in either of two layouts, boxes xyxy in the annotations' pixel
coordinates, classes in Action Genome's 37-class space (0 ``__background__``, 1 ``person``, then
the 35 objects of ``annotations/object_classes.txt`` in order)::

    # JSON (.json): a frame with no detections is listed with empty lists
    {"frames": {
        "50N4E.mp4/000682.png": {
            "boxes":       [[x1, y1, x2, y2], ...],   # (k, 4)
            "scores":      [0.98, ...],               # (k,)
            "class_dists": [[p0, ..., p36], ...]      # (k, 37) probabilities in [0, 1]
        },
        ...}}

    # npz (.npz, np.savez; read without pickle): frame f owns rows off[f]:off[f + 1]
    keys          (F,)       str      frame keys
    box_offsets   (F + 1,)   int      starts at 0, non-decreasing, ends at N
    boxes         (N, 4)     float    xyxy
    scores        (N,)       float
    class_dists   (N, 37)    float    probabilities in [0, 1]

Instead of ``class_dists`` a record may give ``labels`` (``(k,)`` ints in 1..36): the
distribution is then one-hot at the label. When both are present, ``class_dists`` is used. Every
extracted frame needs an entry; extra frames are ignored. In the ``det`` section each frame's
person is the detection with the highest score among those whose arg-max class (background
excluded, the rule of :mod:`m3sgg.data.collate`) is ``person``; it comes first, the other
detections follow in file order, and the pairs are ``(person, each other detection)``. A frame
without a person detection keeps its detections and has no pairs. For full Action Genome use
npz: JSON of 288k frames is large and slow to parse.

Example (offline, on the toy dataset)::

    from m3sgg.data.action_genome import ActionGenome
    from m3sgg.data.toy import make_toy_action_genome
    from m3sgg.detection.extraction import extract_features, write_toy_frames

    root = make_toy_action_genome("toy_ag", videos=12)
    write_toy_frames(root, size=(96, 64))          # colored boxes: the class is the colour
    extract_features(root, "toy_ag/cnn_features", dtype="float32")
    ds = ActionGenome(root, "train", features="toy_ag/cnn_features")

or ``m3sgg extract-features --data-path toy_ag --out toy_ag/cnn_features``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from m3sgg.data.action_genome import SPLITS
from m3sgg.data.features import (
    FEATURE_DTYPES,
    UNION_DIAGONAL,
    FeatureStoreWriter,
    FrameFeatures,
    union_pairs,
)
from m3sgg.detection.detections_file import Detections, _arrange, read_detections
from m3sgg.detection.toy_frames import class_color, write_toy_frames
from m3sgg.errors import ConfigError, DataError
from m3sgg.vocab import NUM_AG_CLASSES

if TYPE_CHECKING:  # torch is imported where it is used: importing this module (for
    import torch  # write_toy_frames, say) stays cheap
    from torch import nn

from m3sgg.detection.backbones import (
    BUILTIN_STRIDE,
    _resolve_stride,
    builtin_backbone,
    load_backbone,
)
from m3sgg.detection.frames import (
    _batches,
    _check_paths,
    _Frame,
    _frames_to_extract,
    _prefetch,
    _read_image,
)

__all__ = [
    "BUILTIN_STRIDE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Detections",
    "ExtractionResult",
    "builtin_backbone",
    "class_color",
    "extract_features",
    "load_backbone",
    "read_detections",
    "write_toy_frames",
]

#: Per-channel RGB mean and std of the input normalisation (images scaled to [0, 1] first).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_PERSON = 1


@dataclass(frozen=True)
class ExtractionResult:
    """What :func:`extract_features` wrote.

    Attributes:
        path: the store folder.
        frames: frames written.
        object_dim, union_channels: feature widths (the backbone's channel count).
        gt_boxes, gt_pairs: rows of the ``gt`` section.
        det_boxes, det_pairs: rows of the ``det`` section (0 without detections).
        seconds: wall time.
    """

    path: Path
    frames: int
    object_dim: int
    union_channels: int
    gt_boxes: int
    gt_pairs: int
    det_boxes: int
    det_pairs: int
    seconds: float


def _person_pairs(num_boxes: int) -> np.ndarray:
    objects = np.arange(1, num_boxes, dtype=np.int64)
    return np.stack([np.zeros_like(objects), objects], axis=1)


def _union_boxes(boxes: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """``(p, 4)`` smallest boxes holding both boxes of each pair."""
    a, b = boxes[pairs[:, 0]], boxes[pairs[:, 1]]
    return np.concatenate([np.minimum(a[:, :2], b[:, :2]), np.maximum(a[:, 2:], b[:, 2:])], axis=1)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value


def _device(device: str | torch.device) -> torch.device:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device: not a torch device: {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine")
    return dev


def _format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def extract_features(
    dataset_root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    backbone: str | nn.Module = "builtin",
    stride: float | None = None,
    pool_size: int = 7,
    sampling_ratio: int = 2,
    dtype: str = "float16",
    splits: Sequence[str] = SPLITS,
    detections: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    batch_frames: int = 8,
    workers: int = 2,
    skip_missing_frames: bool = False,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    progress_every: int = 200,
) -> ExtractionResult:
    """Run ``backbone`` + RoIAlign over an Action Genome dataset's frames; write a feature store.

    Args:
        dataset_root: the dataset folder (``annotations/`` and ``frames/``).
        out: the store folder to write (atomically: nothing appears there on failure).
        backbone: ``"builtin"``, ``"module:attr"`` or a ``torch.nn.Module`` (module docstring).
        stride: the backbone's output stride; default: its ``stride`` attribute.
        pool_size: RoIAlign bins per side; the bins are averaged into one vector per box.
        sampling_ratio: bilinear samples per bin and axis (fixed; see :mod:`m3sgg.ops`).
        dtype: storage dtype of the features, ``"float16"`` (half the disk) or ``"float32"``.
        splits: the splits whose kept frames are extracted.
        detections: a detections file (JSON or npz, module docstring) → the ``det`` section.
        device: where the backbone and RoIAlign run (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        batch_frames: frames per backbone call (frames of one image size only).
        workers: threads decoding images ahead of the backbone (0: decode inline).
        skip_missing_frames: leave out frames whose image is missing, as the reader does with
            ``require_frames=True`` (read the store that way); otherwise a missing image is an
            error.
        overwrite: replace an existing store at ``out``.
        progress: called with a one-line status every ``progress_every`` frames and at the end.
        progress_every: frames between progress lines.

    Returns:
        :class:`ExtractionResult`.

    Raises:
        DataError: missing frames folder, missing or unreadable image, bad detections file,
            existing ``out`` (without ``overwrite``), or nothing to extract.
        ConfigError: bad backbone, stride (including one that does not match the feature maps),
            dtype, device or count argument.

    The backbone module is moved to ``device`` and put in eval mode; it runs under
    ``torch.inference_mode``.
    """
    import torch

    start = time.perf_counter()
    root, out_path = Path(dataset_root), Path(out)
    if dtype not in FEATURE_DTYPES:
        raise ConfigError(f"dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
    pool_size = _check_positive_int("pool_size", pool_size)
    sampling_ratio = _check_positive_int("sampling_ratio", sampling_ratio)
    batch_frames = _check_positive_int("batch_frames", batch_frames)
    progress_every = _check_positive_int("progress_every", progress_every)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be an int >= 0, got {workers!r}")
    splits = tuple(dict.fromkeys([splits] if isinstance(splits, str) else splits))
    if not splits or any(split not in SPLITS for split in splits):
        raise ConfigError(f"splits must be a non-empty subset of {SPLITS}, got {splits!r}")
    dev = _device(device)
    _check_paths(root, out_path, overwrite)
    model, name = load_backbone(backbone)
    stride_value = _resolve_stride(model, name, stride)

    frames = _frames_to_extract(root, splits, require_frames=skip_missing_frames)
    if not frames:
        raise DataError(root, f"no frames to extract in splits {list(splits)}")
    dets: dict[str, Detections] | None = None
    if detections is not None:
        dets = read_detections(detections)
        missing = [frame.key for frame in frames if frame.key not in dets]
        if missing:
            raise DataError(
                detections,
                f"no detections for {len(missing)} of the {len(frames)} frames to extract, "
                f"e.g. {missing[0]!r} (list a frame without detections with empty arrays)",
            )

    model = model.to(dev).eval()
    to_input = _InputTransform(model, dev)
    pool = {"pool_size": pool_size, "sampling_ratio": sampling_ratio, "stride": stride_value}
    writer: FeatureStoreWriter | None = None
    counts = {"frames": 0, "gt_boxes": 0, "gt_pairs": 0, "det_boxes": 0, "det_pairs": 0}
    channels = 0
    next_report = progress_every
    loaded = _prefetch(_load_frame, frames, ahead=max(2 * batch_frames, 4), workers=workers)
    try:
        for batch in _batches(loaded, batch_frames):
            x = to_input(np.stack([image for _, image in batch]))
            plans = [_plan_frame(frame, x.shape[3], x.shape[2], dets) for frame, _ in batch]
            with torch.inference_mode():
                fmap = model(x)
                _check_feature_map(fmap, name, len(batch), x.shape[2], x.shape[3], stride_value)
                pooled = _pool_features(fmap, plans, **pool)
            channels = int(fmap.shape[1])
            if writer is None:
                writer = FeatureStoreWriter(
                    out_path,
                    object_dim=channels,
                    union_channels=channels,
                    union_size=pool_size,
                    num_classes=NUM_AG_CLASSES,
                    sections=("gt", "det") if dets is not None else ("gt",),
                    gt_class_dists=False,
                    dtype=dtype,
                    overwrite=overwrite,
                )
            for (frame, _), sections in zip(batch, _frame_features(plans, pooled), strict=True):
                writer.add_frame(frame.key, *sections[:2])
                counts["frames"] += 1
                for section, prefix in zip(sections, ("gt", "det"), strict=False):
                    counts[f"{prefix}_boxes"] += len(section.boxes)
                    counts[f"{prefix}_pairs"] += len(section.pairs)
            if progress is not None and counts["frames"] >= next_report:
                next_report = (counts["frames"] // progress_every + 1) * progress_every
                rate = counts["frames"] / max(time.perf_counter() - start, 1e-9)
                eta = (len(frames) - counts["frames"]) / max(rate, 1e-9)
                progress(
                    f"extract-features: {counts['frames']}/{len(frames)} frames, "
                    f"{rate:.1f} frames/s, eta {_format_seconds(eta)}"
                )
        assert writer is not None  # frames is not empty
        writer.close()
    except BaseException:
        loaded.close()
        if writer is not None:
            writer.abort()
        raise
    seconds = time.perf_counter() - start
    result = ExtractionResult(
        path=out_path,
        frames=counts["frames"],
        object_dim=channels,
        union_channels=channels,
        gt_boxes=counts["gt_boxes"],
        gt_pairs=counts["gt_pairs"],
        det_boxes=counts["det_boxes"],
        det_pairs=counts["det_pairs"],
        seconds=seconds,
    )
    if progress is not None:
        det = (
            f", det {result.det_boxes} boxes / {result.det_pairs} pairs" if dets is not None else ""
        )
        progress(
            f"extract-features: wrote {result.frames} frames (gt {result.gt_boxes} boxes / "
            f"{result.gt_pairs} pairs{det}; dim {channels}, {dtype}) to {out_path} in "
            f"{_format_seconds(seconds)}"
        )
    return result


def _load_frame(frame: _Frame) -> np.ndarray:
    return _read_image(frame.path)


class _InputTransform:
    """``(B, H, W, 3)`` uint8 images → normalised ``[B, 3, H, W]`` on the backbone's device,
    in the dtype of its first floating-point parameter (float32 without one).

    The uint8 batch is copied (from pinned memory, without blocking, on CUDA) and converted on
    the device: a quarter of the bytes of a float32 copy.
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        import torch

        self.device = device
        self.pin = device.type == "cuda"
        params = (p.dtype for p in model.parameters() if p.is_floating_point())
        self.dtype = next(params, torch.float32)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        import torch

        batch = torch.from_numpy(images)
        if self.pin:
            batch = batch.pin_memory()
        x = batch.to(self.device, non_blocking=self.pin).permute(0, 3, 1, 2).float().div_(255.0)
        return ((x - self.mean) / self.std).to(self.dtype)


def _pool_features(
    fmap: torch.Tensor,
    plans: list[list[_Part]],
    *,
    pool_size: int,
    sampling_ratio: int,
    stride: float,
) -> np.ndarray:
    """One RoIAlign call over every roi of the batch → float32 ``(R, C, pool, pool)`` maps."""
    import torch

    from m3sgg.ops.roi_align import roi_align

    rois = [(b, part.rois) for b, plan in enumerate(plans) for part in plan]
    table = np.concatenate(
        [np.concatenate([np.full((len(r), 1), b, np.float32), r], axis=1) for b, r in rois]
    )
    # float32 rois whatever the feature dtype (roi_align computes box geometry in float64).
    tensor = torch.from_numpy(table)
    if fmap.device.type == "cuda":
        tensor = tensor.pin_memory()
    pooled = roi_align(
        fmap,
        tensor.to(fmap.device, non_blocking=True),
        pool_size,
        spatial_scale=1.0 / stride,
        sampling_ratio=sampling_ratio,
        aligned=True,
    )
    return pooled.float().cpu().numpy()


def _frame_features(plans: list[list[_Part]], pooled: np.ndarray) -> list[list[FrameFeatures]]:
    """Cut the pooled rows back into each frame's sections: the boxes (bins averaged into one
    vector each), then the union table (the maps as pooled)."""
    out: list[list[FrameFeatures]] = []
    row = 0
    for plan in plans:
        sections = []
        for part in plan:
            k, u = len(part.boxes), len(part.rois) - len(part.boxes)
            dists = part.class_dists
            if dists is not None:  # the store keeps the distribution over classes 1..36
                rest = dists[:, 1:].astype(np.float64)
                dists = (rest / np.maximum(rest.sum(axis=1, keepdims=True), 1e-12)).astype(
                    np.float32
                )
            sections.append(
                FrameFeatures(
                    boxes=part.boxes,
                    box_features=pooled[row : row + k].mean(axis=(2, 3)),
                    pairs=part.pairs,
                    union_maps=pooled[row + k : row + k + u],
                    class_dists=dists,
                    scores=part.scores,
                )
            )
            row += k + u
        out.append(sections)
    return out


class _Part(NamedTuple):
    """One section of one frame: stored boxes and pairs, and the image-space rois to pool."""

    boxes: np.ndarray  # float32 (k, 4), annotation pixels (what the store keeps)
    pairs: np.ndarray  # int64 (p, 2)
    rois: np.ndarray  # float32 (k + u, 4), image pixels: the boxes, then the union table's boxes
    scores: np.ndarray | None
    class_dists: np.ndarray | None


def _plan_frame(
    frame: _Frame, width: int, height: int, dets: dict[str, Detections] | None
) -> list[_Part]:
    """The ``gt`` part (and the ``det`` part) of one frame, with rois scaled onto the image."""
    if frame.size is None:
        scale = np.ones(4, np.float32)
    else:
        sx, sy = width / frame.size[0], height / frame.size[1]
        scale = np.array([sx, sy, sx, sy], np.float32)

    def part(
        boxes: np.ndarray,
        pairs: np.ndarray,
        section: str,
        scores: np.ndarray | None = None,
        dists: np.ndarray | None = None,
    ) -> _Part:
        _, first, second = union_pairs(np.array([len(boxes)]), UNION_DIAGONAL[section])
        table = np.stack([first, second], axis=1)
        rois = np.concatenate([boxes, _union_boxes(boxes, table)]).reshape(-1, 4) * scale
        return _Part(boxes, pairs, rois.astype(np.float32), scores, dists)

    parts = [part(frame.boxes, _person_pairs(len(frame.boxes)), "gt")]
    if dets is not None:
        det = dets[frame.key]
        order, pairs = _arrange(det)
        parts.append(
            part(det.boxes[order], pairs, "det", det.scores[order], det.class_dists[order])
        )
    return parts


def _check_feature_map(
    fmap: Any, name: str, batch: int, height: int, width: int, stride: float
) -> None:
    """A ``[B, C, h, w]`` floating tensor whose size fits ``stride`` (within 2 strides)."""
    from torch import Tensor

    if not isinstance(fmap, Tensor) or fmap.dim() != 4 or not fmap.is_floating_point():
        what = (
            f"a {fmap.dtype} tensor of shape {list(fmap.shape)}"
            if isinstance(fmap, Tensor)
            else f"a {type(fmap).__name__}"
        )
        raise ConfigError(
            f"backbone {name!r} returned {what}; it must return one floating-point "
            "[B, C, H/stride, W/stride] tensor"
        )
    if fmap.shape[0] != batch:
        raise ConfigError(
            f"backbone {name!r} returned {fmap.shape[0]} feature maps for {batch} images"
        )
    h, w = int(fmap.shape[2]), int(fmap.shape[3])
    if abs(h * stride - height) > 2 * stride or abs(w * stride - width) > 2 * stride:
        raise ConfigError(
            f"backbone {name!r}: a {width}x{height} image gave {w}x{h} feature maps, which does "
            f"not fit stride {stride:g} (it suggests about {width / max(w, 1):.3g}); "
            "give the right --stride"
        )

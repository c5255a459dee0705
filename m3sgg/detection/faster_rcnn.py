"""The Action Genome detector: jwyang's ResNet-101 Faster R-CNN, in plain torch.

STTran's repository releases ``faster_rcnn_ag.pth`` (``{"model": state_dict, ...}``), trained on
Action Genome's 37 classes (0 ``__background__``, 1 ``person``, 35 objects); every published AG
model is trained on its features. :class:`ActionGenomeDetector` is the same network, written from
its definition with no compiled extension:

* :class:`~m3sgg.detection.resnet.ResNetBase` (conv1..layer3, stride 16) -> base map;
* :class:`~m3sgg.detection.rpn.RPN` -> 100 proposals per frame (test config);
* RoIAlign 7x7 of each roi on the base map (scale 1/16, the kernels' adaptive sampling,
  ``aligned=False``), then :class:`~m3sgg.detection.resnet.ResNetHead` (layer4 + mean) -> a
  2048-d box feature;
* ``cls_score`` (Linear 2048 -> 37, softmax) and ``bbox_pred`` (Linear 2048 -> 4 x 37,
  class-specific deltas normalised by :data:`~m3sgg.detection.boxes.BBOX_STDS`).

:meth:`ActionGenomeDetector.from_original` loads the released file through an explicit key map
(:data:`KEY_MAP`, original prefix -> ours); the widths and depths are read from the file, so the
same map loads a ResNet-101 or the tiny networks of the tests. Unknown, missing or mis-shaped keys
are one :class:`~m3sgg.errors.DataError` naming them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from m3sgg.detection.resnet import ResNetBase, ResNetConfig, ResNetHead
from m3sgg.detection.rpn import RPN
from m3sgg.errors import DataError
from m3sgg.ops.roi_align import roi_align

__all__ = [
    "KEY_MAP",
    "ActionGenomeDetector",
    "DetectorConfig",
    "DetectorOutput",
    "from_original_key",
    "to_original_key",
]

#: Our parameter prefix -> the prefix in ``faster_rcnn_ag.pth``. Below a prefix both sides use
#: the same names (``{i}.conv1.weight``, ``{i}.downsample.0.weight``, ``weight``, ...).
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("base.conv1.", "RCNN_base.0."),
    ("base.bn1.", "RCNN_base.1."),
    ("base.layer1.", "RCNN_base.4."),
    ("base.layer2.", "RCNN_base.5."),
    ("base.layer3.", "RCNN_base.6."),
    ("head.layer4.", "RCNN_top.0."),
    ("rpn.conv.", "RCNN_rpn.RPN_Conv."),
    ("rpn.cls_score.", "RCNN_rpn.RPN_cls_score."),
    ("rpn.bbox_pred.", "RCNN_rpn.RPN_bbox_pred."),
    ("cls_score.", "RCNN_cls_score."),
    ("bbox_pred.", "RCNN_bbox_pred."),
)

#: Batch-norm step counters: written by newer torch, absent from older files; never required.
_OPTIONAL = re.compile(r"\.num_batches_tracked$")


def to_original_key(key: str) -> str:
    """Our parameter name -> its name in the original file (``KeyError`` if unmapped)."""
    for ours, theirs in KEY_MAP:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    raise KeyError(key)


def from_original_key(key: str) -> str:
    """A name in the original file -> our parameter name (``KeyError`` if unmapped)."""
    for ours, theirs in KEY_MAP:
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    raise KeyError(key)


@dataclass(frozen=True)
class DetectorConfig:
    """Shape of the detector; the defaults are ``faster_rcnn_ag.pth``'s.

    Attributes:
        resnet: widths and depths of the ResNet (ResNet-101 by default).
        num_classes: classes of the classifier, background included (37).
        rpn_channels: width of the RPN's 3x3 convolution (512).
        pooled_size: RoIAlign bins per side (7).
        stride: the base map's stride (16).
        pre_nms_top_n, post_nms_top_n, rpn_nms_threshold: the RPN's test-time rules.
    """

    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    num_classes: int = 37
    rpn_channels: int = 512
    pooled_size: int = 7
    stride: int = 16
    pre_nms_top_n: int = 6000
    post_nms_top_n: int = 100
    rpn_nms_threshold: float = 0.7


class DetectorOutput(NamedTuple):
    """What one forward pass over a batch of frames gives (``R`` = ``post_nms_top_n``).

    Attributes:
        rois: ``[B, R, 5]`` proposals ``(b, x1, y1, x2, y2)`` in resized-image pixels.
        class_probs: ``[B, R, num_classes]`` softmax over all classes.
        box_deltas: ``[B, R, 4 num_classes]`` class-specific deltas (still normalised).
        base: ``[B, base_channels, h, w]`` the stride-16 base map.
        features: ``[B, R, head_channels]`` box features of the rois.
    """

    rois: Tensor
    class_probs: Tensor
    box_deltas: Tensor
    base: Tensor
    features: Tensor


class ActionGenomeDetector(nn.Module):
    """The AG Faster R-CNN (see the module docstring); frozen, evaluation-only semantics.

    Example:
        >>> detector = ActionGenomeDetector.from_original("faster_rcnn_ag.pth")  # doctest: +SKIP
        >>> out = detector(images, im_info)  # doctest: +SKIP
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        config = config or DetectorConfig()
        self.config = config
        self.base = ResNetBase(config.resnet)
        self.head = ResNetHead(config.resnet)
        self.rpn = RPN(
            config.resnet.base_channels,
            config.rpn_channels,
            stride=config.stride,
            pre_nms_top_n=config.pre_nms_top_n,
            post_nms_top_n=config.post_nms_top_n,
            nms_threshold=config.rpn_nms_threshold,
        )
        self.cls_score = nn.Linear(config.resnet.head_channels, config.num_classes)
        self.bbox_pred = nn.Linear(config.resnet.head_channels, 4 * config.num_classes)

    # -- pieces ------------------------------------------------------------------------------

    def pool(self, base: Tensor, rois: Tensor) -> Tensor:
        """RoIAlign ``[K, C, 7, 7]`` of ``rois`` ``[K, 5]`` (resized-image pixels) on ``base``."""
        return roi_align(
            base,
            rois.to(torch.float32),
            self.config.pooled_size,
            spatial_scale=1.0 / self.config.stride,
            sampling_ratio=0,
            aligned=False,
        )

    def box_features(self, base: Tensor, rois: Tensor) -> Tensor:
        """Box features ``[K, head_channels]``: RoIAlign of ``rois`` then the layer4 head."""
        return self.head(self.pool(base, rois))

    def class_distributions(self, features: Tensor) -> Tensor:
        """Softmax over the object classes 1.. (background left out): ``[K, num_classes - 1]``."""
        return torch.softmax(self.cls_score(features)[:, 1:].float(), dim=1)

    def forward(self, images: Tensor, im_info: Tensor) -> DetectorOutput:
        """Detect on ``images`` ``[B, 3, H, W]`` (prepared by :mod:`m3sgg.detection.image`)."""
        base = self.base(images)
        rois = self.rpn(base, im_info)
        batch, count = rois.shape[:2]
        features = self.box_features(base, rois.reshape(-1, 5))
        probs = torch.softmax(self.cls_score(features).float(), dim=1)
        deltas = self.bbox_pred(features).float()
        return DetectorOutput(
            rois,
            probs.view(batch, count, -1),
            deltas.view(batch, count, -1),
            base,
            features.view(batch, count, -1),
        )

    # -- the original's weights --------------------------------------------------------------

    def original_state_dict(self) -> dict[str, Tensor]:
        """Our weights under the original file's names (what ``{"model": ...}`` holds)."""
        return {to_original_key(k): v for k, v in self.state_dict().items()}

    @classmethod
    def from_original(
        cls,
        source: str | os.PathLike[str] | Mapping[str, Tensor],
        config: DetectorConfig | None = None,
    ) -> ActionGenomeDetector:
        """Build the detector from ``faster_rcnn_ag.pth`` (a path) or its ``model`` state dict.

        Without ``config`` the widths, depths, class count and RPN width are read from the
        weights (so any width loads); the result is in ``eval()`` mode.

        Raises:
            DataError: unreadable file, no ``model`` entry, or unknown / missing / mis-shaped
                keys (all of them named, in one line).
        """
        path = "<state dict>"
        if isinstance(source, str | os.PathLike):
            path = os.fspath(source)
            state = _read_checkpoint(path)
        else:
            state = dict(source)
        if config is None:
            config = _infer_config(state, path)
        model = cls(config)
        model.load_original_state_dict(state, path)
        return model.eval()

    def load_original_state_dict(
        self, state: Mapping[str, Tensor], path: str = "<state dict>"
    ) -> None:
        """Copy weights given under the original's names in; every mismatch is one DataError."""
        ours = self.state_dict()
        unknown, wrong, mapped, seen = [], [], {}, set()
        for key, value in state.items():
            try:
                name = from_original_key(key)
            except KeyError:
                unknown.append(key)
                continue
            if name not in ours:
                unknown.append(key)
                continue
            seen.add(name)
            if not isinstance(value, Tensor) or value.shape != ours[name].shape:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                wrong.append(f"{key} {shape} (expected {tuple(ours[name].shape)})")
            else:
                mapped[name] = value
        missing = [to_original_key(k) for k in ours if k not in seen and not _OPTIONAL.search(k)]
        problems = []
        if unknown:
            problems.append(f"unknown keys {_listing(unknown)}")
        if missing:
            problems.append(f"missing keys {_listing(missing)}")
        if wrong:
            problems.append(f"mis-shaped keys {_listing(wrong)}")
        if problems:
            raise DataError(path, "not an Action Genome Faster R-CNN: " + "; ".join(problems))
        self.load_state_dict(mapped, strict=False)


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > limit else ''}]"


def _read_checkpoint(path: str) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise DataError(path, "no such file (the detector weights, faster_rcnn_ag.pth)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the same user error
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(path, f"not a readable torch checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise DataError(
            path, "expected a dict with the detector's state dict under 'model'", "model"
        )
    return checkpoint["model"]


def _infer_config(state: Mapping[str, Tensor], path: str) -> DetectorConfig:
    """Widths, depths, classes and RPN width from the shapes of the original's weights."""

    def shape(key: str, axis: int) -> int:
        value = state.get(key)
        if not isinstance(value, Tensor) or value.dim() <= axis:
            raise DataError(path, f"not an Action Genome Faster R-CNN: missing keys [{key}]")
        return int(value.shape[axis])

    def blocks(prefix: str) -> int:
        found = {
            int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))
        }
        if not found:
            raise DataError(path, f"not an Action Genome Faster R-CNN: missing keys [{prefix}0.*]")
        return max(found) + 1

    layers = ("RCNN_base.4.", "RCNN_base.5.", "RCNN_base.6.", "RCNN_top.0.")
    resnet = ResNetConfig(
        stem=shape("RCNN_base.0.weight", 0),
        planes=tuple(shape(f"{p}0.conv1.weight", 0) for p in layers),  # type: ignore[arg-type]
        blocks=tuple(blocks(p) for p in layers),  # type: ignore[arg-type]
    )
    return DetectorConfig(
        resnet=resnet,
        num_classes=shape("RCNN_cls_score.weight", 0),
        rpn_channels=shape("RCNN_rpn.RPN_Conv.weight", 0),
    )

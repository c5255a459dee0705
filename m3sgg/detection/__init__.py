"""The Action Genome detector in plain torch, and the extraction of features from frames.

* :mod:`~m3sgg.detection.faster_rcnn`: :class:`ActionGenomeDetector`, the ResNet-101 Faster R-CNN
  of STTran's ``faster_rcnn_ag.pth`` (loaded with :meth:`ActionGenomeDetector.from_original`);
* :mod:`~m3sgg.detection.resnet`, :mod:`~m3sgg.detection.rpn`, :mod:`~m3sgg.detection.boxes`:
  its backbone, region proposals, anchors and box arithmetic;
* :mod:`~m3sgg.detection.image`: STTran's frame preprocessing (BGR means, 600-pixel short side,
  OpenCV's bilinear resize);
* :mod:`~m3sgg.detection.modes`: what STTran's detector wrapper gives per mode (GT box features,
  class distributions, union maps, sgdet detections);
* :mod:`~m3sgg.detection.assign`: sgdet training inputs (detections matched to the ground truth,
  missed boxes supplied);
* :mod:`~m3sgg.detection.extract`, :mod:`~m3sgg.detection.spool`,
  :mod:`~m3sgg.detection.ag_extraction`: per-frame records of the feature store's sections, a
  resumable extraction over many videos, and ``extract-features --detector ag-faster-rcnn``;
* :mod:`~m3sgg.detection.extraction` (``m3sgg extract-features`` with any backbone + RoIAlign),
  with :mod:`~m3sgg.detection.backbones` (the built-in CNN, ``MODULE:ATTR`` backbones),
  :mod:`~m3sgg.detection.frames` (the frames to read, image decoding, prefetching, batching),
  :mod:`~m3sgg.detection.detections_file` and :mod:`~m3sgg.detection.toy_frames`;
* :mod:`~m3sgg.detection.cli`: the ``extract-features`` command line of both extractions.

docs/detector.md has the comparison with the original and the speed figures.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ActionGenomeDetector", "DetectorConfig", "DetectorOutput", "ResNetConfig"]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI imports m3sgg.detection.cli to build its parser, and importing the package
    # must not import torch (``m3sgg --help`` stays fast).
    if name in ("ActionGenomeDetector", "DetectorConfig", "DetectorOutput"):
        from m3sgg.detection import faster_rcnn

        return getattr(faster_rcnn, name)
    if name == "ResNetConfig":
        from m3sgg.detection.resnet import ResNetConfig

        return ResNetConfig
    raise AttributeError(f"module 'm3sgg.detection' has no attribute {name!r}")

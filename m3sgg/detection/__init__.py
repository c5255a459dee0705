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
* :mod:`~m3sgg.detection.extract`, :mod:`~m3sgg.detection.spool`: per-frame records of the
  feature store's sections, and a resumable extraction over many videos.

docs/detector.md has the comparison with the original and the speed figures.
"""

from m3sgg.detection.faster_rcnn import ActionGenomeDetector, DetectorConfig, DetectorOutput
from m3sgg.detection.resnet import ResNetConfig

__all__ = ["ActionGenomeDetector", "DetectorConfig", "DetectorOutput", "ResNetConfig"]

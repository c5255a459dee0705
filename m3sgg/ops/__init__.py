"""Tensor operators that plain torch lacks, written in torch so they run on any device.

* :func:`roi_align` / :class:`RoIAlign`: the RoIAlign of Mask R-CNN (box features for detectors
  and scene-graph models), with a fixed sampling ratio or the kernels' adaptive one (``0``).
* :func:`nms`: greedy non-maximum suppression by the rule of the Faster R-CNN kernels.
"""

from m3sgg.ops.nms import box_iou_plus_one, nms
from m3sgg.ops.roi_align import DEFAULT_MAX_CHUNK_BYTES, MAX_ADAPTIVE_SAMPLES, RoIAlign, roi_align

__all__ = [
    "DEFAULT_MAX_CHUNK_BYTES",
    "MAX_ADAPTIVE_SAMPLES",
    "RoIAlign",
    "box_iou_plus_one",
    "nms",
    "roi_align",
]

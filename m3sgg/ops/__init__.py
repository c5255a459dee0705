"""Tensor operators that plain torch lacks, written in torch so they run on any device.

* :func:`roi_align` / :class:`RoIAlign`: the RoIAlign of Mask R-CNN (box features for detectors
  and scene-graph models), with a fixed sampling ratio.
"""

from m3sgg.ops.roi_align import DEFAULT_MAX_CHUNK_BYTES, RoIAlign, roi_align

__all__ = ["DEFAULT_MAX_CHUNK_BYTES", "RoIAlign", "roi_align"]

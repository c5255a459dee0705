"""DSG-DETR (Feng et al., WACV 2023): STTran with object sequences across frames.

* :mod:`~m3sgg.models.dsg_detr.tracking`: which boxes of a video are one object (per mode: by
  label, by detected class, or an online Hungarian tracker);
* :mod:`~m3sgg.models.dsg_detr.encoders`: transformer encoders over packed variable-length
  sequences (objects across frames, relations per frame and per object class);
* :mod:`~m3sgg.models.dsg_detr.model`: :class:`DSGDETR` on STTran's modules (registered as
  ``"dsg_detr"``);
* :mod:`~m3sgg.models.dsg_detr.convert`: the original's checkpoints,
  ``import_original("dsg_detr", path, mode=...)``.
"""

from m3sgg.models.dsg_detr.convert import import_dsg_detr
from m3sgg.models.dsg_detr.encoders import SequenceEncoder, SinusoidalPositions, sinusoidal_table
from m3sgg.models.dsg_detr.model import DSGDETR
from m3sgg.models.dsg_detr.tracking import (
    ACCEPT_COST,
    EXPIRY_FRAMES,
    frame_number,
    group_by_key,
    sequence_positions,
    track_batch,
    track_video,
)
from m3sgg.models.originals import register_original

__all__ = [
    "ACCEPT_COST",
    "DSGDETR",
    "EXPIRY_FRAMES",
    "SequenceEncoder",
    "SinusoidalPositions",
    "frame_number",
    "group_by_key",
    "sequence_positions",
    "sinusoidal_table",
    "track_batch",
    "track_video",
]

register_original("dsg_detr", import_dsg_detr)

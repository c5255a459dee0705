"""TEMPURA's sgdet evaluation quirk for frames without detections (``lib/tempura.py``).

The original's sgdet branch keeps each frame's person index in a zero-initialised table and
fills it only for frames that have boxes, so a frame without any detection that comes before
the video's last detected frame leaves index 0 there: the video's first kept box is labelled
person (score: its person probability), which drops it from its own frame's pairs (the pairs of
a frame are its person with every box not labelled person). Frames after the last detected one
are not visited. :func:`empty_frame_relabel` applies this to STTran's
:func:`~m3sgg.models.sttran.postprocess.sgdet_boxes` result, per video of the batch.
"""

from __future__ import annotations

import torch

from m3sgg.models.sttran.postprocess import SgdetBoxes

__all__ = ["empty_frame_relabel"]


def empty_frame_relabel(
    picked: SgdetBoxes, detection_frame: torch.Tensor, frame_video: torch.Tensor
) -> SgdetBoxes:
    """``picked`` with the original's relabelling (module docstring).

    Args:
        picked: the kept boxes of a batch (:func:`~m3sgg.models.sttran.postprocess.sgdet_boxes`).
        detection_frame: ``[N]`` batch-level frame of every detection (before the picking).
        frame_video: ``[F]`` video of each batch frame.
    """
    num_frames = len(frame_video)
    if num_frames == 0 or len(picked.source) == 0:
        return picked
    device = picked.frame.device
    num_videos = int(frame_video.max()) + 1
    has = torch.bincount(detection_frame, minlength=num_frames) > 0
    last = torch.full((num_videos,), -1, dtype=torch.long, device=device)
    frames = torch.arange(num_frames, device=device)
    last = last.scatter_reduce(0, frame_video, torch.where(has, frames, -1), "amax")
    empty = ~has & (frames < last[frame_video])
    quirk = torch.zeros(num_videos, dtype=torch.bool, device=device)
    quirk = quirk.index_put(
        (frame_video[empty],), torch.ones_like(frame_video[empty], dtype=torch.bool)
    )
    if not bool(quirk.any()):
        return picked
    box_video = frame_video[picked.frame]
    rows = torch.arange(len(picked.source), device=device)
    first = torch.full((num_videos,), len(rows), dtype=torch.long, device=device)
    first = first.scatter_reduce(0, box_video, rows, "amin")
    boxes = first[quirk & (first < len(rows))]
    labels, scores = picked.labels.clone(), picked.scores.clone()
    labels[boxes] = 1
    scores[boxes] = picked.dist[boxes, 0]
    keep = ~torch.isin(picked.pair_idx[:, 1], boxes)
    return picked._replace(
        labels=labels, scores=scores, pair_idx=picked.pair_idx[keep], im_idx=picked.im_idx[keep]
    )

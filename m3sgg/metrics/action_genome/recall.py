"""The metrics: :class:`ActionGenomeRecall` (one constraint) and
:class:`ActionGenomeRecallSuite` (several constraints from one matching)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.exceptions import NotComputableError

from m3sgg.data.structures import VideoGT
from m3sgg.errors import ConfigError
from m3sgg.metrics.action_genome.batch import _make_batch, _Workspace
from m3sgg.metrics.action_genome.ranking import _first_ranks, _Layout, _rows, _summary
from m3sgg.metrics.action_genome.tables import AG_CONSTRAINTS, AG_MODES, _Pending
from m3sgg.metrics.base import SampleStatsMetric, check_ks

#: Videos are evaluated in batches of about this many pairs + frames (bounded memory, few calls).
_BATCH_SIZE = 4096


def _check_fraction(name: str, value: Any) -> float:
    if not isinstance(value, Real) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class _ActionGenomeRecallBase(SampleStatsMetric):
    """The shared implementation: one row per video holding every constraint's statistics."""

    required_output_keys = ("gt", "pred")

    def __init__(
        self,
        mode: str,
        constraints: Sequence[str],
        semi_threshold: float,
        iou_threshold: float,
        ks: Sequence[int],
        per_video: bool,
        output_transform: Callable[[Any], Any],
        device: str | torch.device,
    ) -> None:
        if mode not in AG_MODES:
            raise ConfigError(f"mode must be one of 'predcls', 'sgcls', 'sgdet', got {mode!r}")
        for constraint in constraints:
            if constraint not in AG_CONSTRAINTS:
                raise ConfigError(
                    f"constraint must be one of 'with', 'semi', 'no', got {constraint!r}"
                )
        if len(set(constraints)) != len(constraints):
            raise ConfigError(f"constraints must not repeat a value, got {list(constraints)}")
        if not isinstance(per_video, bool):
            raise ConfigError(f"per_video must be a bool, got {per_video!r}")
        self.mode = mode
        self.constraints = tuple(constraints)
        self.semi_threshold = _check_fraction("semi_threshold", semi_threshold)
        self.iou_threshold = _check_fraction("iou_threshold", iou_threshold)
        self.ks = check_ks(ks)
        self.per_video = per_video
        self._layout = _Layout(self.ks)
        self.row_width = self._layout.width * len(self.constraints)
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    def reset(self) -> None:
        super().reset()
        self._updates = 0
        # scratch memory is kept from one evaluation to the next (only the videos are dropped)
        if "_pending" not in self.__dict__:  # (ignite's Metric answers any getattr)
            self._pending, self._workspace = _Pending(), _Workspace()
        self._pending.clear()

    def update(self, output: Sequence[Any]) -> None:
        """Take one video ``(gt, pred)``.

        - ``gt``: a :class:`~m3sgg.data.structures.VideoGT`, or the STTran list of frames
          ``[{"person_bbox": (1,4) xyxy, "frame": key}, obj, ...]`` (objects with ``"class"``,
          ``"bbox"`` xyxy and the ``attention_relationship``, ``spatial_relationship``,
          ``contacting_relationship`` lists of group-local indices). The sample id is the video
          id (``VideoGT.video_id``, or the frame keys' part before ``/``). A video seen twice
          (the same id and the same ground truth), also on two ranks, counts once: that is the
          sample a distributed sampler pads with. Another video under an id already seen counts
          as its own sample, as the reference counts it (``per_video`` names it ``"id (2)"``).
          A video without an id gets a unique one.
        - ``pred``: a mapping of tensors (any device) or arrays: ``boxes`` [B,5] ``(frame, x1,
          y1, x2, y2)``; ``labels`` and ``scores`` [B] (predcls) or ``pred_labels`` and
          ``pred_scores`` (sgcls, sgdet); ``im_idx`` [P]; ``pair_idx`` [P,2] (person box,
          object box); ``attention_distribution`` [P,3] **logits**; ``spatial_distribution``
          [P,6] and ``contacting_distribution`` [P,17] probabilities. Nothing is modified.

        The input is checked and copied here; the evaluation runs on batches of videos (about
        ``_BATCH_SIZE`` pairs + frames, and the rest at ``compute()``), which gives the numbers
        of evaluating each video alone.
        """
        if not isinstance(output, Sequence) or isinstance(output, str) or len(output) != 2:
            raise TypeError(f"{type(self).__name__}.update expects a pair (gt, pred)")
        gt, pred = output
        if not isinstance(pred, Mapping):
            raise TypeError(f"pred must be a mapping of tensors, got {type(pred).__name__}")
        video_gt, sample_id = self._video_gt(gt)
        self._pending.add(sample_id, video_gt, pred, self.mode)
        self._updates += 1
        if self._pending.size >= _BATCH_SIZE:
            self._flush()

    def _flush(self) -> None:
        """Evaluate the pending videos together and record one row per video."""
        if not self._pending.sample_ids:
            return
        try:
            batch = _make_batch(self._pending, self.iou_threshold, self._workspace)
            rows = np.concatenate(
                [
                    _rows(batch, _first_ranks(batch, c, self.semi_threshold), self.ks, self._layout)
                    for c in self.constraints
                ],
                axis=1,
            )
            sample_ids, keys = list(self._pending.sample_ids), list(self._pending.keys)
        finally:
            self._pending.clear()
        self._record_many(sample_ids, torch.from_numpy(rows), keys)

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._flush()
        return super().gathered()

    def local_samples(self) -> list[tuple[str, torch.Tensor]]:
        self._flush()
        return super().local_samples()

    def _video_gt(self, gt: Any) -> tuple[VideoGT, str]:
        if isinstance(gt, VideoGT):
            video_gt, named = gt, bool(gt.video_id)
        elif isinstance(gt, Sequence) and not isinstance(gt, str | bytes):
            video_gt = VideoGT.from_sttran(gt)
            named = bool(len(gt)) and "frame" in gt[0][0] and bool(video_gt.video_id)
        else:
            raise TypeError(f"gt must be a VideoGT or the STTran list of frames, got {type(gt)}")
        # without an id, a video gets a unique one (so it is never merged with another)
        sample_id = video_gt.video_id if named else f"#{idist.get_rank()}:{self._updates}"
        return video_gt, sample_id

    def _summaries(self) -> dict[str, dict[str, Any]]:
        ids, rows = self.gathered()
        rows_np = rows.numpy()
        width = self._layout.width
        frames = rows_np[:, self._layout.frames].sum() if rows_np.shape[0] else 0
        if frames == 0:
            raise NotComputableError(
                f"{type(self).__name__} needs at least one frame with a GT relation, got "
                f"{rows_np.shape[0]} videos without one"
            )
        names = self.all_names() if self.per_video else {}
        out: dict[str, dict[str, Any]] = {}
        for c, constraint in enumerate(self.constraints):
            block = rows_np[:, c * width : (c + 1) * width]
            result = _summary(block, self.ks, self._layout)
            if self.per_video:
                result["per_video"] = self._per_video(ids.tolist(), block, names)
            out[constraint] = result
        return out

    def _per_video(
        self, ids: list[int], rows: np.ndarray, names: dict[int, str]
    ) -> dict[str, dict[str, float | int]]:
        layout = self._layout
        videos: dict[str, dict[str, float | int]] = {}
        for sample, row in zip(ids, rows, strict=True):
            frames = int(row[layout.frames])
            if frames == 0:
                continue
            entry: dict[str, float | int] = {
                f"R@{k}": float(row[layout.recall_sum.start + j] / frames)
                for j, k in enumerate(self.ks)
            }
            entry["frames"] = frames
            entry["frames_without_gt"] = int(row[layout.frames_without_gt])
            videos[names[sample]] = entry
        return videos


class ActionGenomeRecall(_ActionGenomeRecallBase):
    """R@K, mR@K and per-predicate recall on Action Genome for one mode and constraint.

    ``update((gt, pred))`` takes one video (see :meth:`update` for the accepted forms);
    ``compute()`` returns fractions (papers print ×100)::

        {"R@10": …, "R@20": …, …, "mR@10": …, …, "per_predicate": {10: [26 floats], …},
         "frames": evaluated_frames, "frames_without_gt": skipped_frames}

    ``per_predicate[K]`` follows the order of :data:`m3sgg.vocab.AG_PREDICATES`.

    Args:
        mode: ``"predcls"``, ``"sgcls"`` or ``"sgdet"`` (which labels and scores are read).
        constraint: ``"with"``, ``"semi"`` or ``"no"``.
        semi_threshold: the ``semi`` constraint's strict threshold on spatial/contacting values.
        iou_threshold: subject and object IoU needed for a match (``>=``).
        ks: the K of ``R@K`` and ``mR@K``, ascending.
        per_video: also return ``"per_video"``: ``{video_id: {"R@K": …, "frames": n,
            "frames_without_gt": m}}`` for every video with an evaluated frame.
        output_transform: maps the engine output to ``(gt, pred)``; a mapping output is read
            as ``(output["gt"], output["pred"])``.
        device: ignite's metric device (the evaluation itself runs on the CPU).

    Example:
        >>> import torch
        >>> gt = [[{"person_bbox": torch.tensor([[0.0, 0, 10, 10]]), "frame": "v.mp4/000001.png"},
        ...        {"class": 5, "bbox": [20.0, 0, 30, 10], "attention_relationship": [0],
        ...         "spatial_relationship": [], "contacting_relationship": [8]}]]
        >>> pred = {"boxes": torch.tensor([[0.0, 0, 0, 10, 10], [0.0, 20, 0, 30, 10]]),
        ...         "labels": torch.tensor([1, 5]), "scores": torch.ones(2),
        ...         "im_idx": torch.zeros(1), "pair_idx": torch.tensor([[0, 1]]),
        ...         "attention_distribution": torch.tensor([[5.0, 0, 0]]),
        ...         "spatial_distribution": torch.full((1, 6), 0.1),
        ...         "contacting_distribution": torch.full((1, 17), 0.2)}
        >>> metric = ActionGenomeRecall("predcls", "with")
        >>> metric.update((gt, pred))
        >>> metric.compute()["R@10"]  # looking_at recalled; not_contacting predicted 'carrying'
        0.5
    """

    def __init__(
        self,
        mode: str = "predcls",
        constraint: str = "with",
        semi_threshold: float = 0.9,
        iou_threshold: float = 0.5,
        ks: Sequence[int] = (10, 20, 50, 100),
        per_video: bool = False,
        output_transform: Callable[[Any], Any] = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        if not isinstance(constraint, str):
            raise ConfigError(f"constraint must be one of 'with', 'semi', 'no', got {constraint!r}")
        super().__init__(
            mode,
            (constraint,),
            semi_threshold,
            iou_threshold,
            ks,
            per_video,
            output_transform,
            device,
        )
        self.constraint = constraint

    def compute(self) -> dict[str, Any]:
        """``R@K``, ``mR@K``, ``per_predicate``, ``frames``, ``frames_without_gt`` (and
        ``per_video`` if asked)."""
        return self._summaries()[self.constraint]


class ActionGenomeRecallSuite(_ActionGenomeRecallBase):
    """Several constraints in one pass: the shared work (softmax, IoUs, matches) is done once.

    ``compute()`` returns the values of :class:`ActionGenomeRecall` for every constraint, keyed
    ``"<constraint>/<key>"``: ``"with/R@20"``, ``"no/mR@50"``, ``"semi/per_predicate"``,
    ``"with/frames"``, … Attached to an evaluator, ignite puts each key in
    ``engine.state.metrics``. The numbers are exactly those of one :class:`ActionGenomeRecall`
    per constraint.

    Args:
        mode: ``"predcls"``, ``"sgcls"`` or ``"sgdet"``.
        constraints: the constraints to evaluate, any of ``"with"``, ``"semi"``, ``"no"``.
        semi_threshold, iou_threshold, ks, per_video, output_transform, device: as for
            :class:`ActionGenomeRecall`.

    Example:
        >>> suite = ActionGenomeRecallSuite("sgdet", ks=(20, 50))
        >>> # evaluator.attach(suite, "ag")  ->  state.metrics["with/R@20"], ["no/mR@50"], ...
    """

    def __init__(
        self,
        mode: str = "predcls",
        constraints: Sequence[str] = AG_CONSTRAINTS,
        semi_threshold: float = 0.9,
        iou_threshold: float = 0.5,
        ks: Sequence[int] = (10, 20, 50, 100),
        per_video: bool = False,
        output_transform: Callable[[Any], Any] = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        if isinstance(constraints, str) or not isinstance(constraints, Sequence) or not constraints:
            raise ConfigError(
                f"constraints must be a non-empty sequence of 'with', 'semi', 'no', got "
                f"{constraints!r}"
            )
        super().__init__(
            mode,
            tuple(constraints),
            semi_threshold,
            iou_threshold,
            ks,
            per_video,
            output_transform,
            device,
        )

    def compute(self) -> dict[str, Any]:
        """Every constraint's results, keys prefixed by ``"<constraint>/"``."""
        return {
            f"{constraint}/{key}": value
            for constraint, result in self._summaries().items()
            for key, value in result.items()
        }

"""One or several EASG graphs → one typed :class:`EASGBatch` of tensors, and back.

Why: EASG models see several graphs at once (one forward per batch), while
:class:`~m3sgg.metrics.easg.EASGRecall` consumes graphs one at a time, with per-graph logits.
:func:`collate_easg` concatenates the graphs' objects (numpy, vectorized; the only Python loop is
over graphs) and attaches the targets; :func:`split_easg_predictions` cuts a model's batch-level
logits back into one ``(GraphGT, dict)`` pair per graph in the form the metric's ``update`` takes.

Index spaces of an :class:`EASGBatch` (``G`` graphs, ``O`` objects in all):

- graphs ``0..G-1``: one verb each, one verb feature each;
- objects ``0..O-1``: graph ``g`` owns objects ``object_offsets[g]:object_offsets[g + 1]``
  (contiguous, in the sample's order: ascending class index); ``object_graph[o]`` is the graph
  of object ``o``.

**Object features.** A sample holds RoI features per object and frame type (``pre``, ``pnr``,
``post``; the mean over merged instances), zeros where the object is not grounded. The batch
holds one vector per object: the mean over the frame types where it *is* grounded
(``grounded[o]``). An object grounded in no frame has a zero vector and ``object_mask[o]``
false; models decide what to put there (the built-in ones use a learned vector). The reference
baseline classifies each box and averages the box scores; averaging features first gives one
prediction per object with the same information and makes every object cost one row.

Example::

    loader = DataLoader(EASG(root, "train"), batch_size=16, collate_fn=collate_easg)
    for batch in loader:
        predictions = model(batch.to(device))
        for gt, pred in split_easg_predictions(batch, predictions):
            metric.update((gt, pred))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from m3sgg.data.batch_fields import ExtraFields
from m3sgg.data.structures import GraphGT
from m3sgg.errors import DataError

if TYPE_CHECKING:
    from m3sgg.data.easg import EASGSample

__all__ = [
    "EASG_GRAPH_PREDICTION_KEYS",
    "EASG_OBJECT_PREDICTION_KEYS",
    "EASGBatch",
    "collate_easg",
    "split_easg_predictions",
]

#: Prediction keys with one row per graph (cut into one ``[V]`` vector per graph).
EASG_GRAPH_PREDICTION_KEYS: tuple[str, ...] = ("verb_logits",)
#: Prediction keys with one row per object (cut by ``object_offsets`` into ``[n, ·]``).
EASG_OBJECT_PREDICTION_KEYS: tuple[str, ...] = ("obj_logits", "rel_logits")


@dataclass(frozen=True, eq=False)
class EASGBatch(ExtraFields):
    """Several EASG graphs' features and targets, objects concatenated graph after graph.

    The contract, field by field, is ``docs/batch.md``.

    Offsets are Python ints (reading them never synchronises a device).

    Attributes:
        graph_ids: ``G`` graph ids (``GraphGT.graph_id``).
        sample_indices: ``G`` dataset indices of the samples.
        gts: ``G`` ground truths, passed through for the metric.
        verb_features: float32 ``[G, Dv]`` clip (verb) feature of each graph.
        obj_features: float32 ``[O, Df]`` per object, the mean of its RoI features over the
            frame types where it is grounded; zeros where ``object_mask`` is false.
        object_mask: bool ``[O]``: the object is grounded in at least one frame (has features).
        grounded: bool ``[O, 3]``: grounded in ``pre``, ``pnr``, ``post``.
        boxes: float32 ``[O, 3, 4]`` normalised xyxy per frame type, zeros where not grounded.
        object_graph: int64 ``[O]`` graph of each object.
        verb_targets: int64 ``[G]`` verb class of each graph.
        object_targets: int64 ``[O]`` class of each object.
        edge_targets: float32 ``[O, R]`` multi-hot edges verb → object.
        object_offsets: ``G + 1`` ints.
        extras: fields plugins add (:func:`m3sgg.data.batch_fields.register_batch_field`);
            tensors among them move with the batch.
    """

    graph_ids: tuple[str, ...]
    sample_indices: tuple[int, ...]
    gts: tuple[GraphGT, ...]
    verb_features: torch.Tensor
    obj_features: torch.Tensor
    object_mask: torch.Tensor
    grounded: torch.Tensor
    boxes: torch.Tensor
    object_graph: torch.Tensor
    verb_targets: torch.Tensor
    object_targets: torch.Tensor
    edge_targets: torch.Tensor
    object_offsets: tuple[int, ...]
    extras: Mapping[str, Any] = field(default_factory=dict)

    _TENSORS: ClassVar[tuple[str, ...]] = (
        "verb_features",
        "obj_features",
        "object_mask",
        "grounded",
        "boxes",
        "object_graph",
        "verb_targets",
        "object_targets",
        "edge_targets",
    )

    @property
    def num_graphs(self) -> int:
        return len(self.graph_ids)

    @property
    def num_objects(self) -> int:
        return self.object_offsets[-1]

    @property
    def object_counts(self) -> list[int]:
        """Objects per graph."""
        return np.diff(self.object_offsets).tolist()

    @property
    def device(self) -> torch.device:
        return self.verb_features.device

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> EASGBatch:
        changes = {name: fn(getattr(self, name)) for name in self._TENSORS}
        return replace(self, **changes, extras=self._mapped_extras(fn))

    def to(self, device: torch.device | str, non_blocking: bool = True) -> EASGBatch:
        """A copy with every tensor on ``device`` (ground truths and offsets stay as they are)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> EASGBatch:
        """A copy with every tensor in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        return self._map(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return self.num_graphs


def collate_easg(samples: Sequence[EASGSample]) -> EASGBatch:
    """Concatenate EASG graphs into one :class:`EASGBatch` (usable as a ``collate_fn``).

    Args:
        samples: one or more :class:`~m3sgg.data.easg.EASGSample` read with features (the SGG
            view, ``EASG(root, split)``).

    Raises:
        ValueError: no samples.
        DataError: a sample has no features, or its arrays disagree with its ground truth or
            with the other samples' widths.
    """
    if not samples:
        raise ValueError("collate_easg needs at least one sample")
    for sample in samples:
        _check_sample(sample, samples[0])
    counts = np.array([s.num_objects for s in samples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    frame_feats = np.concatenate([s.obj_features for s in samples], axis=0)  # (O, 3, Df)
    boxes = np.concatenate([s.boxes for s in samples], axis=0)  # (O, 3, 4), NaN: not grounded
    grounded = ~np.isnan(boxes[..., 0])
    per_object = grounded.sum(axis=1)
    # Features are zero where not grounded, so the sum over frame types is the grounded sum.
    divisor = np.maximum(per_object, 1).astype(np.float32)[:, None]
    obj_features = frame_feats.sum(axis=1, dtype=np.float32) / divisor
    edges = np.concatenate([s.gt.edges for s in samples], axis=0)

    return EASGBatch(
        graph_ids=tuple(s.gt.graph_id for s in samples),
        sample_indices=tuple(int(s.index) for s in samples),
        gts=tuple(s.gt for s in samples),
        verb_features=_tensor(np.stack([s.verb_feature for s in samples]), np.float32),
        obj_features=_tensor(obj_features, np.float32),
        object_mask=_tensor(per_object > 0, np.bool_),
        grounded=_tensor(grounded, np.bool_),
        boxes=_tensor(np.nan_to_num(boxes, nan=0.0), np.float32),
        object_graph=_tensor(np.repeat(np.arange(len(samples)), counts), np.int64),
        verb_targets=_tensor(np.array([s.gt.verb for s in samples]), np.int64),
        object_targets=_tensor(np.concatenate([s.gt.objects for s in samples]), np.int64),
        edge_targets=_tensor(edges, np.float32),
        object_offsets=tuple(int(x) for x in offsets),
    )


def split_easg_predictions(
    batch: EASGBatch,
    predictions: Mapping[str, torch.Tensor],
    *,
    graph_keys: Sequence[str] = EASG_GRAPH_PREDICTION_KEYS,
    object_keys: Sequence[str] = EASG_OBJECT_PREDICTION_KEYS,
    device: torch.device | str | None = "cpu",
) -> list[tuple[GraphGT, dict[str, torch.Tensor]]]:
    """Cut batch-level predictions into one ``(GraphGT, dict)`` per graph for ``EASGRecall``.

    Each dict holds ``verb_logits`` ``[V]``, ``obj_logits`` ``[n, C]`` and ``rel_logits``
    ``[n, R]`` (the single-graph form of :meth:`EASGRecall.update`) for the keys present in
    ``predictions``; keys in neither list are left out. Tensors are detached and moved to
    ``device`` once, before cutting (``None`` keeps them where they are).

    Raises:
        ValueError: a listed prediction does not have one row per graph (or object).
    """
    pieces: dict[str, Sequence[torch.Tensor]] = {}
    for keys, rows, what in (
        (graph_keys, batch.num_graphs, "graph"),
        (object_keys, batch.num_objects, "object"),
    ):
        for key in keys:
            if key not in predictions:
                continue
            value = predictions[key].detach()
            if value.dim() == 0 or value.shape[0] != rows:
                raise ValueError(
                    f"prediction {key!r} has shape {tuple(value.shape)}, expected one row per "
                    f"{what} ({rows})"
                )
            if device is not None:
                value = value.to(device)
            pieces[key] = value.unbind(0) if what == "graph" else value.split(batch.object_counts)
    return [
        (gt, {key: chunks[g] for key, chunks in pieces.items()}) for g, gt in enumerate(batch.gts)
    ]


def _check_sample(sample: EASGSample, first: EASGSample) -> None:
    """Features present, shaped like the ground truth and like the first sample's."""
    where = sample.gt.graph_id
    if sample.obj_features is None or sample.verb_feature is None:
        raise DataError(
            where,
            "the sample has no features (read the SGG view with features: EASG(root, split))",
            field="features",
        )
    n, num_rel = sample.gt.edges.shape
    if sample.obj_features.ndim != 3 or sample.obj_features.shape[:2] != (n, 3):
        raise DataError(
            where,
            f"object features have shape {sample.obj_features.shape}, expected ({n}, 3, D)",
            field="obj_features",
        )
    if sample.boxes.shape != (n, 3, 4):
        raise DataError(
            where, f"boxes have shape {sample.boxes.shape}, expected ({n}, 3, 4)", field="boxes"
        )
    for name, value, ref in (
        ("obj_features", sample.obj_features.shape[-1], first.obj_features.shape[-1]),
        ("verb_feature", sample.verb_feature.shape, first.verb_feature.shape),
        ("edges", num_rel, first.gt.edges.shape[1]),
    ):
        if value != ref:
            raise DataError(
                where,
                f"width {value} differs from the batch's first graph ({ref})",
                field=name,
            )


def _tensor(array: np.ndarray, dtype: type) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))

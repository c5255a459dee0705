"""Fields a plugin adds to every batch of a dataset, without a new dataset or a new collate.

A batch (:class:`~m3sgg.data.collate.Batch`, :class:`~m3sgg.data.collate_easg.EASGBatch`) has a
fixed set of typed fields (see ``docs/batch.md``) and one open mapping, ``batch.extras``. A
plugin fills it with :func:`register_batch_field`: ``fn(samples, batch)`` runs in the data loader
(worker processes included) right after the dataset's collate, and its value is stored under
``name``. Tensors in ``extras`` travel with the batch (``batch.to(device)``, pinned memory);
other values are passed through as they are.

Example::

    from m3sgg.data.batch_fields import register_batch_field

    def frames_per_video(samples, batch):
        return torch.tensor([s.gt.num_frames for s in samples])

    register_batch_field("action_genome", "frames_per_video", frames_per_video)
    # in the model: batch.extras["frames_per_video"]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "BatchField",
    "CollateWithFields",
    "ExtraFields",
    "batch_fields",
    "register_batch_field",
    "with_batch_fields",
]

#: ``fn(samples, batch) -> value``: one extra field of a batch.
BatchField = Callable[[Sequence[Any], Any], Any]

_FIELDS: dict[str, dict[str, BatchField]] = {}


def register_batch_field(
    dataset: str, name: str, fn: BatchField, *, override: bool = False
) -> None:
    """Add ``batch.extras[name] = fn(samples, batch)`` to every batch of ``dataset``.

    Raises:
        ValueError: ``name`` is taken (unless ``override``) or not an identifier.
    """
    if not name.isidentifier():
        raise ValueError(f"batch field {name!r}: must be a Python identifier")
    taken = _FIELDS.setdefault(dataset, {})
    if name in taken and not override:
        raise ValueError(f"batch field {name!r} of dataset {dataset!r} is already registered")
    taken[name] = fn


def batch_fields(dataset: str) -> dict[str, BatchField]:
    """The fields registered for ``dataset``, in registration order."""
    return dict(_FIELDS.get(dataset, {}))


class CollateWithFields:
    """``collate(samples)``, then each registered field computed and added (picklable, so it
    runs in DataLoader worker processes)."""

    def __init__(self, collate: Callable[[Sequence[Any]], Any], fields: Mapping[str, BatchField]):
        self.collate = collate
        self.fields = dict(fields)

    def __call__(self, samples: Sequence[Any]) -> Any:
        batch = self.collate(samples)
        return batch.with_extras(**{name: fn(samples, batch) for name, fn in self.fields.items()})


def with_batch_fields(
    collate: Callable[[Sequence[Any]], Any], dataset: str
) -> Callable[[Sequence[Any]], Any]:
    """``collate`` itself when ``dataset`` has no registered field, else a
    :class:`CollateWithFields` around it."""
    fields = batch_fields(dataset)
    return CollateWithFields(collate, fields) if fields else collate


class ExtraFields:
    """What a batch dataclass with an ``extras`` field gets: :meth:`with_extras` and moving the
    tensors among the extras with the batch."""

    extras: Mapping[str, Any]

    def with_extras(self, **values: Any) -> Any:
        """A copy with ``values`` added to ``extras`` (a name of a typed field is refused)."""
        typed = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        clash = sorted(typed & set(values))
        if clash:
            raise ValueError(f"batch fields {clash} exist already; extras need other names")
        return dataclasses.replace(self, extras={**self.extras, **values})  # type: ignore[type-var]

    def _mapped_extras(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
        return {k: fn(v) if torch.is_tensor(v) else v for k, v in self.extras.items()}

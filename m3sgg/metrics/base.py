"""Per-sample metric state that survives distributed evaluation exactly.

A distributed sampler pads the dataset so every rank gets as many samples (7 videos on 2 ranks
become 8: one video is evaluated twice). Summing per-rank totals would count it twice. So recall
metrics here keep one row of statistics per *sample* (a video, a graph), tagged with a stable
64-bit hash of the sample's **identity**: its id *and* a digest of its ground-truth content
(:func:`content_key`). :meth:`SampleStatsMetric.gathered` all-gathers the rows of every rank,
drops repeated identities (keeping the first), and only then do subclasses reduce by sums. So
only what is truly the same sample (the padded repeat: same id, same ground truth) counts once;
two different samples that share an id (two videos both called ``frames``) both count, as the
reference evaluators count them. The same rows give the per-sample results users ask for.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from numbers import Integral
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.metrics import Metric

from m3sgg.errors import ConfigError

__all__ = ["SampleStatsMetric", "check_ks", "content_key", "sample_hash", "unique_names"]


def check_ks(ks: Any, k_max: int | None = None) -> tuple[int, ...]:
    """A recall metric's ``ks``, validated: a non-empty ascending sequence of distinct positive
    ints, each at most ``k_max`` when given.

    Raises:
        ConfigError: naming what is wrong with ``ks``.
    """
    if isinstance(ks, str | bytes) or not isinstance(ks, Sequence) or len(ks) == 0:
        raise ConfigError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    for k in ks:
        if not isinstance(k, Integral) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
        if k_max is not None and k > k_max:
            raise ConfigError(f"every K in ks must be at most k_max={k_max}, got {k}")
    if any(b <= a for a, b in itertools.pairwise(ks)):
        raise ConfigError(f"ks must be sorted ascending without repeats, got {list(ks)}")
    return tuple(int(k) for k in ks)


def sample_hash(sample_id: str) -> int:
    """Stable signed 64-bit hash of a sample id (the same in every process and run)."""
    digest = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def content_key(sample_id: str, *parts: Any) -> str:
    """The identity of a sample: its id and a digest of ``parts`` (arrays, strings, numbers:
    dtype, shape and bytes of each), so equal ids with different contents differ."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, np.ndarray):
            array = np.ascontiguousarray(part)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
        else:
            digest.update(repr(part).encode("utf-8"))
        digest.update(b"\x00")
    return f"{sample_id}\x00{digest.hexdigest()}"


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with repeats told apart: the second ``"frames"`` becomes ``"frames (2)"``."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


class SampleStatsMetric(Metric):
    """Base class: subclasses call :meth:`_record` once per sample (or :meth:`_record_many`)
    and reduce :meth:`gathered`.

    State: a list of sample-identity hashes, the sample ids (names), and a list of float64 rows
    of equal width (declared by the subclass as ``row_width``); distributed reduction is
    *gather, deduplicate by identity, then sum*, done in :meth:`gathered`.
    """

    row_width: int = 0

    def reset(self) -> None:
        self._ids: list[int] = []
        self._keys: list[str] = []
        self._names: list[str] = []
        self._rows: list[torch.Tensor] = []  # blocks of rows, (n, row_width) each

    def _record(self, sample_id: str, row: torch.Tensor, key: str | None = None) -> None:
        if row.shape != (self.row_width,):
            raise ValueError(f"row must have shape ({self.row_width},), got {tuple(row.shape)}")
        self._record_many([sample_id], row[None], None if key is None else [key])

    def _record_many(
        self, sample_ids: Sequence[str], rows: torch.Tensor, keys: Sequence[str] | None = None
    ) -> None:
        """Record ``rows[i]`` for ``sample_ids[i]``, whose identity is ``keys[i]`` (default: the
        id alone; see :func:`content_key`)."""
        if rows.shape != (len(sample_ids), self.row_width):
            raise ValueError(
                f"rows must have shape ({len(sample_ids)}, {self.row_width}), got "
                f"{tuple(rows.shape)}"
            )
        keys = sample_ids if keys is None else keys
        self._ids.extend(sample_hash(key) for key in keys)
        self._keys.extend(keys)
        self._names.extend(sample_ids)
        self._rows.append(rows.to(dtype=torch.float64, device="cpu"))

    def _local(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor(self._ids, dtype=torch.int64)
        if self._rows:
            rows = torch.cat(self._rows)
        else:
            rows = torch.zeros((0, self.row_width), dtype=torch.float64)
        return ids, rows

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [N], rows [N, row_width])`` over all ranks, each sample id once.

        Every rank gets the same result. Within and across ranks the first occurrence of an id
        wins (rank order, then update order).
        """
        ids, rows = self._local()
        if idist.get_world_size() > 1:
            ids, rows = _all_gather_rows(ids, rows)
        return _first_occurrence(ids, rows)

    def all_names(self) -> dict[int, str]:
        """Sample-identity hash → sample id, over all ranks (for per-sample results); different
        samples sharing an id are told apart as ``"id (2)"``, ``"id (3)"``, in gathered order."""
        pairs = list(zip(self._keys, self._names, strict=True))
        if idist.get_world_size() > 1:
            gathered = idist.all_gather(json.dumps(pairs))
            pairs = [tuple(pair) for part in gathered for pair in json.loads(part)]
        first: dict[int, str] = {}
        for key, name in pairs:
            first.setdefault(sample_hash(key), name)
        return dict(zip(first, unique_names(list(first.values())), strict=True))

    def local_samples(self) -> list[tuple[str, torch.Tensor]]:
        """``(sample_id, row)`` for the samples this process saw, in update order."""
        return list(zip(self._names, self._local()[1], strict=True))


def _first_occurrence(ids: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if ids.numel() == 0:
        return ids, rows
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.numel())
    first = torch.full((unique.numel(),), ids.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    first = first.sort().values
    return ids[first], rows[first]


def _all_gather_rows(ids: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather variable-length ``ids``/``rows`` (padded to the longest rank, then trimmed)."""
    device = idist.device()
    count = torch.tensor([ids.numel()], dtype=torch.int64, device=device)
    counts: Sequence[int] = idist.all_gather(count).cpu().tolist()
    longest = max(counts)
    width = rows.shape[1]
    pad_ids = torch.zeros(longest, dtype=torch.int64)
    pad_rows = torch.zeros((longest, width), dtype=torch.float64)
    pad_ids[: ids.numel()] = ids
    pad_rows[: rows.shape[0]] = rows
    all_ids = idist.all_gather(pad_ids.to(device)).cpu().view(-1, longest)
    all_rows = idist.all_gather(pad_rows.to(device)).cpu().view(-1, longest, width)
    keep_ids = [all_ids[r, :n] for r, n in enumerate(counts)]
    keep_rows = [all_rows[r, :n] for r, n in enumerate(counts)]
    return torch.cat(keep_ids), torch.cat(keep_rows)

"""Per-sample metric state that survives distributed evaluation exactly.

A distributed sampler pads the dataset so every rank gets as many samples (7 videos on 2 ranks
become 8: one video is evaluated twice). Summing per-rank totals would count it twice. So recall
metrics here keep one row of statistics per *sample* (a video, a graph), tagged with a stable
64-bit hash of the sample id. :meth:`SampleStatsMetric.gathered` all-gathers the rows of every
rank, drops repeated ids (keeping the first), and only then do subclasses reduce by sums. The same
rows give the per-sample results users ask for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import ignite.distributed as idist
import torch
from ignite.metrics import Metric

__all__ = ["SampleStatsMetric", "sample_hash"]


def sample_hash(sample_id: str) -> int:
    """Stable signed 64-bit hash of a sample id (the same in every process and run)."""
    digest = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class SampleStatsMetric(Metric):
    """Base class: subclasses call :meth:`_record` once per sample (or :meth:`_record_many`)
    and reduce :meth:`gathered`.

    State: a list of sample-id hashes and a list of float64 rows of equal width (declared by
    the subclass as ``row_width``); distributed reduction is *gather, deduplicate by id, then
    sum*, done in :meth:`gathered`.
    """

    row_width: int = 0

    def reset(self) -> None:
        self._ids: list[int] = []
        self._names: list[str] = []
        self._rows: list[torch.Tensor] = []  # blocks of rows, (n, row_width) each

    def _record(self, sample_id: str, row: torch.Tensor) -> None:
        if row.shape != (self.row_width,):
            raise ValueError(f"row must have shape ({self.row_width},), got {tuple(row.shape)}")
        self._record_many([sample_id], row[None])

    def _record_many(self, sample_ids: Sequence[str], rows: torch.Tensor) -> None:
        """Record ``rows[i]`` for ``sample_ids[i]``."""
        if rows.shape != (len(sample_ids), self.row_width):
            raise ValueError(
                f"rows must have shape ({len(sample_ids)}, {self.row_width}), got "
                f"{tuple(rows.shape)}"
            )
        self._ids.extend(sample_hash(sample_id) for sample_id in sample_ids)
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
        """Sample-id hash → sample id, over all ranks (for per-sample results)."""
        names = list(self._names)
        if idist.get_world_size() > 1:
            gathered = idist.all_gather(json.dumps(names))
            names = [name for part in gathered for name in json.loads(part)]
        return {sample_hash(name): name for name in names}

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

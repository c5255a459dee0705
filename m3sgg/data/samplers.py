"""A shuffling, distributed-aware sampler whose position can be saved and restored exactly.

ignite's Engine resumed mid-epoch starts a fresh iterator over the data loader, and
``DistributedSampler`` can only be told the epoch, not where in it to start. This sampler is a
deterministic function of ``(seed, epoch, start)``: epoch ``e``'s order is
``randperm(n, generator=seed + e)``, padded like ``DistributedSampler`` (wrapping to a multiple
of the world size) and strided by rank, and iteration begins at sample ``start``. The trainer's
``sampler_position`` handler sets the position from the engine's counters at every epoch start,
so a resumed run sees exactly the batches the interrupted one had not yet consumed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler"]


class ResumableSampler(Sampler[int]):
    """Sample indices of one epoch, shuffled per ``(seed, epoch)``, from a settable offset.

    Args:
        num_samples: dataset length.
        shuffle: shuffle per epoch (False: ``0..n-1``).
        seed: base seed of the per-epoch permutation.
        num_replicas, rank: distributed world size and this process's rank (default: ignite's
            ``idist`` values). Each rank gets ``ceil(n / num_replicas)`` indices; the last ones
            wrap around, so a few samples repeat across ranks (metrics deduplicate them by id).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if num_replicas is None or rank is None:
            import ignite.distributed as idist

            num_replicas = idist.get_world_size() if num_replicas is None else num_replicas
            rank = idist.get_rank() if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start = 0

    @property
    def per_rank(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)

    def __len__(self) -> int:
        return self.per_rank

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Epoch ``epoch`` (0-based) from its ``start``-th sample of this rank."""
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start must be in [0, {self.per_rank}], got {start}")
        self.epoch = epoch
        self.start = start

    def indices(self, epoch: int) -> list[int]:
        """This rank's full index list for ``epoch``."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.num_replicas
        order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        yield from self.indices(self.epoch)[self.start :]

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "start": self.start,
            "shuffle": self.shuffle,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_samples"] != self.num_samples:
            raise ValueError(
                f"sampler state is for {state['num_samples']} samples, "
                f"dataset has {self.num_samples}"
            )
        self.seed, self.shuffle = state["seed"], state["shuffle"]
        self.set_position(state["epoch"], state["start"])

"""``loss_tracker``: running means of every loss term since the last evaluation."""

from __future__ import annotations

from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from m3sgg.engine.handlers.base import Handler

__all__ = ["LossTracker"]


class LossTracker(Handler):
    """At ITERATION_COMPLETED, add each loss term of ``engine.state.output`` to a running sum.

    Sums stay on the training device (no host sync per step); :meth:`take` returns the means as
    floats and starts a new window (the evaluation handler calls it, so ``metrics.jsonl`` holds
    the mean training losses between two evaluations). State: the sums and count, resumable;
    rank-local (a distributed checkpoint holds each rank's, see ``Trainer.save_checkpoint``).
    """

    name = "loss_tracker"
    priority = 20
    rank_local = True  # each rank sums its own steps: checkpoints keep every rank's state

    def __init__(self) -> None:
        self._keys: tuple[str, ...] = ()
        self._sums: torch.Tensor | None = None  # float64 [len(keys)] on the training device
        self._count = 0

    def events(self) -> list[Any]:
        return [Events.ITERATION_COMPLETED]

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, dict) or not output.get("finite", True):
            return
        keys = tuple(k for k in output if k != "finite")
        values = torch.stack([torch.as_tensor(output[k]).double() for k in keys])  # mixed dtypes
        if self._sums is None or keys != self._keys:
            if self._sums is not None:  # a term appeared or vanished: start a new window
                self._count = 0
            self._keys, self._sums = keys, torch.zeros_like(values)
        self._sums += values
        self._count += 1

    def means(self) -> dict[str, float]:
        """Mean of each term since the last :meth:`take`, over all ranks (one all-reduce)."""
        if not self._count or self._sums is None:
            return {}
        sums = torch.cat(
            [self._sums.cpu(), torch.tensor([float(self._count)], dtype=torch.float64)]
        )
        if idist.get_world_size() > 1:
            sums = idist.all_reduce(sums.to(idist.device())).cpu()
        return {k: float(sums[i]) / float(sums[-1]) for i, k in enumerate(self._keys)}

    def take(self) -> dict[str, float]:
        """Means since the last call, then reset."""
        means = self.means()
        self._keys, self._sums, self._count = (), None, 0
        return means

    def state_dict(self) -> dict[str, Any]:
        sums = self._sums.cpu().tolist() if self._sums is not None else []
        return {"sums": dict(zip(self._keys, sums, strict=True)), "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._keys = tuple(state["sums"])
        self._sums = (
            torch.tensor(list(state["sums"].values()), dtype=torch.float64)
            if (self._keys)
            else None
        )
        self._count = int(state["count"])

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
    the mean training losses between two evaluations). State: the sums and count, resumable.
    """

    name = "loss_tracker"
    priority = 20

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def events(self) -> list[Any]:
        return [Events.ITERATION_COMPLETED]

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, dict) or not output.get("finite", True):
            return
        for key, value in output.items():
            if key == "finite":
                continue
            value = value.detach().double() if torch.is_tensor(value) else torch.tensor(value)
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._count += 1

    def means(self) -> dict[str, float]:
        """Mean of each term since the last :meth:`take`, over all ranks (one all-reduce)."""
        if not self._count:
            return {}
        keys = sorted(self._sums)
        sums = torch.stack(
            [self._sums[k].double().cpu() for k in keys]
            + [torch.tensor(float(self._count), dtype=torch.float64)]
        )
        if idist.get_world_size() > 1:
            sums = idist.all_reduce(sums.to(idist.device())).cpu()
        return {k: float(sums[i]) / float(sums[-1]) for i, k in enumerate(keys)}

    def take(self) -> dict[str, float]:
        """Means since the last call, then reset."""
        means = self.means()
        self._sums, self._count = {}, 0
        return means

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: float(v) for k, v in self._sums.items()}, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = {k: torch.tensor(v, dtype=torch.float64) for k, v in state["sums"].items()}
        self._count = int(state["count"])

"""TEMPURA's predicate memory: one prototype per predicate, its read-out and the fusion.

The memory holds one row per predicate (3 attention + 6 spatial + 17 contacting = 26, in that
order) of the relation features the model produced during the previous training epoch. The
original (``lib/Memory.py``, ``lib/Uncertainty.py``) dumps every batch's features to ``.npy``
files and averages them at the end of the epoch; :class:`MemoryAccumulator` keeps streaming sums
instead, which give the same numbers. The weightings:

- ``"simple"``: the plain mean of the features of the pairs labelled with the predicate;
- ``"al"`` / ``"ep"``: ``sum_i exp(u_i) f_i / (sum_i exp(u_i) + 1e-12)`` with ``u_i`` the
  aleatoric / epistemic uncertainty of pair ``i`` for that predicate (more uncertain weighs more);
- ``"both"``: ``sum_i exp(al_i + ep_i) f_i / (2 sum_i exp(al_i) + 1e-12)``. The original forms its
  normaliser by concatenating the per-class lists ``al + al`` (``stats2``), so the weights are not
  renormalised; kept as is, since the published models were trained with it.

In the weighted modes a pair whose uncertainty value is exactly 0 gets weight 0 in the sum but
still counts ``exp(0)`` in the normaliser, as in the original (it selects non-zero entries).
Predicates no training pair carried keep a zero row.

:class:`MemoryFusion` reads the memory with one-head attention without biases (queries: the
relation features, keys and values: the 26 rows) and fuses ``lambda * f + (1 - lambda) * read``
(``lib/transformer.py``: ``memory_hallucinator``); before the first memory exists it passes the
features through unchanged (the original's epoch 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["WEIGHTINGS", "MemoryAccumulator", "MemoryFusion"]

Weighting = Literal["simple", "al", "ep", "both"]
WEIGHTINGS: tuple[str, ...] = ("simple", "al", "ep", "both")


class MemoryAccumulator:
    """Streaming sums of one epoch's relation features per predicate.

    Args:
        num_predicates: rows of the memory (26 for Action Genome).
        dim: width of the relation features.
        weighting: ``"simple"``, ``"al"``, ``"ep"`` or ``"both"`` (see the module docstring).

    Sums are float64 on the CPU-or-device of the first features added; :meth:`compute` returns
    the float32 memory. ``state_dict``/``load_state_dict`` make a mid-epoch resume exact.
    """

    def __init__(self, num_predicates: int, dim: int, weighting: Weighting = "simple"):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"memory weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.num_predicates = num_predicates
        self.dim = dim
        self.weighting = weighting
        self.sums = torch.zeros(num_predicates, dim, dtype=torch.float64)
        self.norm = torch.zeros(num_predicates, dtype=torch.float64)

    @property
    def needs_uncertainty(self) -> bool:
        return self.weighting != "simple"

    def reset(self) -> None:
        self.sums.zero_()
        self.norm.zero_()

    def add(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        aleatoric: torch.Tensor | None = None,
        epistemic: torch.Tensor | None = None,
    ) -> None:
        """Add a batch: ``features`` [P, dim], ``targets`` [P, M] (bool or 0/1: the pair carries
        the predicate), uncertainties [P, M] (required unless ``weighting == "simple"``)."""
        if (
            features.shape != (targets.shape[0], self.dim)
            or targets.shape[1] != self.num_predicates
        ):
            raise ValueError(
                f"memory: features {tuple(features.shape)} and targets {tuple(targets.shape)} do "
                f"not fit {self.num_predicates} predicates of width {self.dim}"
            )
        if self.sums.device != features.device:
            self.sums = self.sums.to(features.device)
            self.norm = self.norm.to(features.device)
        mask = targets.bool()
        feats = features.detach().double()
        if self.weighting == "simple":
            weights = mask.double()
            self.norm += weights.sum(dim=0)
        else:
            if aleatoric is None or (self.weighting != "al" and epistemic is None):
                raise ValueError(f"memory weighting {self.weighting!r} needs uncertainty values")
            if self.weighting == "al":
                u = aleatoric
            elif self.weighting == "ep":
                u = epistemic
            else:
                u = aleatoric + epistemic  # type: ignore[operator]  # float32, as the original
            u = u.detach()
            normaliser = (aleatoric.detach() if self.weighting == "both" else u).double().exp()
            scale = 2.0 if self.weighting == "both" else 1.0
            self.norm += scale * torch.where(mask, normaliser, 0.0).sum(dim=0)
            weights = torch.where(mask & (u != 0), u.double().exp(), 0.0)
        self.sums += weights.T @ feats

    def compute(self) -> torch.Tensor:
        """The memory [M, dim], float32 (zero rows for predicates never seen)."""
        if self.weighting == "simple":
            seen = self.norm > 0
            memory = torch.where(seen[:, None], self.sums / self.norm.clamp(min=1)[:, None], 0.0)
        else:
            memory = self.sums / (self.norm[:, None] + 1e-12)
        return memory.float()

    def all_reduce(self) -> None:
        """Sum the partial sums of every process (distributed training)."""
        import ignite.distributed as idist

        if idist.get_world_size() > 1:
            self.sums = idist.all_reduce(self.sums)
            self.norm = idist.all_reduce(self.norm)

    def state_dict(self) -> dict[str, Any]:
        return {
            "weighting": self.weighting,
            "sums": self.sums.cpu().clone(),
            "norm": self.norm.cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["weighting"] != self.weighting:
            raise ValueError(
                f"memory sums were taken with weighting {state['weighting']!r}, "
                f"this run uses {self.weighting!r}"
            )
        sums, norm = state["sums"], state["norm"]
        if tuple(sums.shape) != (self.num_predicates, self.dim) or tuple(norm.shape) != (
            self.num_predicates,
        ):
            raise ValueError(f"memory sums of shape {tuple(sums.shape)} do not fit this model")
        self.sums = sums.to(self.sums.device, torch.float64).clone()
        self.norm = norm.to(self.norm.device, torch.float64).clone()


class MemoryFusion(nn.Module):
    """Read the predicate memory with one-head attention and fuse it with the features.

    Args:
        dim: width of the relation features (1936 in the paper).
        num_predicates: memory rows (26).
        selection: ``"manual"`` (a fixed ``lam``) or ``"automated"`` (``lam`` =
            ``sigmoid(Linear(dim, 1)(f))`` per row).
        lam: the weight of the features in manual selection (TEMPURA: 0.5 PredCLS, 0.3 SGCLS).
        groups: ``None`` for the joint memory (one attention over all rows, the recipes), or the
            row count of each predicate group for the separate memory (one attention per group,
            read-outs averaged).

    State: ``memory`` [M, dim] and ``ready`` (a 0-d bool, false until :meth:`set_memory`) are
    buffers, so checkpoints carry the memory the model was trained and evaluated with.
    """

    def __init__(
        self,
        dim: int,
        num_predicates: int = 26,
        *,
        selection: Literal["manual", "automated"] = "manual",
        lam: float = 0.5,
        groups: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if selection not in ("manual", "automated"):
            raise ValueError(f"selection must be 'manual' or 'automated', got {selection!r}")
        if groups is not None and sum(groups) != num_predicates:
            raise ValueError(f"memory groups {groups} do not add up to {num_predicates} rows")
        self.selection = selection
        self.lam = float(lam)
        self.groups = tuple(groups) if groups is not None else None
        if self.groups is None:
            self.attention: nn.Module = nn.MultiheadAttention(dim, 1, dropout=0.0, bias=False)
        else:
            self.attention = nn.ModuleList(
                nn.MultiheadAttention(dim, 1, dropout=0.0, bias=False) for _ in self.groups
            )
        self.selector = nn.Linear(dim, 1) if selection == "automated" else None
        self.register_buffer("memory", torch.zeros(num_predicates, dim))
        self.register_buffer("ready", torch.tensor(False))
        self._ready = False
        self.register_load_state_dict_post_hook(_sync_ready)

    def extra_repr(self) -> str:
        lam = "learned" if self.selector is not None else self.lam
        return f"lambda={lam}, memory={'joint' if self.groups is None else self.groups}"

    @property
    def is_ready(self) -> bool:
        """Whether a memory has been set (no device synchronisation)."""
        return self._ready

    @torch.no_grad()
    def set_memory(self, memory: torch.Tensor) -> None:
        """Install a new memory [M, dim] (e.g. :meth:`MemoryAccumulator.compute`)."""
        self.memory.copy_(memory)
        self.ready.fill_(True)
        self._ready = True

    def read(self, features: torch.Tensor) -> torch.Tensor:
        """The attention read-out [P, dim] of the memory for each row of ``features``."""
        query = features.unsqueeze(1)
        if self.groups is None:
            rows = self.memory.unsqueeze(1)
            return self.attention(query, rows, rows, need_weights=False)[0].squeeze(1)
        reads = []
        start = 0
        for attention, size in zip(self.attention, self.groups, strict=True):  # type: ignore[arg-type]
            rows = self.memory[start : start + size].unsqueeze(1)
            reads.append(attention(query, rows, rows, need_weights=False)[0].squeeze(1))
            start += size
        return torch.stack(reads, dim=1).mean(dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            return features
        lam: Any = self.lam if self.selector is None else torch.sigmoid(self.selector(features))
        return lam * features + (1 - lam) * self.read(features)


def _sync_ready(module: nn.Module, _incompatible: Any) -> None:
    module._ready = bool(module.ready)  # type: ignore[union-attr]

"""STKET's prior-augmented attention layers (``lib/transformer.py`` of the original).

Both layers project the input three times before the attention (``w_q``, ``w_k``, ``w_v``, each a
``Linear(d, d)``) and add the prior to the input of the query and key projections only::

    q = w_q(x + prior)    k = w_k(x + prior)    v = w_v(x)

then run ``nn.MultiheadAttention`` (with its own input projections) on ``(q, k, v)``. The encoder
layer is post-norm (LayerNorm after the attention and after the FFN); the decoder layer adds a
position embedding to ``q`` and ``k`` after the projections, and has no LayerNorm after its FFN.
The same prior enters every layer of a stack. Tensors are batch-first ``[B, L, d]`` with a
``[B, L]`` bool padding mask (True = padding).
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

__all__ = ["PriorDecoderLayer", "PriorEncoderLayer", "PriorStack", "StateFC"]


class StateFC(nn.Sequential):
    """Prior vector (26 predicates) → token width: four Linear layers, no activation between."""

    def __init__(self, in_dim: int, d_model: int, hidden: tuple[int, ...] = (128, 256, 512)):
        dims = (in_dim, *hidden, d_model)
        super().__init__(*(nn.Linear(a, b) for a, b in itertools.pairwise(dims)))


class _PriorLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, ff_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ff_dim, d_model)
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)

    def _attend(
        self, x: torch.Tensor, prior: torch.Tensor, padding: torch.Tensor, position: torch.Tensor
    ) -> torch.Tensor:
        q, k, v = self.w_q(x + prior), self.w_k(x + prior), self.w_v(x)
        out, _ = self.self_attn(
            q + position, k + position, v, key_padding_mask=padding, need_weights=False
        )
        return out

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(torch.relu(self.linear1(x))))


class PriorEncoderLayer(_PriorLayer):
    """Spatial encoder layer: ``forward(x, prior, padding) -> x`` (post-norm, two LayerNorms)."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float = 0.1):
        super().__init__(d_model, heads, ff_dim, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        prior: torch.Tensor,
        padding: torch.Tensor,
        position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        zero = x.new_zeros(()) if position is None else position
        x = self.norm1(x + self.dropout1(self._attend(x, prior, padding, zero)))
        return self.norm2(x + self.dropout2(self._ffn(x)))


class PriorDecoderLayer(_PriorLayer):
    """Temporal/ensemble decoder layer: ``forward(x, prior, padding, position) -> x``; the
    position embedding joins ``q`` and ``k`` after their projections; no LayerNorm after the FFN.
    """

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float = 0.1):
        super().__init__(d_model, heads, ff_dim, dropout)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        prior: torch.Tensor,
        padding: torch.Tensor,
        position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        zero = x.new_zeros(()) if position is None else position
        x = self.norm3(x + self.dropout2(self._attend(x, prior, padding, zero)))
        return x + self.dropout3(self._ffn(x))


class PriorStack(nn.Module):
    """``num_layers`` deep copies of ``layer``; the same prior and position enter every layer."""

    def __init__(self, layer: nn.Module, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(
        self,
        x: torch.Tensor,
        prior: torch.Tensor,
        padding: torch.Tensor,
        position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, prior, padding, position)
        return x

"""STTran's spatial encoder and temporal decoder on packed tensors (``lib/transformer.py``).

Both work on the relation tokens of a whole batch ``[P, d]`` (pairs ordered by batch-level frame,
frames of a video contiguous) and pack them into padded groups that one set of layers processes
at once, vectorised over frames, windows and videos:

- :class:`SpatialEncoder`: post-norm self-attention among the pairs of one frame (one group per
  frame that has pairs; key padding masks the padded slots).
- :class:`TemporalDecoder`: windows of two frames ``{j, j + 1}`` of a video, each decoded on its
  own: the pairs of frame ``j`` then those of ``j + 1``, with a learned position embedding
  (``nn.Embedding(2, d)``: slot 0 for the earlier frame, 1 for the later) added to queries and
  keys (not values). Frame 0 takes its output from window 0, frame ``j + 1`` from window ``j``. The
  windows of a video run up to its last frame with pairs; a video whose pairs all lie in its
  first frame has no window and its output is exactly zero. Padded slots are masked as keys. (The
  original finds padding as rows whose entries *sum* to zero, which also masks a real row summing
  to exactly 0.0: with freshly initialised LayerNorms, whose outputs sum to about 0, that happens,
  and it makes a video's output depend on float rounding; we mask padding only.) The decoder layer
  has no LayerNorm after its feed-forward block.

The attention is written out on ``F.scaled_dot_product_attention`` with the parameter layout of
``nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj``), so the original's
weights load one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DecoderLayer",
    "EncoderLayer",
    "MultiheadAttention",
    "SpatialEncoder",
    "TemporalDecoder",
    "pack",
]


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (batch first, key padding only) on SDPA: same parameters, same
    function; attention dropout in training."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """``query``/``key``/``value`` ``[G, L, d]``; ``keep`` bool ``[G, L]``: keys attended."""
        groups, length, dim = query.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)

        def split(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return F.linear(x, w, b).view(groups, length, self.heads, -1).transpose(1, 2)

        q, k, v = split(query, w_q, b_q), split(key, w_k, b_k), split(value, w_v, b_v)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :], dropout_p=p)
        return self.out_proj(out.transpose(1, 2).reshape(groups, length, dim))


class EncoderLayer(nn.Module):
    """Post-norm layer: ``norm1(x + attn(x))``, then ``norm2(x + ff(x))`` (ReLU, dropout)."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads, dropout)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout1(self.self_attn(x, x, x, keep)))
        hidden = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout2(hidden))


class DecoderLayer(nn.Module):
    """``norm3(x + attn(q=x+pos, k=x+pos, v=x))``, then ``x + ff(x)`` with no norm after."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.multihead2 = MultiheadAttention(dim, heads, dropout)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        qk = x + position
        x = self.norm3(x + self.dropout2(self.multihead2(qk, qk, x, keep)))
        return x + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x)))))


def pack(
    starts: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Slots of groups of consecutive rows: group ``g`` holds rows ``starts[g] + 0..lengths[g]-1``.

    Returns:
        ``(group, slot, row, width)``: for every packed element its group, its slot in the group
        and its source row; ``width`` = the longest group (at least 1).
    """
    total = int(lengths.sum())
    group = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    slot = torch.arange(total, device=lengths.device) - first[group]
    width = max(int(lengths.max()), 1) if len(lengths) else 1
    return group, slot, starts[group] + slot, width


def _frame_offsets(im_idx: torch.Tensor, num_frames: int) -> torch.Tensor:
    counts = torch.bincount(im_idx, minlength=num_frames)
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


class SpatialEncoder(nn.Module):
    """``layers`` encoder layers over the pairs of each frame.

    ``forward(x [P, d], im_idx [P] non-decreasing batch-level frames, num_frames) -> [P, d]``.
    """

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(dim, heads, ff_dim, dropout) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, im_idx: torch.Tensor, num_frames: int) -> torch.Tensor:
        if not self.layers or not x.shape[0]:
            return x
        offsets = _frame_offsets(im_idx, num_frames)
        lengths = offsets[1:] - offsets[:-1]
        frames = torch.nonzero(lengths).squeeze(1)
        group, slot, row, width = pack(offsets[frames], lengths[frames])
        packed = x.new_zeros(len(frames), width, x.shape[1])
        packed[group, slot] = x[row]
        keep = torch.zeros(len(frames), width, dtype=torch.bool, device=x.device)
        keep[group, slot] = True
        for layer in self.layers:
            packed = layer(packed, keep)
        out = torch.empty_like(x)
        out[row] = packed[group, slot]
        return out


class TemporalDecoder(nn.Module):
    """``layers`` decoder layers over two-frame windows; see the module docstring.

    ``forward(x [P, d], im_idx [P] non-decreasing batch-level frames, frame_start [F] first
    batch frame of each frame's video, num_frames) -> [P, d]`` (zero rows for pairs of videos
    without a window).
    """

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(dim, heads, ff_dim, dropout) for _ in range(layers)
        )
        self.position_embedding = nn.Embedding(2, dim)
        nn.init.uniform_(self.position_embedding.weight)

    def forward(
        self, x: torch.Tensor, im_idx: torch.Tensor, frame_start: torch.Tensor, num_frames: int
    ) -> torch.Tensor:
        out = torch.zeros_like(x)
        if not x.shape[0]:
            return out
        offsets = _frame_offsets(im_idx, num_frames)
        video_start = frame_start[im_idx]
        local = im_idx - video_start
        # Last frame with pairs of each pair's video (pairs are ordered by frame).
        last = torch.zeros(num_frames, dtype=im_idx.dtype, device=x.device)
        last = last.scatter_reduce(0, video_start, local, "amax")[video_start]
        window = torch.where(local > 0, im_idx - 1, im_idx)  # the window's first batch frame
        has = last >= 1
        if not bool(has.any()):
            return out
        windows, which = torch.unique(window[has], return_inverse=True)
        group, slot, row, width = pack(offsets[windows], offsets[windows + 2] - offsets[windows])
        packed = x.new_zeros(len(windows), width, x.shape[1])
        packed[group, slot] = x[row]
        later = (im_idx[row] != windows[group]).long()
        position = x.new_zeros(packed.shape)
        position[group, slot] = self.position_embedding.weight[later].to(x.dtype)
        keep = torch.zeros(len(windows), width, dtype=torch.bool, device=x.device)
        keep[group, slot] = True
        for layer in self.layers:
            packed = layer(packed, keep, position)
        pair = torch.nonzero(has).squeeze(1)
        out[pair] = packed[which, pair - offsets[windows][which]]
        return out

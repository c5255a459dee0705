"""DSG-DETR's sequence encoders: ``nn.TransformerEncoder`` over packed variable-length sequences.

DSG-DETR (``lib/sttran.py``) runs three encoders of the same kind, each a stack of
``nn.TransformerEncoderLayer`` (post-norm, ReLU, batch-first, dropout 0.1):

- the **object-sequence encoder** (``encoder_tran``: 3 layers, d 2376, 8 heads, FFN 1024) over
  each object sequence of :mod:`~m3sgg.models.dsg_detr.tracking`, with sinusoidal positions;
- the **local relation encoder** (``local_transformer``: 1 layer, d 1936, 8 heads, FFN 2048) over
  the relation tokens of each frame, without positions;
- the **global relation encoder** (``global_transformer``: 3 layers, same widths) over the
  relation tokens of each object class of a video, with sinusoidal positions.

The original pads each group into a batch with ``pad_sequence`` and masks the padding as keys.
:class:`SequenceEncoder` does the same from packed rows: each row names its sequence and the
rows of a sequence keep their index order; the output is written back to the rows. Sequence
order and padding length do not change a row's output (padded keys are masked).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from m3sgg.models.dsg_detr.tracking import sequence_positions

__all__ = ["SequenceEncoder", "SinusoidalPositions", "sinusoidal_table"]


def sinusoidal_table(length: int, d_model: int) -> Tensor:
    """``[length, d_model]``: ``sin(p * r_i)`` in even columns, ``cos(p * r_i)`` in odd ones,
    ``r_i = exp(-2i * ln(10000) / d_model)`` (the original's ``PositionalEncoding``, in float32).
    ``d_model`` must be even."""
    if d_model % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {d_model}")
    position = torch.arange(length).unsqueeze(1)
    rate = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)
    return table


class SinusoidalPositions(nn.Module):
    """Adds the sinusoidal position of each row, then dropout.

    The table is a constant (not saved in checkpoints).

    Args:
        d_model: width (even).
        max_len: positions ``0..max_len-1`` (the original: 400, 600 for sgdet objects).
        dropout: applied after the addition (0.1 in the original).
    """

    def __init__(self, d_model: int, max_len: int = 400, dropout: float = 0.1) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, position: Tensor) -> Tensor:
        """``x`` ``[N, d]`` plus ``table[position]`` (``position`` int64 ``[N]``)."""
        if position.numel() and int(position.max()) >= self.table.shape[0]:
            raise ValueError(
                f"position {int(position.max())} is beyond the {self.table.shape[0]} "
                "sinusoidal positions; raise max_len"
            )
        return self.dropout(x + self.table[position].to(x.dtype))


class SequenceEncoder(nn.Module):
    """A ``nn.TransformerEncoder`` over the packed rows of many variable-length sequences.

    Args:
        d_model, heads, ff_dim, layers: the encoder's shape.
        dropout: of the encoder layers and of the positions.
        max_len: positions available; ``None`` for an encoder without positions.

    Example::

        enc = SequenceEncoder(64, 4, 128, 2, max_len=100)
        out = enc(x, sequence=group_by_key(video, label), position=None)  # [N, 64]
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        ff_dim: int,
        layers: int,
        dropout: float = 0.1,
        max_len: int | None = None,
    ) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model, heads, ff_dim, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.positions = (
            SinusoidalPositions(d_model, max_len, dropout) if max_len is not None else None
        )

    def forward(self, x: Tensor, sequence: Tensor, position: Tensor | None = None) -> Tensor:
        """Encode each sequence on its own.

        Args:
            x: ``[N, d]`` rows.
            sequence: int64 ``[N]`` dense sequence ids ``0..S-1``; a sequence's rows in index
                order are its elements in order.
            position: int64 ``[N]`` position of each row for the sinusoidal table; None: its
                rank in its sequence. Ignored without positions.

        Returns:
            ``[N, d]``: each row's output.
        """
        if x.shape[0] == 0:
            return x
        slot = sequence_positions(sequence)
        if self.positions is not None:
            x = self.positions(x, slot if position is None else position)
        num_seq, length = int(sequence.max()) + 1, int(slot.max()) + 1
        padded = x.new_zeros(num_seq, length, x.shape[1])
        padded[sequence, slot] = x
        padding = torch.ones(num_seq, length, dtype=torch.bool, device=x.device)
        padding[sequence, slot] = False
        return self.encoder(padded, src_key_padding_mask=padding)[sequence, slot]

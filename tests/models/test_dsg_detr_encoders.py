"""DSG-DETR's sequence encoders: sinusoidal table, packing equal to encoding each sequence alone."""

from __future__ import annotations

import math

import pytest
import torch

from m3sgg.models.dsg_detr.encoders import SequenceEncoder, SinusoidalPositions, sinusoidal_table


def test_sinusoidal_table_by_hand() -> None:
    table = sinusoidal_table(3, 4)
    # rates: exp(0) = 1 and exp(-2 ln(10000) / 4) = 0.01
    assert table[0].tolist() == [0.0, 1.0, 0.0, 1.0]
    want = [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]
    assert table[2].tolist() == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_table(3, 5)


def test_positions_add_the_row_of_each_position_and_refuse_beyond_the_table() -> None:
    pos = SinusoidalPositions(4, max_len=3, dropout=0.0)
    x = torch.ones(2, 4)
    out = pos(x, torch.tensor([2, 0]))
    assert torch.equal(out, x + sinusoidal_table(3, 4)[[2, 0]])
    assert pos.state_dict() == {}  # a constant, not a weight
    with pytest.raises(ValueError, match="max_len"):
        pos(x, torch.tensor([3, 0]))


def _alone(enc: SequenceEncoder, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """One sequence through the encoder by hand: positions added, no padding."""
    if enc.positions is not None:
        x = x + enc.positions.table[positions]
    return enc.encoder(x[None])[0]


@pytest.mark.parametrize("with_positions", [False, True])
def test_packed_sequences_equal_each_sequence_encoded_alone(with_positions: bool) -> None:
    enc = SequenceEncoder(16, 4, 32, 2, max_len=20 if with_positions else None).eval()
    x = torch.randn(9, 16)
    sequence = torch.tensor([2, 0, 1, 0, 2, 0, 1, 0, 3])  # interleaved, lengths 4, 2, 2, 1
    position = torch.tensor([0, 0, 5, 1, 3, 1, 6, 2, 0])  # sequence 0 gets 0, 1, 1, 2
    with torch.no_grad():
        packed = enc(x, sequence, position if with_positions else None)
        for s in range(4):
            rows = torch.nonzero(sequence == s).view(-1)
            want = _alone(enc, x[rows], position[rows] if with_positions else None)
            assert torch.allclose(packed[rows], want, atol=1e-5), s
        if with_positions:  # without explicit positions, the rank in the sequence is used
            default = enc(x, sequence)
            rows = torch.nonzero(sequence == 0).view(-1)
            want = _alone(enc, x[rows], torch.arange(4))
            assert torch.allclose(default[rows], want, atol=1e-5)
            assert not torch.allclose(default[rows], packed[rows], atol=1e-3)


def test_an_empty_input_passes_through() -> None:
    enc = SequenceEncoder(8, 2, 16, 1)
    assert enc(torch.zeros(0, 8), torch.zeros(0, dtype=torch.int64)).shape == (0, 8)

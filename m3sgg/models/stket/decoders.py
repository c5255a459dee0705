"""STKET's three relation encoders on packed tensors: spatial, temporal and ensemble.

All three take the relation tokens of a whole batch of videos, ``[R, d]`` in batch order, with
each relation's batch-level ``frame``, object ``label`` and (sgcls/sgdet evaluation) object
``scores``; videos are runs of consecutive frames (``frame_video``). Each builds its sequences
with index arithmetic (no loop over relations, frames or videos), runs one batched
:class:`~m3sgg.models.stket.attention.PriorStack`, and scatters the outputs back to ``[R, d]``.

- :class:`SpatialPriorEncoder`: one sequence per frame (its relations); prior
  ``state_fc(initial[label])`` on queries and keys.
- :class:`TemporalPriorDecoder`: one sequence per pair of consecutive frames ``{j, j+1}`` of a
  video (STTran's windows); slot embeddings 0/1; prior on slot-0 rows
  ``state_fc(mean specific[label, c] over the relation's contact set)`` (the initial prior in a
  video's first frame, and when the set is empty), on slot-1 rows ``state_fc(initial[label])``.
  Frame 0 keeps window 0's output, frame ``j+1`` window ``j``'s; a one-frame video gets zeros.
  Also returns the *temporal prior* of each relation (the specific prior of its previous frame's
  contact state, see :mod:`.selection`), which STKET's prior heads read.
- :class:`EnsembleDecoder`: one sequence per relation over its key frames (oldest first), each
  frame represented by ``(spatial + temporal) / 2`` of the relation holding its state; the output
  is the relation's own (last) slot.
"""

from __future__ import annotations

import torch
from torch import nn

from m3sgg.models.stket.attention import PriorDecoderLayer, PriorEncoderLayer, PriorStack, StateFC
from m3sgg.models.stket.selection import contact_sets, key_frame_sources, prior_sources
from m3sgg.vocab import GROUP_SIZES, NUM_AG_CLASSES, NUM_AG_PREDICATES

__all__ = ["EnsembleDecoder", "SpatialPriorEncoder", "TemporalPriorDecoder"]

_NUM_CONTACTING = GROUP_SIZES["contacting"]


def _group_ranks(group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Compact id of each element's group (groups in increasing order), its rank within the
    group in index order, and the number of groups."""
    if group.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=group.device)
        return empty, empty, 0
    order = torch.sort(group, stable=True).indices
    _, inverse, counts = torch.unique_consecutive(
        group[order], return_inverse=True, return_counts=True
    )
    starts = torch.cumsum(counts, 0) - counts
    compact = torch.empty_like(order)
    rank = torch.empty_like(order)
    compact[order] = inverse
    rank[order] = torch.arange(order.numel(), device=group.device) - starts[inverse]
    return compact, rank, int(counts.numel())


def _scatter(
    values: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor, num_seq: int, length: int
) -> torch.Tensor:
    out = values.new_zeros(num_seq, length, values.shape[-1])
    out[seq, pos] = values
    return out


def _padding(seq: torch.Tensor, pos: torch.Tensor, num_seq: int, length: int) -> torch.Tensor:
    padding = torch.ones(num_seq, length, dtype=torch.bool, device=seq.device)
    padding[seq, pos] = False
    return padding


def _video_bounds(frame_video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool ``[F]`` each: the frame is its video's first; the frame is its video's last."""
    first = torch.ones_like(frame_video, dtype=torch.bool)
    first[1:] = frame_video[1:] != frame_video[:-1]
    last = torch.ones_like(first)
    last[:-1] = first[1:]
    return first, last


class SpatialPriorEncoder(nn.Module):
    """Per-frame self-attention over relations with the initial prior on queries and keys.

    Args:
        d_model, heads, ff_dim, layers, dropout: the encoder's sizes (STKET: 1936, 8, 2048, 2).
        use_prior: add the prior (STKET's ``-use_spatial_prior``); otherwise the prior is zero.
        state_dims: hidden widths of ``state_fc``.

    ``forward(x, frame, label) -> (features [R, d], priors [R, d])``; ``priors`` are the
    ``state_fc`` outputs each relation used (zeros without ``use_prior``).
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        ff_dim: int,
        layers: int,
        *,
        dropout: float = 0.1,
        use_prior: bool = True,
        state_dims: tuple[int, ...] = (128, 256, 512),
    ):
        super().__init__()
        self.use_prior = use_prior
        self.encoder = PriorStack(PriorEncoderLayer(d_model, heads, ff_dim, dropout), layers)
        self.initial_prior = nn.Parameter(torch.zeros(NUM_AG_CLASSES, NUM_AG_PREDICATES))
        self.state_fc = StateFC(NUM_AG_PREDICATES, d_model, state_dims)

    def forward(
        self, x: torch.Tensor, frame: torch.Tensor, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        priors = self.state_fc(self.initial_prior[label]) if self.use_prior else torch.zeros_like(x)
        if x.shape[0] == 0:
            return x, priors
        seq, pos, num_seq = _group_ranks(frame)
        length = int(pos.max()) + 1
        out = self.encoder(
            _scatter(x, seq, pos, num_seq, length),
            _scatter(priors, seq, pos, num_seq, length),
            _padding(seq, pos, num_seq, length),
        )
        return out[seq, pos], priors


class TemporalPriorDecoder(nn.Module):
    """Attention over two-frame windows with contact-selected specific priors.

    Args:
        d_model, heads, ff_dim, layers, dropout: the decoder's sizes (STKET: 1936, 8, 2048, 2).
        threshold: contact prediction threshold (STKET trains with 0.8; 1.0 selects the
            ground-truth contacts, as its test script does).
        use_prior: add the priors to the windows (``-use_temporal_prior``).
        state_dims: hidden widths of ``state_fc``.

    ``forward(x, contact, frame, label, scores, frame_video, gt_contacts=None) ->
    (features [R, d], temporal_priors [R, d])``; ``scores`` None means training or predcls
    (see :mod:`.selection`).
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        ff_dim: int,
        layers: int,
        *,
        threshold: float = 0.8,
        dropout: float = 0.1,
        use_prior: bool = True,
        state_dims: tuple[int, ...] = (128, 256, 512),
    ):
        super().__init__()
        self.threshold = threshold
        self.use_prior = use_prior
        self.decoder = PriorStack(PriorDecoderLayer(d_model, heads, ff_dim, dropout), layers)
        self.position_embedding = nn.Embedding(2, d_model)
        nn.init.uniform_(self.position_embedding.weight)
        self.initial_prior = nn.Parameter(torch.zeros(NUM_AG_CLASSES, NUM_AG_PREDICATES))
        self.specific_prior = nn.Parameter(
            torch.zeros(NUM_AG_CLASSES, _NUM_CONTACTING, NUM_AG_PREDICATES)
        )
        self.state_fc = StateFC(NUM_AG_PREDICATES, d_model, state_dims)

    def _specific(self, sets: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``[R, 26]``: mean of ``specific[label, c]`` over each set; the initial prior when the
        set is empty."""
        hot = sets.to(self.specific_prior.dtype)
        total = torch.bmm(hot[:, None, :], self.specific_prior[label])[:, 0]
        size = hot.sum(dim=1, keepdim=True)
        mean = total / size.clamp(min=1)
        return torch.where(size > 0, mean, self.initial_prior[label])

    def forward(
        self,
        x: torch.Tensor,
        contact: torch.Tensor,
        frame: torch.Tensor,
        label: torch.Tensor,
        scores: torch.Tensor | None,
        frame_video: torch.Tensor,
        gt_contacts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        num_frames = frame_video.shape[0]
        sets = contact_sets(contact.detach(), self.threshold, gt_contacts)
        holder, source = prior_sources(frame, label, scores, frame_video, NUM_AG_CLASSES)

        initial = self.state_fc(self.initial_prior[label])
        specific = self.state_fc(self._specific(sets[holder], label))
        temporal_priors = self.state_fc(self._specific(sets[source], label))

        first, last = _video_bounds(frame_video)
        features = torch.zeros_like(x)
        if x.shape[0] == 0:
            return features, temporal_priors
        in0 = ~last[frame]  # slot 0 of window ``frame``
        in1 = ~first[frame]  # slot 1 of window ``frame - 1``
        rank = _group_ranks(frame)[1]
        per_frame = torch.bincount(frame, minlength=num_frames)
        rows = torch.arange(x.shape[0], device=x.device)
        r0, r1 = rows[in0], rows[in1]
        window = torch.cat([frame[r0], frame[r1] - 1])
        pos = torch.cat([rank[r0], per_frame[frame[r1] - 1] + rank[r1]])
        if window.numel() == 0:  # only one-frame videos: no window, zero context
            return features, temporal_priors
        seq, _, num_seq = _group_ranks(window)
        length = int(pos.max()) + 1
        if self.use_prior:
            prior0 = torch.where(first[frame[r0]][:, None], initial[r0], specific[r0])
            prior = torch.cat([prior0, initial[r1]])
        else:
            prior = x.new_zeros(window.shape[0], x.shape[1])
        slot = torch.cat([torch.zeros_like(r0), torch.ones_like(r1)])
        out = self.decoder(
            _scatter(torch.cat([x[r0], x[r1]]), seq, pos, num_seq, length),
            _scatter(prior, seq, pos, num_seq, length),
            _padding(seq, pos, num_seq, length),
            _scatter(self.position_embedding.weight[slot], seq, pos, num_seq, length),
        )
        # frame 0 of a video keeps window 0's slot 0; frame j+1 keeps window j's slot 1
        taken = out[seq, pos]
        n0 = r0.shape[0]
        keep0 = first[frame[r0]]
        features[r0[keep0]] = taken[:n0][keep0]
        features[r1] = taken[n0:]
        return features, temporal_priors


class EnsembleDecoder(nn.Module):
    """Attention over each relation's key frames (STKET's ensemble decoder, 2 layers).

    Args:
        d_model, heads, ff_dim, dropout: sizes (STKET: 1936, 8, 2048).
        window: key frames per relation, the relation's own included (STKET: 4; at least 2).
        layers: decoder layers (STKET always builds 2).

    ``forward(spatial, temporal, frame, label, scores, frame_video) -> features [R, d]``.
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        ff_dim: int,
        *,
        window: int = 4,
        layers: int = 2,
        dropout: float = 0.1,
    ):
        super().__init__()
        if window < 2:  # the original's key-frame loop overruns a window of 1
            raise ValueError(f"window must be >= 2, got {window}")
        self.window = window
        self.decoder = PriorStack(PriorDecoderLayer(d_model, heads, ff_dim, dropout), layers)
        self.position_embedding = nn.Embedding(window, d_model)
        nn.init.uniform_(self.position_embedding.weight)

    def forward(
        self,
        spatial: torch.Tensor,
        temporal: torch.Tensor,
        frame: torch.Tensor,
        label: torch.Tensor,
        scores: torch.Tensor | None,
        frame_video: torch.Tensor,
    ) -> torch.Tensor:
        count, width = spatial.shape
        if count == 0:
            return spatial.new_zeros(0, width)
        history = (spatial + temporal) / 2
        rows, used = key_frame_sources(
            frame, label, scores, frame_video, NUM_AG_CLASSES, self.window
        )
        valid = rows >= 0
        x = torch.where(valid[:, :, None], history[rows.clamp(min=0)], history.new_zeros(()))
        slots = torch.arange(self.window, device=spatial.device)
        position = torch.where(
            valid[:, :, None], self.position_embedding.weight[slots][None], x.new_zeros(())
        )
        out = self.decoder(x, torch.zeros_like(x), ~valid, position)
        return out[torch.arange(count, device=spatial.device), used - 1]

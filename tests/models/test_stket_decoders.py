"""STKET's attention layers and packed encoders: priors on Q/K only, the window rules, batching."""

from __future__ import annotations

import pytest
import torch

from m3sgg.models.stket.attention import PriorEncoderLayer, StateFC
from m3sgg.models.stket.decoders import EnsembleDecoder, SpatialPriorEncoder, TemporalPriorDecoder

D, HEADS, FF, STATE = 16, 2, 32, (8, 8, 8)


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module.eval()


def test_prior_joins_queries_and_keys_not_values():
    layer = _randomise(PriorEncoderLayer(D, HEADS, FF, dropout=0.0))
    x = torch.randn(1, 3, D)
    prior = torch.randn(1, 3, D)
    padding = torch.zeros(1, 3, dtype=torch.bool)
    with torch.no_grad():
        assert not torch.allclose(layer(x, prior, padding), layer(x, 0 * prior, padding))
        # without query/key projections the attention is uniform: a prior that reached the
        # values would still move the output
        for proj in (layer.w_q, layer.w_k):
            proj.weight.zero_()
            proj.bias.zero_()
        torch.testing.assert_close(layer(x, prior, padding), layer(x, 0 * prior, padding))


def test_state_fc_is_four_linear_layers_without_activation():
    fc = _randomise(StateFC(26, D, STATE))
    assert [type(m).__name__ for m in fc] == ["Linear"] * 4
    a, b = torch.randn(26), torch.randn(26)
    with torch.no_grad():  # affine: f(a) + f(b) = f(a + b) + f(0)
        torch.testing.assert_close(fc(a) + fc(b), fc(a + b) + fc(torch.zeros(26)))


def test_spatial_encoder_attends_within_each_frame():
    enc = _randomise(SpatialPriorEncoder(D, HEADS, FF, 2, dropout=0.0, state_dims=STATE))
    x = torch.randn(5, D)
    frame = torch.tensor([0, 0, 1, 1, 1])
    label = torch.tensor([3, 4, 3, 3, 5])
    with torch.no_grad():
        out, priors = enc(x, frame, label)
        alone, _ = enc(x[2:], frame[2:] - 1, label[2:])
        prior = enc.state_fc(enc.initial_prior[label])
        seq0 = enc.encoder(x[None, :2], prior[None, :2], torch.zeros(1, 2, dtype=torch.bool))
    torch.testing.assert_close(out[2:], alone)  # frame 1 does not see frame 0
    torch.testing.assert_close(out[:2], seq0[0])
    torch.testing.assert_close(priors, prior)


def _video(frames: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    frame = torch.tensor([f for f, labels in enumerate(frames) for _ in labels])
    label = torch.tensor([lab for labels in frames for lab in labels])
    return frame, label


def test_temporal_windows_by_hand_on_three_frames():
    dec = _randomise(TemporalPriorDecoder(D, HEADS, FF, 1, dropout=0.0, state_dims=STATE))
    frame, label = _video([[3], [3, 4], [4]])
    x = torch.randn(4, D)
    contact = torch.zeros(4, 17)
    contact[:, 8] = 1.0  # every relation's set is {not_contacting}
    fv = torch.zeros(3, dtype=torch.int64)
    with torch.no_grad():
        out, _ = dec(x, contact, frame, label, None, fv)
        init = dec.state_fc(dec.initial_prior[label])
        spec = dec.state_fc(dec.specific_prior[label, 8])
        pos = dec.position_embedding.weight
        none = torch.zeros(1, 3, dtype=torch.bool)
        # window {0, 1}: rows r0 (slot 0, initial prior: first frame), r1, r2 (slot 1, initial)
        w0 = dec.decoder(
            x[None, :3],
            torch.stack([init[0], init[1], init[2]])[None],
            none,
            torch.stack([pos[0], pos[1], pos[1]])[None],
        )[0]
        # window {1, 2}: rows r1, r2 (slot 0, specific prior), r3 (slot 1, initial prior)
        w1 = dec.decoder(
            x[None, 1:],
            torch.stack([spec[1], spec[2], init[3]])[None],
            none,
            torch.stack([pos[0], pos[0], pos[1]])[None],
        )[0]
    torch.testing.assert_close(out[0], w0[0])  # frame 0 keeps window 0's slot 0
    torch.testing.assert_close(out[1:3], w0[1:3])  # frame 1 keeps window 0's slot 1
    torch.testing.assert_close(out[3], w1[2])  # frame 2 keeps window 1's slot 1


def test_one_frame_video_has_zero_temporal_context():
    dec = _randomise(TemporalPriorDecoder(D, HEADS, FF, 2, dropout=0.0, state_dims=STATE))
    frame, label = _video([[3, 5]])
    out, priors = dec(
        torch.randn(2, D), torch.rand(2, 17), frame, label, None, torch.zeros(1).long()
    )
    assert torch.equal(out, torch.zeros(2, D))
    assert priors.shape == (2, D) and torch.isfinite(priors).all()


def test_temporal_prior_is_the_previous_frame_specific_prior():
    dec = _randomise(TemporalPriorDecoder(D, HEADS, FF, 1, dropout=0.0, state_dims=STATE))
    frame, label = _video([[3], [3], [5]])
    contact = torch.zeros(3, 17)
    contact[0, [0, 2]] = 0.9  # frame 0: {0, 2}
    contact[1, 8] = 1.0  # frame 1: {8}
    contact[2, 4] = 0.1  # frame 2: empty set, label 5 has no past: its own (initial) prior
    with torch.no_grad():
        _, priors = dec(torch.randn(3, D), contact, frame, label, None, torch.zeros(3).long())
        sp, ip = dec.specific_prior, dec.initial_prior
        expected = dec.state_fc(
            torch.stack([(sp[3, 0] + sp[3, 2]) / 2, (sp[3, 0] + sp[3, 2]) / 2, ip[5]])
        )
    # relation 0 has no previous frame: its own set {0, 2}; relation 1 looks back at frame 0
    torch.testing.assert_close(priors, expected)


def test_ensemble_attends_over_key_frames_oldest_first():
    dec = _randomise(EnsembleDecoder(D, HEADS, FF, window=3, dropout=0.0))
    frame, label = _video([[3], [3], [3], [3]])
    spatial, temporal = torch.randn(4, D), torch.randn(4, D)
    with torch.no_grad():
        out = dec(spatial, temporal, frame, label, None, torch.zeros(4).long())
        history = (spatial + temporal) / 2
        pos = dec.position_embedding.weight
        seq = dec.decoder(
            history[None, 1:4], torch.zeros(1, 3, D), torch.zeros(1, 3, dtype=torch.bool), pos[None]
        )
    torch.testing.assert_close(out[3], seq[0, 2])  # frames 1, 2, 3 (window 3), own slot last


@pytest.mark.parametrize("scored", [False, True])
def test_a_batch_of_videos_equals_one_video_at_a_time(scored: bool):
    torch.manual_seed(1)
    spatial = _randomise(SpatialPriorEncoder(D, HEADS, FF, 2, dropout=0.0, state_dims=STATE))
    temporal = _randomise(
        TemporalPriorDecoder(D, HEADS, FF, 2, threshold=0.5, dropout=0.0, state_dims=STATE)
    )
    ensemble = _randomise(EnsembleDecoder(D, HEADS, FF, window=4, dropout=0.0))
    videos = [_video([[3, 4], [3], [4, 4], [3]]), _video([[5]]), _video([[3], [4], [3, 5]])]

    def run(frame, label, fv, x, contact, scores):
        s, _ = spatial(x, frame, label)
        t, tp = temporal(s, contact, frame, label, scores, fv)
        return s, t, tp, ensemble(s, t, frame, label, scores, fv)

    inputs = []
    for frame, _ in videos:
        n = frame.shape[0]
        inputs.append((torch.randn(n, D), torch.rand(n, 17), torch.rand(n) + 0.1))
    with torch.no_grad():
        alone = [
            run(f, lab, torch.zeros(int(f.max()) + 1).long(), x, c, s if scored else None)
            for (f, lab), (x, c, s) in zip(videos, inputs, strict=True)
        ]
        offsets = [0, 4, 5]
        frame = torch.cat([f + o for (f, _), o in zip(videos, offsets, strict=True)])
        label = torch.cat([lab for _, lab in videos])
        fv = torch.tensor([0] * 4 + [1] + [2] * 3)
        x, contact, scores = (torch.cat([i[k] for i in inputs]) for k in range(3))
        together = run(frame, label, fv, x, contact, scores if scored else None)
    for k in range(4):
        torch.testing.assert_close(together[k], torch.cat([a[k] for a in alone]))


def test_gradients_stay_finite_with_one_frame_videos():
    temporal = TemporalPriorDecoder(D, HEADS, FF, 1, state_dims=STATE)
    frame = torch.tensor([0, 1, 1, 2])  # video 0: frame 0 only; video 1: frames 1-2
    label = torch.tensor([3, 3, 4, 4])
    x = torch.randn(4, D, requires_grad=True)
    out, priors = temporal(x, torch.rand(4, 17), frame, label, None, torch.tensor([0, 1, 1]))
    (out.sum() + priors.sum()).backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in temporal.parameters() if p.grad is not None)

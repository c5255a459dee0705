"""ResumableSampler: deterministic per (seed, epoch), settable offset, distributed padding."""

from __future__ import annotations

import pytest

from m3sgg.data.samplers import ResumableSampler


def test_each_epoch_is_a_seeded_permutation_and_offsets_resume_it():
    sampler = ResumableSampler(10, seed=3, num_replicas=1, rank=0)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(10))
    sampler.set_position(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and sorted(epoch1) == list(range(10))
    sampler.set_position(1, 4)
    assert list(sampler) == epoch1[4:]
    again = ResumableSampler(10, seed=3, num_replicas=1, rank=0)
    again.load_state_dict(sampler.state_dict())
    assert list(again) == epoch1[4:]


def test_distributed_shards_pad_like_distributed_sampler():
    shards = [ResumableSampler(7, seed=0, num_replicas=2, rank=r).indices(0) for r in range(2)]
    assert [len(s) for s in shards] == [4, 4]
    together = shards[0] + shards[1]
    assert sorted(set(together)) == list(range(7)) and len(together) == 8  # one repeat


def test_validation():
    with pytest.raises(ValueError, match="num_samples must be positive"):
        ResumableSampler(0, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="rank must be in"):
        ResumableSampler(3, num_replicas=2, rank=2)
    sampler = ResumableSampler(5, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="start must be in"):
        sampler.set_position(0, 6)
    with pytest.raises(ValueError, match="for 5 samples, dataset has 4"):
        ResumableSampler(4, num_replicas=1, rank=0).load_state_dict(sampler.state_dict())

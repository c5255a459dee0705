"""Fixtures for model tests: small synthetic videos (see ``synthetic_videos.py``), fixed seeds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from synthetic_videos import make_video

from m3sgg.data.action_genome import VideoSample


@pytest.fixture
def videos() -> list[VideoSample]:
    """Three small videos of different lengths."""
    return [
        make_video(0, frames=3, seed=10),
        make_video(1, frames=5, max_objects=3, seed=11),
        make_video(2, frames=4, seed=12),
    ]


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    """Fixed seed; one intra-op thread (tiny tensors only lose from threading on a shared box)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

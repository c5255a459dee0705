"""Shared fixtures: the reference vectors shipped in tests/data/vectors, temporary run folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


#: the public reference vectors (inputs and the reference evaluators' outputs; see its README)
VECTORS = REPO_ROOT / "tests" / "data" / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The reference metric vectors shipped in ``tests/data/vectors``."""
    assert (VECTORS / "ag_expected.json").is_file(), f"{VECTORS}: the reference vectors are missing"
    return VECTORS


#: a toy training run of a few seconds on 2 CPU cores (the toy preset sets the model widths)
SMALL_RUN = [
    "data.toy_videos=16",
    "train.epochs=2",
    "log.every_iters=1000",
]


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide toy-dataset cache (``$M3SGG_CACHE``, inherited by subprocesses)."""
    path = tmp_path_factory.mktemp("m3sgg-cache")
    os.environ["M3SGG_CACHE"] = str(path)
    return path


@pytest.fixture
def small_config(toy_cache: Path, tmp_path: Path):
    """A fast toy-training config writing into ``tmp_path/runs/test``."""
    from m3sgg.config import load_config

    def make(*overrides: str):
        return load_config(
            None, [*SMALL_RUN, f"run.output={tmp_path / 'runs'}", "run.name=test", *overrides]
        )

    return make

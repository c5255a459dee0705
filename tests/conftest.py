"""Shared fixtures: paths to the reference vectors in ../shared and temporary run folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _vectors_dir() -> Path | None:
    candidates = [os.environ.get("M3SGG_VECTORS"), REPO_ROOT.parent / "shared" / "vectors"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "ag_expected.json").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The reference metric vectors (``../shared/vectors`` or ``$M3SGG_VECTORS``)."""
    path = _vectors_dir()
    if path is None:
        pytest.skip(
            "reference vectors not found: set M3SGG_VECTORS or place shared/ beside the repo"
        )
    return path


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

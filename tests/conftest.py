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
        pytest.skip("reference vectors not found: set M3SGG_VECTORS or place shared/ beside the repo")
    return path

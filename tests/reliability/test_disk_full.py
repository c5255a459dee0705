"""Disk full: a failed write keeps the previous file intact, stops with one clear line, resumes.

Two ways to fill the disk:

- a real small tmpfs (mounted here; skipped with the reason where mounting is not permitted):
  sized so the third checkpoint file cannot be written, or filled to the last byte by the
  ``fill_disk`` test plugin right before a metrics line is appended;
- an injected ``OSError(ENOSPC)`` half-way through a checkpoint write (the ``disk_full`` test
  plugin, below m3sgg in ``torch.save``), which runs everywhere.

After each failure: exit code 2, exactly one line on stderr naming the file and "disk full", no
traceback, no temp file left behind, every checkpoint loads, every ``metrics.jsonl`` line parses;
once there is room again, ``--resume auto`` ends bitwise equal to the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from m3sgg.engine.checkpoint import load_checkpoint

from .conftest import (
    Reference,
    assert_metrics_lines_parse,
    assert_same_result,
    checkpoint_files,
    child_env,
    run_m3sgg,
    snapshot,
    temp_files,
    train_args,
)

PAGE = 4096


class Tmpfs:
    """A tmpfs mounted at ``path`` (unmounted when the test ends)."""

    def __init__(self, path: Path, size: int):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")

    def resize(self, size: int) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True
        )

    def unmount(self) -> None:
        done = subprocess.run(["umount", str(self.path)], capture_output=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[type]:
    """``tmpfs(size)`` mounts a fresh tmpfs of ``size`` bytes under ``tmp_path``."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted: list[Tmpfs] = []

    def mount(size: int) -> Tmpfs:
        disk = Tmpfs(tmp_path / f"disk{len(mounted)}", size)
        mounted.append(disk)
        return disk

    yield mount  # type: ignore[misc]
    for disk in mounted:
        disk.unmount()


def checkpoint_size(reference: Reference) -> int:
    return (reference.run / "checkpoints" / "last.pt").stat().st_size


#: what ignite logs on stderr before re-raising an exception out of ``Engine.run`` (see
#: :func:`test_an_error_inside_the_engine_prints_one_line`)
IGNITE_ECHO = "Engine run is terminating due to exception: "


def assert_clean_failure(done: subprocess.CompletedProcess[str], file: str, run: Path) -> None:
    """Exit 2, a line naming ``file`` and the disk being full, no traceback, nothing broken."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [x for x in done.stderr.strip().splitlines() if not x.startswith(IGNITE_ECHO)]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("m3sgg train: error: ") and file in lines[0], lines[0]
    assert "disk full" in lines[0], lines[0]
    assert temp_files(run) == []
    for path in checkpoint_files(run):
        load_checkpoint(path)
    assert_metrics_lines_parse(run)
    assert isinstance(yaml.safe_load((run / "config.yaml").read_text()), dict)


def resume(reference: Reference, output: Path, name: str) -> None:
    done = run_m3sgg(*train_args(reference.config, output, name, "--resume", "auto"))
    assert done.returncode == 0, done.stderr
    assert_same_result(output / name, reference.run)


@pytest.mark.slow
def test_checkpoint_write_on_a_full_tmpfs_keeps_the_previous_checkpoint(
    reference_run: Reference, tmpfs
) -> None:
    size = checkpoint_size(reference_run)
    # room for two and a half checkpoint files: at the end of epoch 1, last.pt (iteration 9) and
    # the best checkpoint (one file under both metrics' names) are on disk; the next checkpoint
    # written (a new best, or last.pt) does not fit
    disk = tmpfs(math.ceil(2.5 * size / PAGE) * PAGE)
    done = run_m3sgg(*train_args(reference_run.config, disk.path, "run"))
    run = disk.path / "run"
    assert_clean_failure(done, str(run / "checkpoints"), run)
    assert "the previous checkpoint is intact" in done.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["engine"]["iteration"] == 9
    reference_lines = (reference_run.run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert (run / "metrics.jsonl").read_text() == reference_lines[0]

    disk.resize(64 << 20)
    resume(reference_run, disk.path, "run")


@pytest.mark.slow
def test_metrics_line_on_a_full_tmpfs_leaves_no_partial_line(
    reference_run: Reference, tmpfs
) -> None:
    disk = tmpfs(32 << 20)
    filler = disk.path / "filler"
    env = child_env(M3SGG_FILLER=str(filler), M3SGG_FILL_AT_EVAL="2")
    args = train_args(reference_run.config, disk.path, "run")
    done = run_m3sgg(*args, "--plugin", "tests.reliability.hooks:fill_disk", env=env)
    run = disk.path / "run"
    assert_clean_failure(done, str(run / "metrics.jsonl"), run)
    # the line of the first evaluation is there, the failed second one left no bytes behind
    first = (reference_run.run / "metrics.jsonl").read_text().splitlines(keepends=True)[0]
    assert (run / "metrics.jsonl").read_text() == first

    filler.unlink()
    resume(reference_run, disk.path, "run")


@pytest.mark.slow
def test_resuming_on_a_full_disk_fails_cleanly(reference_run: Reference, tmpfs) -> None:
    disk = tmpfs(32 << 20)
    shutil.copytree(reference_run.run, disk.path / "run")
    before = snapshot(disk.path / "run")
    with open(disk.path / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * PAGE)
    # one more epoch than the finished run, so the resumed run has something to write
    more = ("--resume", "auto", "--epochs", "3")
    done = run_m3sgg(*train_args(reference_run.config, disk.path, "run", *more))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [x for x in done.stderr.strip().splitlines() if not x.startswith(IGNITE_ECHO)]
    assert len(lines) == 1 and "disk full" in lines[0], done.stderr
    assert snapshot(disk.path / "run") == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("full_at", "file", "last_iteration", "metrics_lines"),
    # writes: last.pt at iterations 3, 6, 9; at the end of epoch 1 the best checkpoint (written
    # once, hard-linked for the second metric) and then last.pt
    [(4, "best_with-mR@20_e1_i10_", 9, 0), (5, "last.pt", 9, 1)],
    ids=["best-checkpoint", "epoch-end-last"],
)
def test_injected_enospc_keeps_the_previous_checkpoint(
    reference_run: Reference,
    tmp_path: Path,
    full_at: int,
    file: str,
    last_iteration: int,
    metrics_lines: int,
) -> None:
    env = child_env(M3SGG_FULL_AT=str(full_at))
    args = train_args(reference_run.config, tmp_path, "run")
    done = run_m3sgg(*args, "--plugin", "tests.reliability.hooks:disk_full", env=env)
    run = tmp_path / "run"
    assert_clean_failure(done, str(run / "checkpoints" / file), run)
    assert "the previous checkpoint is intact" in done.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["engine"]["iteration"] == last_iteration
    assert len(assert_metrics_lines_parse(run)) == metrics_lines
    if full_at == 6:
        resume(reference_run, tmp_path, "run")


def test_an_error_inside_the_engine_prints_one_line(
    reference_run: Reference, tmp_path: Path
) -> None:
    env = child_env(M3SGG_FULL_AT="1")
    args = train_args(reference_run.config, tmp_path, "run")
    done = run_m3sgg(*args, "--plugin", "tests.reliability.hooks:disk_full", env=env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr

"""Kill and resume: SIGKILL a toy training run at seeded random moments, then ``--resume auto``.

Each kill point starts a fresh ``m3sgg train`` subprocess, SIGKILLs it from outside at one moment,
checks what the kill left behind (every checkpoint under its final name loads, every line of
``metrics.jsonl`` parses), reruns the same command with ``--resume auto`` until it completes, and
compares the result bitwise with the uninterrupted reference run: weights, optimizer, engine and
handler states of ``last.pt``, the best checkpoints, and ``metrics.jsonl``.

Kill points are drawn from ``random.Random(M3SGG_KILL_SEED)`` (default seed 0). The first four
cover each kind once, the rest are drawn among the kinds:

- ``save-half``: during the n-th checkpoint write, with half of its bytes in the temp file (the
  ``trace`` test plugin makes that write wait there for the kill);
- ``save-written``: during the n-th checkpoint write, all bytes written and fsynced, not renamed;
- ``eval``: at a random moment of the n-th evaluation;
- ``step``: at a random moment after iteration i starts (its step, or the handlers after it).

Five kill points run by default; the issue's twenty with::

    M3SGG_KILL_POINTS=20 python -m pytest tests/reliability/test_kill_resume.py

``M3SGG_KILL_LOAD=n`` runs n busy-looping processes for the whole module (the reference run
included), so the runs are slowed and their timing perturbed as on a busy machine: kills land
at other moments relative to the run's work than on an idle machine.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from m3sgg.engine.checkpoint import load_checkpoint
from m3sgg.errors import DataError

from .conftest import (
    Reference,
    TracedRun,
    assert_metrics_lines_parse,
    assert_same_result,
    checkpoint_files,
    temp_files,
)

KILL_POINTS = int(os.environ.get("M3SGG_KILL_POINTS", "5"))
KILL_SEED = int(os.environ.get("M3SGG_KILL_SEED", "0"))
KILL_LOAD = int(os.environ.get("M3SGG_KILL_LOAD", "0"))
KINDS = ("save-half", "save-written", "eval", "step")
#: the kill lands this many seconds at most after the write reports its stage (it waits there)
SAVE_WINDOW = 0.3


@dataclass(frozen=True)
class KillPoint:
    """Where to kill, as fractions resolved against the reference run's trace."""

    kind: str
    where: float  # which save / evaluation / iteration, as a fraction of their count
    when: float  # delay after the trigger, as a fraction of the window it may land in

    def resolve(self, reference: Reference) -> tuple[str, str, float, dict[str, str]]:
        """``(trace event, its first argument, delay in seconds, environment)``."""
        if self.kind in ("save-half", "save-written"):
            n = 1 + int(self.where * reference.count("save-begin"))
            env = {"M3SGG_SLOW_SAVE": f"{n}:{self.kind.removeprefix('save-')}"}
            return self.kind, str(n), self.when * SAVE_WINDOW, env
        if self.kind == "eval":
            n = 1 + int(self.where * reference.count("evaluating"))
            window = reference.duration("evaluating", "evaluated", n)
            return "evaluating", str(n), self.when * 0.9 * window, {}
        # a step: any iteration but the last, within one and a half step intervals of its start
        i = 1 + int(self.where * (reference.iterations - 1))
        return "iteration", str(i), self.when * 1.5 * reference.step_interval(), {}


def kill_plan(count: int, seed: int) -> list[KillPoint]:
    rng = random.Random(seed)
    kinds = [KINDS[i] if i < len(KINDS) else rng.choice(KINDS) for i in range(count)]
    return [KillPoint(kind, rng.random(), rng.random()) for kind in kinds]


PLAN = kill_plan(KILL_POINTS, KILL_SEED)


@pytest.fixture(scope="session", autouse=True)
def cpu_load() -> Iterator[None]:
    """``M3SGG_KILL_LOAD`` busy processes while this module's tests run (set up before the
    session's reference run, so it is made under the same load)."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(KILL_LOAD)
    ]
    yield
    for spinner in spinners:
        spinner.kill()
        spinner.wait()


def check_after_kill(run: Path, point: KillPoint) -> None:
    """What a SIGKILL may leave: unfinished temp files, never an unloadable final file."""
    for path in checkpoint_files(run):
        load_checkpoint(path)  # raises DataError if truncated or corrupt
    assert_metrics_lines_parse(run)
    if point.kind.startswith("save-"):
        temps = temp_files(run)
        assert temps, "the kill should have landed inside a checkpoint write"
        if point.kind == "save-half":
            # the interrupted file itself would not load: the atomic rename is what protects us
            with pytest.raises(DataError):
                load_checkpoint(temps[0])


@pytest.mark.slow
@pytest.mark.parametrize(
    "point", PLAN, ids=[f"{i}-{p.kind}" for i, p in enumerate(PLAN)]
)  # fmt: skip
def test_sigkill_then_resume_ends_bitwise_equal(
    point: KillPoint, reference_run: Reference, fresh_run: Callable[..., TracedRun], tmp_path: Path
) -> None:
    event, target, delay, env = point.resolve(reference_run)
    first = fresh_run("killed", **env)
    first.wait_for(event, target)
    with contextlib.suppress(subprocess.TimeoutExpired):  # still running: the expected case
        first.wait(timeout=delay)
    first.kill()
    assert first.process.returncode == -signal.SIGKILL, (
        f"the run ended by itself ({first.process.returncode}) before the kill at "
        f"{event} {target} + {delay:.3f}s; stderr: {first.stderr()[-2000:]}"
    )
    run = tmp_path / "runs" / "killed"
    check_after_kill(run, point)
    had_checkpoint = (run / "checkpoints" / "last.pt").exists()

    resumed = fresh_run("killed", "--resume", "auto")
    assert resumed.wait() == 0, resumed.stderr()
    expected = "resumed from" if had_checkpoint else "no checkpoint in"
    assert expected in resumed.stdout(), resumed.stdout()
    assert_same_result(run, reference_run.run)


@pytest.mark.slow
def test_sigkill_after_the_final_save_then_resume_changes_nothing(
    reference_run: Reference, fresh_run: Callable[..., TracedRun], tmp_path: Path
) -> None:
    """Issue 19, points 1 and 3: a kill after the final ``last.pt`` is on disk (the run was
    finishing: logging, exiting) left a finished run; ``--resume auto`` then retrained it from
    epoch 1 on top of the trained weights, so it ended not bitwise equal to the reference."""
    first = fresh_run("killed")
    first.wait_for("saved", "last.pt", str(reference_run.iterations))
    first.kill()
    run = tmp_path / "runs" / "killed"
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}

    resumed = fresh_run("killed", "--resume", "auto")
    assert resumed.wait() == 0, resumed.stderr()
    assert "is complete" in resumed.stdout(), resumed.stdout()
    assert [line.event for line in resumed.lines()] == []  # no step, no evaluation, no save
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
    assert_same_result(run, reference_run.run)

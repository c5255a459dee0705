"""Shared pieces of the reliability tests: real ``m3sgg`` subprocesses on the toy dataset.

Every run here uses one small config file (:data:`RUN_SETTINGS`: the toy dataset with 16 videos,
a tiny STTran, 2 epochs of 10 iterations, ``last.pt`` every 3 iterations, and the ``trace`` test
plugin of :mod:`hooks`), so that a killed, stopped or failed run can be compared bitwise with
the one uninterrupted reference run (:func:`reference_run`, made once per session).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from m3sgg.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]

#: the settings of every training run in these tests (written to a YAML config file)
RUN_SETTINGS: dict[str, Any] = {
    "data": {"toy_videos": 16},
    "train": {"epochs": 2},
    "log": {"every_iters": 1000},
    "checkpoint": {"every_iters": 3},
    "model": {  # every option given: the same model on the toy data and on a copy of it
        "options": {
            "heads": 2,
            "ff_dim": 32,
            "proj_dim": 32,
            "embed_dim": 16,
            "conv_dim": 8,
            "enc_layers": 1,
            "dec_layers": 1,
        }
    },
    "plugins": ["tests.reliability.hooks:trace"],
}

#: ``M3SGG_TEST_TIMEOUT_SCALE``: multiplies every wait of these tests (a machine so busy that a
#: toy run needs minutes to reach its first steps; the default waits fail there, not m3sgg)
TIMEOUT_SCALE = float(os.environ.get("M3SGG_TEST_TIMEOUT_SCALE", "1"))

#: environment variables of the test hooks; removed from every child's environment first
HOOK_VARIABLES = (
    "M3SGG_TRACE",
    "M3SGG_SLOW_SAVE",
    "M3SGG_PAUSE_AT",
    "M3SGG_WAIT",
    "M3SGG_FULL_AT",
    "M3SGG_FILLER",
    "M3SGG_FILL_AT_EVAL",
)


def m3sgg_command(*args: str | os.PathLike[str]) -> list[str]:
    """The command line of ``m3sgg <args>`` run by this interpreter."""
    return [sys.executable, "-m", "m3sgg", *(os.fspath(a) for a in args)]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment, the repository importable (for the test plugins), plus
    ``extra``; the toy-data cache (``$M3SGG_CACHE``) is inherited from the ``toy_cache`` fixture."""
    env = {k: v for k, v in os.environ.items() if k not in HOOK_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["M3SGG_NO_ENTRY_POINTS"] = "1"
    env.update(extra)
    return env


def run_m3sgg(
    *args: str | os.PathLike[str], env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``m3sgg <args>`` to the end and capture its output."""
    return subprocess.run(
        m3sgg_command(*args),
        capture_output=True,
        text=True,
        env=env or child_env(),
        timeout=timeout * TIMEOUT_SCALE,
        cwd=REPO,
    )


def write_config(path: Path, **changes: dict[str, Any]) -> Path:
    """:data:`RUN_SETTINGS` (sections replaced by ``changes``) as a YAML config file."""
    settings = {**RUN_SETTINGS, **changes}
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def train_args(config: Path, output: Path, name: str, *more: str) -> list[str]:
    return ["train", "--config", str(config), "--output", str(output), "--name", name, *more]


# ---------------------------------------------------------------------------------------- traces


@dataclass(frozen=True)
class TraceLine:
    time: float  # CLOCK_MONOTONIC of the child when it wrote the line
    event: str
    args: tuple[str, ...]


def read_trace(path: Path) -> list[TraceLine]:
    """The complete lines of a trace file (see :mod:`hooks`)."""
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().split("\n")[:-1]:
        stamp, event, *args = raw.split(" ")
        lines.append(TraceLine(float(stamp), event, tuple(args)))
    return lines


class TracedRun:
    """A ``m3sgg train`` child writing a trace; output goes to files beside the trace."""

    def __init__(self, args: list[str], folder: Path, tag: str, **env: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.trace = folder / f"{tag}.trace"
        self.trace.unlink(missing_ok=True)
        self.stdout_path = folder / f"{tag}.stdout"
        self.stderr_path = folder / f"{tag}.stderr"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(
                m3sgg_command(*args),
                stdout=out,
                stderr=err,
                env=child_env(M3SGG_TRACE=str(self.trace), **env),
                cwd=REPO,
            )

    def wait_for(self, event: str, *args: str, timeout: float = 120) -> TraceLine:
        """Block until the child traces ``event args...``; fails if it exits first."""
        deadline = time.monotonic() + timeout * TIMEOUT_SCALE
        while True:
            for line in read_trace(self.trace):
                if line.event == event and line.args[: len(args)] == args:
                    return line
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the run exited ({self.process.returncode}) before tracing "
                    f"{event} {' '.join(args)}; stderr: {self.stderr()[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {event} {' '.join(args)}")
            time.sleep(0.003)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def wait(self, timeout: float = 300) -> int:
        return self.process.wait(timeout=timeout * TIMEOUT_SCALE)

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def lines(self) -> list[TraceLine]:
        return read_trace(self.trace)


# ---------------------------------------------------------------------------------- run folders


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path, with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def checkpoint_files(run: Path) -> list[Path]:
    """Final-name checkpoints of a run folder (temp files of unfinished writes excluded)."""
    return sorted(p for p in (run / "checkpoints").glob("*.pt") if not p.name.startswith("."))


def temp_files(run: Path) -> list[Path]:
    folder = run / "checkpoints"
    return sorted(folder.glob(".tmp-*")) if folder.is_dir() else []


def assert_metrics_lines_parse(run: Path) -> list[dict[str, Any]]:
    """Every complete line of ``metrics.jsonl`` is one JSON record."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    complete = text.split("\n")[:-1]
    return [json.loads(line) for line in complete]


def assert_same_tensors(actual: Any, expected: Any, where: str) -> None:
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            assert_same_tensors(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_tensors(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, where


def assert_same_result(run: Path, reference: Path) -> None:
    """A finished run equals the reference bitwise: weights, optimizer, engine, handler and
    sampler states of ``last.pt``; the same best checkpoints with the same weights;
    ``metrics.jsonl`` byte for byte.

    The sampler's ``start`` is left out: it is where the sampler began iterating in the current
    epoch, a resumed run began mid-epoch, and the ``sampler_position`` handler derives it from the
    engine's counters at every epoch start, so it never influences what comes next.
    """
    actual = load_checkpoint(run / "checkpoints" / "last.pt")
    expected = load_checkpoint(reference / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "scaler", "engine", "handlers", "rng"):
        assert_same_tensors(actual[key], expected[key], key)
    sampler = {k: v for k, v in actual["sampler"].items() if k != "start"}
    assert sampler == {k: v for k, v in expected["sampler"].items() if k != "start"}
    assert [p.name for p in checkpoint_files(run)] == [p.name for p in checkpoint_files(reference)]
    for path in checkpoint_files(reference):
        if path.name != "last.pt":
            assert_same_tensors(
                load_checkpoint(run / "checkpoints" / path.name)["model"],
                load_checkpoint(path)["model"],
                f"{path.name} model",
            )
    assert (run / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert temp_files(run) == []


@dataclass(frozen=True)
class Reference:
    """The uninterrupted run every interrupted one is compared with."""

    config: Path
    run: Path
    trace: list[TraceLine]

    def count(self, event: str) -> int:
        return sum(1 for line in self.trace if line.event == event)

    def duration(self, start: str, end: str, n: int = 1) -> float:
        """Seconds from the n-th ``start`` line to the next ``end`` line."""
        begin = [line for line in self.trace if line.event == start][n - 1]
        finish = next(x for x in self.trace if x.event == end and x.time >= begin.time)
        return finish.time - begin.time

    def step_interval(self) -> float:
        """Median time between consecutive ITERATION_STARTED lines."""
        times = [line.time for line in self.trace if line.event == "iteration"]
        gaps = sorted(b - a for a, b in itertools.pairwise(times))
        return gaps[len(gaps) // 2]

    @property
    def iterations(self) -> int:
        return self.count("iteration")


@pytest.fixture(scope="session")
def reference_run(toy_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """One uninterrupted traced run of :data:`RUN_SETTINGS` (20 iterations, 2 evaluations)."""
    folder = tmp_path_factory.mktemp("reference")
    config = write_config(folder / "run.yaml")
    run = TracedRun(train_args(config, folder / "runs", "reference"), folder, "reference")
    assert run.wait() == 0, run.stderr()
    return Reference(config, folder / "runs" / "reference", run.lines())


@pytest.fixture
def fresh_run(reference_run: Reference, tmp_path: Path) -> Iterator[Callable[..., TracedRun]]:
    """Start a traced run named ``name`` in ``tmp_path/runs`` with the reference's config (any
    still running when the test ends, e.g. after a failed assertion, is killed)."""
    started: list[TracedRun] = []

    def start(name: str = "run", *more: str, **env: str) -> TracedRun:
        args = train_args(reference_run.config, tmp_path / "runs", name, *more)
        run = TracedRun(args, tmp_path / "logs", f"{name}-{time.monotonic_ns()}", **env)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()

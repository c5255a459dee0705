"""Graceful stop: SIGINT and SIGTERM finish the iteration, save, say how to resume, exit 130.

The ``trace`` test plugin holds iteration 5 (a mid-epoch iteration that is not a periodic
checkpoint) at its start until the signal arrives, so the signal certainly lands in iteration 5.
The run must complete that iteration, write a ``last.pt`` of iteration 5, start no further
iteration, and print on stderr the command that continues it; that command, run verbatim, must
end bitwise equal to the uninterrupted reference run.
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from m3sgg.engine.checkpoint import load_checkpoint

from .conftest import (
    Reference,
    TracedRun,
    assert_same_result,
    child_env,
    run_m3sgg,
)

STOP_AT = 5


def stop_with(run: TracedRun, signum: int, times: int = 1, at: int = STOP_AT) -> str:
    """Send ``signum`` while iteration ``at`` runs; returns stderr after checking the exit."""
    run.wait_for("iteration", str(at))
    for _ in range(times):
        run.signal(signum)
    assert run.wait() == 130, run.stderr()
    iterations = [int(line.args[0]) for line in run.lines() if line.event == "iteration"]
    assert max(iterations) == at, "no iteration may start after the signal"
    return run.stderr()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "times"),
    [(signal.SIGINT, 2), (signal.SIGTERM, 1)],
    ids=["SIGINT-twice", "SIGTERM"],
)
def test_signal_stops_after_the_iteration_and_the_printed_command_resumes_bitwise(
    signum: int,
    times: int,
    reference_run: Reference,
    fresh_run: Callable[..., TracedRun],
    tmp_path: Path,
) -> None:
    run = fresh_run("stopped", M3SGG_PAUSE_AT=str(STOP_AT))
    stderr = stop_with(run, signum, times)
    folder = tmp_path / "runs" / "stopped"
    last = folder / "checkpoints" / "last.pt"

    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    message = lines[0]
    name = signal.Signals(signum).name
    assert message.startswith(f"m3sgg train: stopped by {name} at epoch 1, iteration {STOP_AT}")
    assert f"saved {last}" in message
    assert "Traceback" not in stderr
    assert load_checkpoint(last)["engine"]["iteration"] == STOP_AT

    command = shlex.split(message.split("resume with: ", 1)[1])
    assert command[0] == "m3sgg" and "--resume" in command and "auto" in command
    resumed = run_m3sgg(*command[1:], env=child_env())
    assert resumed.returncode == 0, resumed.stderr
    assert f"(epoch 1, iteration {STOP_AT})" in resumed.stdout
    assert_same_result(folder, reference_run.run)


@pytest.mark.slow
def test_printed_command_resumes_a_run_started_with_set_overrides(
    reference_run: Reference, tmp_path: Path
) -> None:
    """The same run configured with ``--set`` flags instead of a file: the hint must still work."""
    import yaml

    from .conftest import TracedRun

    settings = yaml.safe_load(reference_run.config.read_text())
    flags: list[str] = []
    for section, values in settings.items():
        if section == "plugins":
            continue
        for key, value in values.items():
            if isinstance(value, dict):
                flags += [f"--set={section}.{key}.{k}={v}" for k, v in value.items()]
            else:
                flags.append(f"--set={section}.{key}={value}")
    args = ["train", "--output", str(tmp_path / "runs"), "--name", "stopped", *flags]
    args += ["--plugin", settings["plugins"][0]]
    run = TracedRun(args, tmp_path / "logs", "stopped", M3SGG_PAUSE_AT=str(STOP_AT))
    message = stop_with(run, signal.SIGINT).strip().splitlines()[-1]
    command = shlex.split(message.split("resume with: ", 1)[1])
    resumed = run_m3sgg(*command[1:], env=child_env())
    assert resumed.returncode == 0, resumed.stderr
    assert_same_result(tmp_path / "runs" / "stopped", reference_run.run)


@pytest.mark.slow
def test_a_stop_in_an_epochs_last_iteration_resumes_with_that_epochs_end(
    reference_run: Reference, fresh_run: Callable[..., TracedRun], tmp_path: Path
) -> None:
    """Issue 19, point 3: a ``last.pt`` written at an epoch's last iteration, before that epoch's
    end (evaluation, metrics line, best and last checkpoints), made the resumed run go straight
    to the next epoch: that evaluation was lost and the run differed from the reference."""
    length = reference_run.iterations // 2
    run = fresh_run("stopped", M3SGG_PAUSE_AT=str(length))
    stop_with(run, signal.SIGINT, at=length)
    folder = tmp_path / "runs" / "stopped"
    saved = load_checkpoint(folder / "checkpoints" / "last.pt")["engine"]
    assert saved["iteration"] == length and saved.get("epoch_closed") is not True
    assert not (folder / "metrics.jsonl").exists()

    resumed = fresh_run("stopped", "--resume", "auto")
    assert resumed.wait() == 0, resumed.stderr()
    evaluations = [line for line in resumed.lines() if line.event == "evaluating"]
    assert len(evaluations) == 2
    assert_same_result(folder, reference_run.run)

"""``m3sgg tune`` end to end, in real processes on the toy data: a pruned six-trial study whose
exported best config retrains bitwise, SIGKILL mid-trial then the same command, two workers on
one study."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

pytestmark = pytest.mark.slow

#: toy trials of a second or two per epoch
SMALL = ["--set", "data.toy_videos=16", "--set", "log.every_iters=1000"]
SPACE = "optim.lr: {log_float: [1e-5, 3e-2]}\nmodel.options.ff_dim: {choice: [64, 128]}\n"


def m3sgg(*args: str | Path, cwd: Path) -> list[str]:
    return [sys.executable, "-m", "m3sgg", *map(str, args)]


def run(args: list[str], cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=900)
    assert done.returncode == expect, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def load(tmp_path: Path, study: str, storage: str | None = None):
    storage = storage or f"sqlite:///{tmp_path / 'runs' / study / 'study.db'}"
    if "://" not in storage:
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(storage))
    return optuna.load_study(study_name=study, storage=storage)


def evaluations(run_dir: Path, metric: str = "with/mR@20") -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["metrics"][metric] for line in lines]


def test_pruned_study_show_and_export_best_retrains_bitwise(toy_cache: Path, tmp_path: Path):
    (tmp_path / "space.yaml").write_text(SPACE)
    command = m3sgg(
        "tune", "--study", "toy", "--space", "space.yaml", "--output", "runs", "--n-trials", "6",
        "--pruner", "median", "--seed", "0", "--set", "train.epochs=3", *SMALL, cwd=tmp_path,
    )  # fmt: skip
    out = run(command, tmp_path).stdout
    lines = re.findall(r"^trial (\d+) (complete|pruned)", out, re.M)
    assert [int(n) for n, _ in lines] == list(range(6)), out  # one line per finished trial
    assert "best " in out.splitlines()[0]

    study = load(tmp_path, "toy")
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and "PRUNED" in states and "FAIL" not in states, states
    for trial in study.trials:  # every trial is an ordinary run in its own folder
        folder = tmp_path / "runs" / "toy" / f"trial-{trial.number:04d}"
        values = evaluations(folder)
        assert list(trial.intermediate_values.values()) == values  # reported at each evaluation
        assert (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()
        if trial.state.name == "COMPLETE":
            assert len(values) == 3 and trial.value == max(values)
        else:
            assert len(values) < 3

    again = run(command, tmp_path).stdout  # the study has its 6 trials: nothing more runs
    assert "trial" not in again.split("study toy:")[0] and len(load(tmp_path, "toy").trials) == 6

    shown = run(m3sgg("tune", "--study", "toy", "--output", "runs", "--show", cwd=tmp_path),
                tmp_path).stdout  # fmt: skip
    header = next(line for line in shown.splitlines() if line.startswith("trial "))
    assert header.split() == ["trial", "state", "with/mR@20", "evals", "optim.lr",
                              "model.options.ff_dim", "note"]  # fmt: skip
    rows = [
        line.split() for line in shown.splitlines() if re.match(r"^\d+ +(complete|pruned)", line)
    ]
    assert [int(r[0]) for r in rows] == list(range(6))
    best = study.best_trial
    assert f"best: trial {best.number}, with/mR@20 {best.value:.4f}" in shown
    assert "importances (fANOVA):" in shown and re.search(r"^  optim.lr +\d\.\d{3}$", shown, re.M)

    run(m3sgg("tune", "--study", "toy", "--output", "runs", "--export-best", "best.yaml",
              cwd=tmp_path), tmp_path)  # fmt: skip
    run(m3sgg("train", "--config", "best.yaml", "--name", "again", cwd=tmp_path), tmp_path)
    retrained = evaluations(tmp_path / "runs" / "again")
    trial_dir = tmp_path / "runs" / "toy" / f"trial-{best.number:04d}"
    assert retrained == evaluations(trial_dir)  # every evaluation, bitwise (JSON floats)
    assert max(retrained) == best.value


def test_sigkill_mid_trial_then_same_command_finishes_exactly_n(toy_cache: Path, tmp_path: Path):
    (tmp_path / "space.yaml").write_text(SPACE)
    command = m3sgg(
        "tune", "--study", "k", "--space", "space.yaml", "--output", "runs", "--n-trials", "3",
        "--pruner", "none", "--seed", "1", "--set", "train.epochs=3", *SMALL, cwd=tmp_path,
    )  # fmt: skip
    study_dir = tmp_path / "runs" / "k"
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    target = study_dir / "trial-0001" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 600
    while not target.exists():  # trial 1 finished its first epoch: it is mid-trial now
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    first = study_dir / "trial-0000"
    finished = {p: p.read_bytes() for p in sorted(first.rglob("*")) if p.is_file()}
    killed_values = evaluations(study_dir / "trial-0001")
    assert 1 <= len(killed_values) < 3
    study = load(tmp_path, "k")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]

    out = run(command, tmp_path).stdout
    assert "trial 1 was left running by a process that is gone: marked failed" in out
    retry = re.search(r"^trial (\d+) retries trial 1 from (\S+)", out, re.M)
    assert retry and tmp_path / retry.group(2) == study_dir / f"trial-{int(retry.group(1)):04d}" / (
        "checkpoints/last.pt"
    ), out
    study = load(tmp_path, "k")
    states = {t.number: t.state.name for t in study.trials}
    assert list(states.values()).count("COMPLETE") == 3 and len(states) == 4, states
    assert states[1] == "FAIL" and study.trials[1].user_attrs["m3sgg:killed"] is True
    again = study.trials[int(retry.group(1))]
    assert again.user_attrs["m3sgg:retry_of"] == 1 and again.params == study.trials[1].params
    # the retry resumed from the killed trial's checkpoint: its evaluations go on from there
    retried_values = evaluations(study_dir / f"trial-{again.number:04d}")
    assert len(retried_values) == 3 and retried_values[: len(killed_values)] == killed_values
    assert list(again.intermediate_values.values()) == retried_values
    assert again.value == max(retried_values)
    # the finished trial's folder is untouched
    assert {p: p.read_bytes() for p in sorted(first.rglob("*")) if p.is_file()} == finished
    assert evaluations(study_dir / "trial-0001") == killed_values


def test_two_workers_share_one_study_without_a_database_error(toy_cache: Path, tmp_path: Path):
    (tmp_path / "space.yaml").write_text(SPACE)
    done = run(
        m3sgg(
            "tune", "--study", "w", "--space", "space.yaml", "--output", "runs", "--n-trials",
            "4", "--workers", "2", "--pruner", "none", "--seed", "0", "--set", "train.epochs=1",
            *SMALL, cwd=tmp_path,
        ),
        tmp_path,
    )  # fmt: skip
    assert "error" not in done.stderr.lower() and "locked" not in done.stderr.lower(), done.stderr
    journal = tmp_path / "runs" / "w" / "study.journal"
    assert journal.is_file() and not (tmp_path / "runs" / "w" / "study.db").exists()
    study = load(tmp_path, "w", str(journal))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    owners = {t.system_attrs["m3sgg:owner"]["pid"] for t in study.trials}
    assert len(owners) == 2  # both processes ran trials
    assert len({tuple(t.params.items()) for t in study.trials}) == 4  # no repeated draws


def test_sigterm_stops_the_trial_cleanly_and_the_next_run_resumes_it(
    toy_cache: Path, tmp_path: Path
):
    (tmp_path / "space.yaml").write_text(SPACE)
    command = m3sgg(
        "tune", "--study", "t", "--space", "space.yaml", "--output", "runs", "--n-trials", "2",
        "--pruner", "none", "--seed", "2", "--set", "train.epochs=3", *SMALL, cwd=tmp_path,
    )  # fmt: skip
    study_dir = tmp_path / "runs" / "t"
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    target = study_dir / "trial-0000" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 600
    while not target.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 130, (out, err)
    assert re.search(
        r"^trial 0 interrupted: stopped by SIGTERM at epoch \d, iteration \d+", out, re.M
    )
    study = load(tmp_path, "t")
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]  # killed, retry queued
    assert study.trials[0].user_attrs["m3sgg:killed"] is True
    stopped = evaluations(study_dir / "trial-0000")

    out = run(command, tmp_path).stdout
    assert "trial 1 retries trial 0 from runs/t/trial-0001/checkpoints/last.pt" in out, out
    study = load(tmp_path, "t")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    values = evaluations(study_dir / "trial-0001")
    assert len(values) == 3 and values[: len(stopped)] == stopped
    assert study.trials[1].params == study.trials[0].params


def test_two_separate_commands_share_one_study(toy_cache: Path, tmp_path: Path):
    (tmp_path / "space.yaml").write_text(SPACE)

    def command(seed: int) -> list[str]:
        return m3sgg(
            "tune", "--study", "c", "--space", "space.yaml", "--output", "runs", "--n-trials",
            "4", "--pruner", "none", "--seed", str(seed), "--set", "train.epochs=1", *SMALL,
            cwd=tmp_path,
        )  # fmt: skip

    processes = [
        subprocess.Popen(command(s), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for s in (0, 100)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=900) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, (out, err)
        assert "locked" not in err.lower() and "error" not in err.lower(), err
    study = load(tmp_path, "c")  # SQLite: one command, one worker each
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    finished = [re.findall(r"^trial (\d+) complete", out, re.M) for out, _ in outputs]
    assert sorted(int(n) for lines in finished for n in lines) == [0, 1, 2, 3]

"""A newcomer's path through the CLI (issue 19, points 5, 6, 7 and 10), run as a new user would:
real ``m3sgg`` processes, relative paths, from more than one folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from m3sgg.engine.checkpoint import load_checkpoint
from m3sgg.models.presets import toy_preset
from m3sgg.models.registry import build_model

REPO = Path(__file__).resolve().parents[1]


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("M3SGG_") or k == "M3SGG_CACHE"}
    return {**base, "PYTHONPATH": str(REPO), "M3SGG_NO_ENTRY_POINTS": "1", **extra}


def m3sgg(*args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "m3sgg", *args],
        capture_output=True,
        text=True,
        env=env(**extra),
        cwd=cwd,
        timeout=600,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# ------------------------------------------------------------------------ point 6: one-line errors


def test_device_errors_are_one_line(tmp_path: Path) -> None:
    """``--device foo`` and (without CUDA) ``--device cuda`` ended in raw tracebacks."""
    line = one_line_error(m3sgg("train", "--device", "foo", "--output", "r", cwd=tmp_path))
    assert "run.device" in line and "'foo'" in line
    if not torch.cuda.is_available():
        line = one_line_error(m3sgg("train", "--device", "cuda", "--output", "r", cwd=tmp_path))
        assert "run.device" in line and "CUDA is not available" in line
    assert not (tmp_path / "r").exists()


def test_a_mistyped_flag_gets_the_closest_flag(tmp_path: Path) -> None:
    line = one_line_error(m3sgg("train", "--epcohs", "3", cwd=tmp_path))
    assert line.startswith("m3sgg train: error: unrecognized argument --epcohs")
    assert "did you mean --epochs?" in line
    line = one_line_error(m3sgg("evaluate", "RUN", "--jsn", cwd=tmp_path))
    assert "did you mean --json?" in line


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  epochs: 2\n  lr: [1, 2\n")
    line = one_line_error(m3sgg("train", "--config", str(config), cwd=tmp_path))
    # the end of the file is where the parser noticed; the unclosed list opened at line 3
    expected = f"{config}:4:1: invalid YAML (while parsing a flow sequence at 3:7: expected ','"
    assert expected in line, line


# --------------------------------------------------- points 5, 7, 10: a run and where it is used


@pytest.fixture(scope="module")
def stopped_run(toy_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """In folder ``a``: toy data written by ``m3sgg toy-data``, a run on it with relative paths,
    stopped by SIGINT in iteration 13 (epoch 2), after evaluation 1."""
    root = tmp_path_factory.mktemp("newcomer")
    a = root / "a"
    a.mkdir()
    made = m3sgg("toy-data", "toy", "--videos", "16", cwd=a)
    assert made.returncode == 0, made.stderr
    trace = root / "trace"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "m3sgg", "train", "--data-path", "toy", "--output", "runs",
            "--name", "run", "--epochs", "2", "--plugin", "tests.reliability.hooks:trace",
        ],
        cwd=a, env=env(M3SGG_TRACE=str(trace), M3SGG_PAUSE_AT="13"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (trace.exists() and "iteration 13\n" in trace.read_text()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    return {"root": root, "a": a, "run": a / "runs" / "run", "stdout": stdout, "stderr": stderr}


def test_a_toy_data_folder_trains_at_toy_widths_and_says_what_it_trains(stopped_run) -> None:
    """``--data-path`` on a toy-data folder trained the paper-width model (94M parameters,
    1.1 GB per checkpoint) without a word."""
    stdout = str(stopped_run["stdout"])
    toy = build_model("sttran", "action_genome", "predcls", **toy_preset("sttran"), **{
        k: v for k, v in _model_inputs(stopped_run).items()
    })  # fmt: skip
    count = sum(p.numel() for p in toy.parameters())
    line = next(x for x in stdout.splitlines() if x.startswith("model "))
    assert line.startswith(
        f"model sttran (action_genome predcls, toy widths): {count:,} parameters"
    )
    size = (Path(stopped_run["run"]) / "checkpoints" / "last.pt").stat().st_size
    stated = float(line.split("one checkpoint about ")[1].split(" MB")[0])
    assert abs(stated - size / 1e6) <= 0.1 * size / 1e6 + 0.1, (line, size)


def _model_inputs(stopped_run) -> dict[str, object]:
    from m3sgg.config import load_config
    from m3sgg.data.registry import get_dataset_spec

    config = load_config(None, [f"data.path={Path(stopped_run['a']) / 'toy'}"])
    spec = get_dataset_spec("action_genome")
    return spec.model_inputs(spec.open(config, Path(config.data.path), "train"))


def test_the_saved_config_is_self_contained(stopped_run) -> None:
    """It held ``data.path`` relative and ``model.name`` / ``test_split`` null."""
    a = Path(stopped_run["a"])
    saved = yaml.safe_load((Path(stopped_run["run"]) / "config.yaml").read_text())
    assert saved["data"]["path"] == str(a / "toy")
    assert saved["run"]["output"] == str(a / "runs")
    assert saved["model"]["name"] == "sttran"
    assert saved["data"]["test_split"] == "test" and saved["data"]["mode"] == "predcls"


def test_the_resume_hint_works_from_another_folder(stopped_run, tmp_path: Path) -> None:
    """The printed command used relative paths: from another folder it failed or started anew.
    After the resume the evaluation counter goes on (it restarted at 1)."""
    import shlex

    message = str(stopped_run["stderr"]).strip().splitlines()[-1]
    command = shlex.split(message.split("resume with: ", 1)[1])
    assert command[:2] == ["m3sgg", "train"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = m3sgg(*command[1:], cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert "evaluation 2 (epoch 2, iteration 20)" in resumed.stdout, resumed.stdout
    assert not (elsewhere / "runs").exists()


def test_evaluate_a_run_folder_from_anywhere_says_what_it_scores(stopped_run, tmp_path) -> None:
    run = Path(stopped_run["run"])
    done = m3sgg("evaluate", str(run), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    last = run / "checkpoints" / "last.pt"
    assert first.startswith(f"evaluating {last} (epoch ")
    assert "split 'test'" in first and f"of {Path(stopped_run['a']) / 'toy'}" in first
    assert "(action_genome predcls)" in first
    as_json = m3sgg("evaluate", str(run), "--json", cwd=tmp_path)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["with/R@20"] >= 0
    assert as_json.stderr.startswith(f"evaluating {last}")


def test_a_run_branched_from_a_file_prints_best_paths_that_exist(stopped_run, tmp_path) -> None:
    """After ``--resume FILE --name NEW`` the printed best checkpoint was NEW/..., a file that
    was never written there."""
    run = Path(stopped_run["run"])
    best = sorted((run / "checkpoints").glob("best_*.pt"))[0]
    # --epochs 3: the branch trains on even when the best came from the last epoch
    done = m3sgg(
        "train", "--config", str(run / "config.yaml"), "--resume", str(best),
        "--output", str(tmp_path), "--name", "branch", "--epochs", "3", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = [
        line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("best ")
    ]
    assert printed and all(Path(p).is_file() for p in printed), done.stdout
    assert all(Path(p).parent == tmp_path / "branch" / "checkpoints" for p in printed)
    assert load_checkpoint(tmp_path / "branch" / "checkpoints" / "last.pt")["engine"]["iteration"]


def test_easg_alone_trains_on_its_default_mode(toy_cache: Path, tmp_path: Path) -> None:
    """``--dataset easg`` alone failed on the default mode 'predcls'."""
    done = m3sgg("train", "--dataset", "easg", "--describe", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "EVALUATION_COMPLETED" in done.stdout

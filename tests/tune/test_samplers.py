"""Samplers, pruners and the timeout through :func:`m3sgg.tune.tune`, in process."""

from __future__ import annotations

from pathlib import Path

import pytest

from m3sgg.config import config_to_dict, load_config

optuna = pytest.importorskip("optuna")

from m3sgg.tune import TuneSettings, tune  # noqa: E402

SMALL = ["data.toy_videos=16", "train.epochs=1", "log.every_iters=1000"]


def settings(tmp_path: Path, space: str, **kwargs) -> TuneSettings:
    (tmp_path / "space.yaml").write_text(space)
    base = load_config(None, [*SMALL, f"run.output={tmp_path / 'runs'}"])
    return TuneSettings(
        study="s", space=str(tmp_path / "space.yaml"), base=config_to_dict(base), **kwargs
    )


@pytest.mark.slow
def test_grid_sampler_visits_every_combination_once(toy_cache: Path, tmp_path: Path) -> None:
    space = "optim.lr: {choice: [0.001, 0.003]}\nmodel.options.ff_dim: {int: [64, 128], step: 64}\n"
    summary = tune(settings(tmp_path, space, n_trials=4, sampler="grid", pruner="none", seed=0))
    assert summary["complete"] == 4
    study = optuna.load_study(study_name="s", storage=summary["storage"])
    combos = sorted((t.params["optim.lr"], t.params["model.options.ff_dim"]) for t in study.trials)
    assert combos == [(0.001, 64), (0.001, 128), (0.003, 64), (0.003, 128)]
    for trial in study.trials:  # each trial ran the config it was given
        config = load_config(tmp_path / "runs" / "s" / f"trial-{trial.number:04d}" / "config.yaml")
        assert config.optim.lr == trial.params["optim.lr"]
        assert config.model.options == {"ff_dim": trial.params["model.options.ff_dim"]}


@pytest.mark.slow
def test_hyperband_pruner_runs_a_study(toy_cache: Path, tmp_path: Path) -> None:
    space = "optim.lr: {log_float: [1e-4, 1e-2]}\n"
    summary = tune(settings(tmp_path, space, n_trials=2, pruner="hyperband", seed=0))
    assert summary["complete"] + summary["pruned"] == 2 and summary["failed"] == 0


def test_no_trial_starts_after_the_timeout(toy_cache: Path, tmp_path: Path) -> None:
    space = "optim.lr: {log_float: [1e-4, 1e-2]}\n"
    summary = tune(settings(tmp_path, space, n_trials=3, timeout=0.0))
    assert summary["n_trials"] == 0 and summary["best_trial"] is None
    assert not list((tmp_path / "runs" / "s").glob("trial-*"))


def test_grid_sampler_refuses_a_continuous_range(tmp_path: Path) -> None:
    from m3sgg.errors import ConfigError

    space = "optim.lr: {log_float: [1e-4, 1e-2]}\n"
    with pytest.raises(ConfigError, match=r"optim\.lr: the grid sampler needs finite values"):
        tune(settings(tmp_path, space, n_trials=1, sampler="grid"))


@pytest.mark.slow
def test_a_trial_killed_before_its_first_checkpoint_is_retried_from_the_start(
    toy_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket
    import subprocess
    import sys

    from m3sgg.tune.runner import _prepare_study
    from m3sgg.tune.study import OWNER

    config = settings(tmp_path, "optim.lr: {log_float: [1e-4, 1e-2]}\n", n_trials=1, seed=0)
    study, _, _ = _prepare_study(config)
    killed = study.ask()
    killed.suggest_float("optim.lr", 1e-4, 1e-2, log=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    owner = {"host": socket.gethostname(), "pid": gone.pid, "start": None}
    study._storage.set_trial_system_attr(killed._trial_id, OWNER, owner)
    folder = tmp_path / "runs" / "s" / "trial-0000"
    folder.mkdir(parents=True)  # it evaluated once, then died before writing last.pt
    (folder / "metrics.jsonl").write_text('{"epoch": 1, "metrics": {"with/mR@20": 0.5}}\n')

    summary = tune(config)
    assert summary["complete"] == 1 and summary["failed"] == 1
    assert "trial 1 retries trial 0 from the start (no checkpoint yet)" in capsys.readouterr().out
    retry = tmp_path / "runs" / "s" / "trial-0001"
    assert len((retry / "metrics.jsonl").read_text().splitlines()) == 1  # its own evaluation
    assert (folder / "metrics.jsonl").read_text().count("\n") == 1  # the killed one's is kept

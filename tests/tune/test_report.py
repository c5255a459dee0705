"""Reading a study back: ``--show``, ``--export-best``, the visdom study plot, CLI errors, and
memory released between trials."""

from __future__ import annotations

import gc
import json
import re
import socket
from pathlib import Path

import pytest

from m3sgg.cli import main
from m3sgg.config import config_to_dict, load_config

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

from m3sgg.tune.plot import StudyPlot, study_curves  # noqa: E402
from m3sgg.tune.report import best_config, show  # noqa: E402
from m3sgg.tune.study import BASE_CONFIG, METRIC, open_storage, open_study  # noqa: E402

SMALL = ["data.toy_videos=16", "train.epochs=1", "log.every_iters=1000"]


def made_study(tmp_path: Path, values: list[tuple[str, float | None, list[float]]]):
    """A study in ``tmp_path/runs/s/study.db`` with one trial per (state, value, reports)."""
    storage = open_storage(f"sqlite:///{tmp_path / 'runs' / 's' / 'study.db'}")
    study = open_study("s", storage, direction="maximize")
    base = config_to_dict(load_config(None, [*SMALL, f"run.output={tmp_path / 'runs'}"]))
    study.set_user_attr(BASE_CONFIG, base)
    study.set_user_attr(METRIC, "with/mR@20")
    for i, (state, value, reports) in enumerate(values):
        trial = study.ask()
        trial.suggest_float("optim.lr", 1e-5, 1e-2, log=True)
        trial.suggest_categorical("model.options.ff_dim", [64, 128])
        for step, reported in enumerate(reports, 1):
            trial.report(reported, step)
        if state == "complete":
            study.tell(trial, value)
        elif state == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study._storage.set_trial_user_attr(trial._trial_id, "m3sgg:error", f"boom {i}")
            study.tell(trial, state=TrialState.FAIL)
    return study


def test_show_lists_every_trial_the_best_and_importances(tmp_path: Path) -> None:
    study = made_study(
        tmp_path,
        [
            ("complete", 0.3, [0.2, 0.3]),
            ("pruned", None, [0.1]),
            ("complete", 0.5, [0.4, 0.5]),
            ("failed", None, []),
            ("complete", 0.4, [0.4, 0.35]),
        ],
    )
    text = show(study)
    rows = [line.split()[:4] for line in text.splitlines() if re.match(r"^\d+ ", line)]
    assert rows == [
        ["0", "complete", "0.3", "2"],
        ["1", "pruned", "0.1", "1"],  # a pruned trial shows its last report
        ["2", "complete", "0.5", "2"],
        ["3", "fail", "-", "0"],
        ["4", "complete", "0.4", "2"],
    ]
    assert re.search(r"^3 +fail .* boom 3$", text, re.M)
    assert "best: trial 2, with/mR@20 0.5000" in text
    lr = study.trials[2].params["optim.lr"]
    assert f"  optim.lr: {json.dumps(lr)}" in text
    ranking = re.findall(r"^  (\S+) +(\d\.\d{3})$", text.split("importances")[1], re.M)
    assert {k for k, _ in ranking} == {"optim.lr", "model.options.ff_dim"}
    assert abs(sum(float(v) for _, v in ranking) - 1) < 2e-3


def test_show_without_enough_trials_and_best_config_without_a_complete_trial(tmp_path) -> None:
    from m3sgg.errors import ConfigError

    study = made_study(tmp_path, [("pruned", None, [0.1])])
    assert "best: no complete trial yet" in show(study)
    with pytest.raises(ConfigError, match="study 's' has no complete trial yet"):
        best_config(study)
    one = made_study(tmp_path / "b", [("complete", 0.2, [0.2])])
    assert "importances: need at least two complete trials" in show(one)


def test_best_config_without_a_run_folder_is_the_base_with_the_params(tmp_path: Path) -> None:
    study = made_study(tmp_path, [("complete", 0.2, [0.2]), ("complete", 0.6, [0.6])])
    tree = best_config(study)
    params = study.trials[1].params
    assert tree["optim"]["lr"] == params["optim.lr"]
    assert tree["model"]["options"] == {"ff_dim": params["model.options.ff_dim"]}
    assert tree["run"] == {**tree["run"], "name": None, "output": str(tmp_path / "runs")}
    assert tree["data"]["toy_videos"] == 16


def test_study_curves_values_pruned_and_best_so_far(tmp_path: Path) -> None:
    study = made_study(
        tmp_path,
        [
            ("complete", 0.3, [0.3]),
            ("pruned", None, [0.1, 0.05]),
            ("complete", 0.2, [0.2]),
            ("complete", 0.6, [0.6]),
        ],
    )
    assert study_curves(study) == {
        "complete": ([0, 2, 3], [0.3, 0.2, 0.6]),
        "pruned": ([1], [0.05]),
        "best so far": ([0, 1, 2, 3], [0.3, 0.3, 0.3, 0.6]),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_study_plot_draws_into_a_real_visdom_server(tmp_path: Path) -> None:
    import visdom

    from m3sgg.dashboard import spawn

    port = free_port()
    server = spawn(port, tmp_path / "envs", log=tmp_path / "server.log")
    try:
        study = made_study(tmp_path, [("complete", 0.3, [0.3]), ("pruned", None, [0.1])])
        plot = StudyPlot(f"http://127.0.0.1:{port}", "s-study")
        plot.update(study)
        trial = study.ask()
        trial.suggest_float("optim.lr", 1e-5, 1e-2, log=True)
        trial.suggest_categorical("model.options.ff_dim", [64, 128])
        study.tell(trial, 0.7)
        plot.update(study)  # redrawn from the database: every trial so far
        client = visdom.Visdom(
            server="http://127.0.0.1", port=port, env="s-study", use_incoming_socket=False
        )
        pane = json.loads(client.get_window_data(win="study_values", env="s-study"))
        traces = {t["name"]: (t["x"], t["y"]) for t in pane["content"]["data"]}
        assert traces == {
            "complete": ([0, 2], [0.3, 0.7]),
            "pruned": ([1], [0.1]),
            "best so far": ([0, 1, 2], [0.3, 0.3, 0.7]),
        }
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_cli_errors_are_one_line_exit_2(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text("optim.lrr: {float: [0.1, 0.2]}\n")
    assert main(["tune", "--study", "s", "--space", "space.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "m3sgg tune: error: space.yaml: unknown key 'optim.lrr'; did you mean 'optim.lr'?\n"
    )
    assert main(["tune", "--study", "none", "--show"]) == 2
    assert "no study database in runs/none" in capsys.readouterr().err
    assert main(["tune", "--study", "s"]) == 2
    assert "--space is needed" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "s").exists()  # nothing was created by a refused command


def test_a_study_refuses_another_base_config_or_metric(tmp_path: Path, capsys) -> None:
    made_study(tmp_path, [("complete", 0.3, [0.3])])
    (tmp_path / "space.yaml").write_text("optim.lr: {log_float: [1e-5, 1e-2]}\n")
    common = ["tune", "--study", "s", "--space", str(tmp_path / "space.yaml")]
    common += ["--output", str(tmp_path / "runs")]
    sets = [x for item in SMALL for x in ("--set", item)]
    assert main([*common, *sets, "--set", "optim.weight_decay=0.1"]) == 2
    err = capsys.readouterr().err
    assert "was started with another base config (optim.weight_decay: 0.0 then, 0.1 now)" in err
    assert main([*common, *sets, "--metric", "with/R@20"]) == 2
    assert "study 's' optimises with/mR@20" in capsys.readouterr().err


@pytest.mark.slow
def test_memory_is_released_between_trials(
    toy_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from m3sgg.engine.trainer import Trainer
    from m3sgg.tune import TuneSettings, tune
    from m3sgg.tune import trial as trial_module

    (tmp_path / "space.yaml").write_text("optim.lr: {log_float: [1e-4, 1e-2]}\n")
    alive: list[int] = []
    real = trial_module.run_trial

    def counting(*args, **kwargs):
        alive.append(sum(isinstance(o, Trainer) for o in gc.get_objects()))
        return real(*args, **kwargs)

    monkeypatch.setattr(trial_module, "run_trial", counting)
    base = load_config(None, [*SMALL, f"run.output={tmp_path / 'runs'}"])
    settings = TuneSettings(
        study="m",
        space=str(tmp_path / "space.yaml"),
        base=config_to_dict(base),
        n_trials=3,
        pruner="none",
        seed=0,
    )
    assert tune(settings)["complete"] == 3
    assert alive == [0, 0, 0]  # no trainer of an earlier trial is left when the next one starts
    assert sum(isinstance(o, Trainer) for o in gc.get_objects()) == 0

"""The study database: taking trials under the lock, recovering killed trials, the report
handler at the engine's evaluation event, and the one-line answer without Optuna."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ignite.engine import Engine, Events

from m3sgg.cli import main
from m3sgg.engine.events import M3sggEvents

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

from m3sgg.tune.study import (  # noqa: E402
    KILLED,
    OWNER,
    RETRY_OF,
    claim_trial,
    counted,
    default_storage,
    open_storage,
    open_study,
)
from m3sgg.tune.trial import TrialReport  # noqa: E402


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def new_study(tmp_path: Path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    return open_study("s", storage, direction="maximize", sampler=optuna.samplers.RandomSampler(0))


def test_claim_counts_finished_and_running_trials_up_to_n(tmp_path: Path) -> None:
    study = new_study(tmp_path)
    first, recovered = claim_trial(study, tmp_path, n_trials=2)
    assert recovered == [] and first.number == 0
    owner = study.get_trials()[0].system_attrs[OWNER]
    assert owner["pid"] == os.getpid()
    second, _ = claim_trial(study, tmp_path, n_trials=2)  # trial 0 runs (alive): it counts
    assert second.number == 1
    assert claim_trial(study, tmp_path, n_trials=2) is None
    study.tell(first, 0.5)
    study.tell(second, state=TrialState.FAIL)  # failed by its own error: still counts
    assert claim_trial(study, tmp_path, n_trials=2) is None
    assert claim_trial(study, tmp_path, n_trials=3) is not None


def test_a_dead_owners_trial_is_marked_killed_and_retried_with_its_params(tmp_path: Path) -> None:
    study = new_study(tmp_path)
    trial = study.ask()
    lr = trial.suggest_float("optim.lr", 1e-5, 1e-2, log=True)
    trial.report(0.25, 1)
    dead = {"host": socket.gethostname(), "pid": dead_pid(), "start": None}
    study._storage.set_trial_system_attr(trial._trial_id, OWNER, dead)
    done = study.ask()  # a finished trial must stay as it is
    done.suggest_float("optim.lr", 1e-5, 1e-2, log=True)
    study.tell(done, 0.75)

    retry, recovered = claim_trial(study, tmp_path, n_trials=2)
    assert recovered == [0]
    killed = study.get_trials()[0]
    assert killed.state == TrialState.FAIL and killed.user_attrs[KILLED] is True
    assert not counted(killed)
    assert killed.intermediate_values == {1: 0.25}  # nothing in the database is lost
    assert retry.number == 2 and retry.user_attrs[RETRY_OF] == 0
    assert retry.suggest_float("optim.lr", 1e-5, 1e-2, log=True) == lr
    assert (
        study.get_trials()[1].state == TrialState.COMPLETE and study.get_trials()[1].value == 0.75
    )
    assert claim_trial(study, tmp_path, n_trials=2) is None  # 0 killed, 1 complete, 2 running


def test_a_running_trial_of_a_live_process_or_another_host_is_left_alone(tmp_path: Path) -> None:
    study = new_study(tmp_path)
    claim_trial(study, tmp_path, n_trials=5)
    other = study.ask()
    study._storage.set_trial_system_attr(
        other._trial_id, OWNER, {"host": "elsewhere", "pid": dead_pid(), "start": None}
    )
    _, recovered = claim_trial(study, tmp_path, n_trials=5)
    assert recovered == []
    assert [t.state for t in study.get_trials()[:2]] == [TrialState.RUNNING] * 2


def test_default_storage_keeps_the_database_a_study_already_has(tmp_path: Path) -> None:
    assert default_storage(tmp_path, 1) == f"sqlite:///{tmp_path / 'study.db'}"
    assert default_storage(tmp_path, 2) == str(tmp_path / "study.journal")
    (tmp_path / "study.db").touch()
    assert default_storage(tmp_path, 2) == f"sqlite:///{tmp_path / 'study.db'}"


def test_direction_of_an_existing_study_must_match(tmp_path: Path) -> None:
    from m3sgg.errors import ConfigError

    storage = open_storage(str(tmp_path / "study.journal"))
    open_study("s", storage, direction="maximize")
    with pytest.raises(ConfigError, match="was created to maximize"):
        open_study("s", storage, direction="minimize")


class FakeTrial:
    """Records reports; prunes from the step given."""

    def __init__(self, prune_from: int | None):
        self.reports: list[tuple[float, int]] = []
        self.prune_from = prune_from

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.prune_from is not None and self.reports[-1][1] >= self.prune_from


def evaluations(values: list[float], handler: TrialReport) -> Engine:
    """An engine of len(values) iterations evaluating after each one with the given value."""
    engine = Engine(lambda e, b: None)
    engine.register_events(*M3sggEvents)
    handler.attach(engine)

    @engine.on(Events.ITERATION_COMPLETED)
    def evaluate(e: Engine) -> None:
        e.state.eval_metrics = {"with/mR@20": values[e.state.iteration - 1], "with/R@20": 1.0}
        e.fire_event(M3sggEvents.EVALUATION_COMPLETED)

    engine.run(range(len(values)), max_epochs=1)
    return engine


def test_report_handler_reports_each_evaluation_and_keeps_the_best() -> None:
    trial = FakeTrial(prune_from=None)
    handler = TrialReport(trial, "with/mR@20", "maximize")
    evaluations([0.2, 0.5, 0.3], handler)
    assert trial.reports == [(0.2, 1), (0.5, 2), (0.3, 3)]
    assert (handler.best, handler.last, handler.pruned) == (0.5, 0.3, False)
    low = TrialReport(FakeTrial(None), "with/mR@20", "minimize")
    evaluations([0.2, 0.5, 0.1], low)
    assert low.best == 0.1


def test_report_handler_stops_the_run_when_pruned_and_resumes_its_count() -> None:
    trial = FakeTrial(prune_from=2)
    handler = TrialReport(trial, "with/mR@20")
    engine = evaluations([0.2, 0.1, 0.9, 0.9], handler)
    assert engine.state.iteration == 2 and handler.pruned  # stopped at the second evaluation
    assert engine.state.stop_reason == "pruned at evaluation 2: with/mR@20 0.1000"
    restored = TrialReport(FakeTrial(None), "with/mR@20")
    restored.load_state_dict(handler.state_dict())
    evaluations([0.4], restored)
    assert restored.trial.reports == [(0.4, 3)] and restored.best == 0.4


def test_report_handler_names_the_closest_metric() -> None:
    from m3sgg.errors import ConfigError

    with pytest.raises(ConfigError, match="'with/mR@2': not an evaluation metric; did you mean"):
        evaluations([0.2], TrialReport(FakeTrial(None), "with/mR@2"))


def test_without_optuna_tune_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna → ImportError
    assert main(["tune", "--study", "s", "--space", "space.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "needs Optuna, which is not installed: pip install -e '.[tune]'" in err

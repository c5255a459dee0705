"""The visdom plotter against real visdom servers: windows, point counts, outages, the Trainer."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import torch
from ignite.engine import Engine, Events
from ignite.engine.events import RemovableEventHandle

from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import FunctionHandler, HandlerList
from m3sgg.engine.handlers.metrics_file import read_metrics_file
from m3sgg.engine.handlers.visdom import VisdomPlotter, evaluation_tables, per_predicate_bars
from m3sgg.errors import ConfigError
from m3sgg.vocab import AG_PREDICATES

CONSTRAINTS = ("with", "semi", "no")
KS = (10, 20, 50)


def fake_metrics(iteration: int) -> dict[str, Any]:
    """An evaluation's metrics in the evaluator's shape, growing with the iteration."""
    metrics: dict[str, Any] = {"with/frames": 12}
    for c, constraint in enumerate(CONSTRAINTS):
        for k in KS:
            metrics[f"{constraint}/R@{k}"] = iteration / 1000 + k / 100 + c / 10
            metrics[f"{constraint}/mR@{k}"] = iteration / 2000 + k / 200
        metrics[f"{constraint}/per_predicate"] = {
            k: torch.linspace(0, 1, 26) * iteration / 100 for k in KS
        }
    return metrics


def toy_engine(evaluate_every: int) -> tuple[Engine, torch.optim.Optimizer]:
    """A real ignite engine with a fake step (three loss terms) and evaluations."""
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)

    def step(engine: Engine, batch: Any) -> dict[str, Any]:
        it = engine.state.iteration
        return {
            "loss": torch.tensor(1.0 / it),
            "attention": torch.tensor(0.5),
            "spatial": torch.tensor(0.25),
            "finite": True,
        }

    engine = Engine(step)
    engine.register_events(*M3sggEvents)

    @engine.on(Events.ITERATION_COMPLETED(every=evaluate_every))
    def evaluate(engine: Engine) -> None:
        engine.state.eval_metrics = fake_metrics(engine.state.iteration)
        engine.state.train_losses = {"loss": 0.5, "attention": 0.25}
        engine.fire_event(M3sggEvents.EVALUATION_COMPLETED)

    return engine, optimizer


@pytest.fixture
def m3sgg_log() -> Iterator[list[logging.LogRecord]]:
    """Records of the ``m3sgg`` logger (INFO and up) during the test."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log, keep = logging.getLogger("m3sgg"), Keep(logging.INFO)
    level = log.level
    log.addHandler(keep)
    log.setLevel(logging.INFO)
    yield records
    log.removeHandler(keep)
    log.setLevel(level)


@pytest.fixture
def http_requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """URLs of every HTTP request sent (through requests) during the test."""
    calls: list[str] = []
    send = requests.adapters.HTTPAdapter.send

    def counting(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(request.url)
        return send(self, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", counting)
    return calls


def warnings_of(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_plots_losses_lr_recalls_and_per_predicate_bars(
    visdom_server: Any, num_workers: int, m3sgg_log: list[logging.LogRecord]
) -> None:
    env = f"plots-{num_workers}"
    engine, optimizer = toy_engine(evaluate_every=10)
    plotter = VisdomPlotter(
        visdom_server.url, env=env, optimizer=optimizer, every=5, num_workers=num_workers
    )
    plotter.attach(engine)
    engine.run(range(20), max_epochs=2)  # 40 iterations: 8 loss points, 4 evaluations

    windows = visdom_server.windows(env)
    assert set(windows) == {
        "loss",
        "lr",
        "loss_mean",
        *(f"{c}_{m}" for c in CONSTRAINTS for m in ("R", "mR")),
        *(f"{c}_per_predicate" for c in CONSTRAINTS),
    }
    loss = windows["loss"]["traces"]
    assert list(loss) == ["loss", "attention", "spatial"]
    xs, ys = loss["loss"]
    assert xs == [5, 10, 15, 20, 25, 30, 35, 40]
    assert ys == pytest.approx([1 / x for x in xs])
    assert windows["lr"]["traces"]["group 0"] == ([5, 10, 15, 20, 25, 30, 35, 40], [0.1] * 8)
    assert windows["loss_mean"]["traces"]["attention"] == ([10, 20, 30, 40], [25.0 / 100] * 4)

    recall = windows["semi_R"]
    assert recall["title"] == "semi: R@K"
    assert list(recall["traces"]) == ["R@10", "R@20", "R@50"]
    xs, ys = recall["traces"]["R@20"]
    assert xs == [10, 20, 30, 40]
    assert ys == pytest.approx([100 * fake_metrics(x)["semi/R@20"] for x in xs])
    assert len(windows["no_mR"]["traces"]["mR@50"][0]) == 4

    bars = windows["with_per_predicate"]
    assert bars["type"] == "bar" and "iteration 40" in bars["title"]  # the last evaluation
    names, heights = bars["traces"]["R@50"]
    assert names == list(AG_PREDICATES)
    assert heights == pytest.approx((torch.linspace(0, 1, 26) * 40).tolist())

    saved = json.loads((visdom_server.env_path / f"{env}.json").read_text())
    assert len(saved["jsons"]["loss"]["content"]["data"][0]["x"]) == 8  # saved at the end
    assert (plotter.connect_attempts, plotter.failures, plotter.dropped) == (1, 0, 0)
    assert warnings_of(m3sgg_log) == []


def test_continues_windows_already_on_the_server(visdom_server: Any) -> None:
    import numpy as np

    env = "continued"  # e.g. a resumed run, whose env holds a window with other traces
    client = visdom_server.client(env)
    client.line(
        X=np.array([[1.0, 1.0]]),
        Y=np.array([[9.0, 8.0]]),
        win="loss",
        opts={"title": "old", "legend": ["object", "loss"]},
    )
    engine, _ = toy_engine(evaluate_every=10)
    VisdomPlotter(visdom_server.url, env=env, every=5, num_workers=0).attach(engine)
    engine.run(range(10), max_epochs=2)

    traces = visdom_server.windows(env)["loss"]["traces"]
    assert traces["object"] == ([1], [9.0])  # untouched, not overwritten by position
    assert traces["loss"] == (
        [1, 5, 10, 15, 20],
        pytest.approx([8.0, 1 / 5, 1 / 10, 1 / 15, 1 / 20]),
    )
    assert traces["spatial"] == ([5, 10, 15, 20], [0.25] * 4)


def test_server_absent_at_start_one_warning_no_requests_training_runs(
    unused_url: str, m3sgg_log: list[logging.LogRecord], http_requests: list[str]
) -> None:
    engine, _ = toy_engine(evaluate_every=10)
    plotter = VisdomPlotter(unused_url, env="absent", every=1)
    plotter.attach(engine)
    state = engine.run(range(25), max_epochs=2)

    assert state.iteration == 50
    warnings = warnings_of(m3sgg_log)
    assert len(warnings) == 1 and "no visdom server" in warnings[0]
    assert plotter.connect_attempts == 1  # retried at most every 30 s
    assert http_requests == []  # the TCP probe failed: no HTTP request at all
    assert plotter.dropped == 50
    assert plotter.waiting_evaluations == 5  # kept for when a server answers


@pytest.mark.parametrize("num_workers", [0, 1])
def test_server_dies_mid_run_then_plotting_resumes_with_missed_evaluations(
    make_visdom_server: Callable[[], Any],
    num_workers: int,
    m3sgg_log: list[logging.LogRecord],
    http_requests: list[str],
) -> None:
    server = make_visdom_server().start()
    engine, _ = toy_engine(evaluate_every=20)
    plotter = VisdomPlotter(  # a fake clock: one second per iteration
        server.url,
        env="outage",
        every=2,
        num_workers=num_workers,
        clock=lambda: float(engine.state.iteration),
        # the end of the run waits at most 2 x timeout for the background sends, then cancels
        # the rest; on a loaded machine the default (4 s) cut off the last loss points
        timeout=30.0,
    )
    plotter.attach(engine)
    during_outage: list[int] = []

    @engine.on(Events.ITERATION_COMPLETED(once=25))
    def crash(engine: Engine) -> None:
        plotter.flush()  # what was sent before the crash has arrived
        server.kill()
        during_outage.append(len(http_requests))

    @engine.on(Events.ITERATION_COMPLETED(once=27))
    def time_passes(engine: Engine) -> None:
        plotter.flush()  # the send of iteration 26 has failed by now (also in the background)

    @engine.on(Events.ITERATION_COMPLETED(once=55))
    def come_back(engine: Engine) -> None:
        during_outage.append(len(http_requests))
        server.start()

    state = engine.run(range(40), max_epochs=2)

    assert state.iteration == 80  # training never stopped
    warnings = warnings_of(m3sgg_log)
    assert len(warnings) == 1 and "lost the server" in warnings[0]
    assert any("answers again" in r.getMessage() for r in m3sgg_log)
    assert plotter.failures == 1
    # the failure is seen at iteration 28; the next attempt is due 30 "seconds" later, at 58
    assert plotter.connect_attempts == 2  # the start, then one at iteration 58
    # 15 plotting calls and an evaluation fell into the outage; only the one failed send (a
    # window check and the update it guarded) knocked at the dead server
    assert during_outage[1] - during_outage[0] <= 2

    windows = server.windows("outage")
    # the restarted server reloaded the env saved at the evaluation of iteration 20; the
    # evaluation of iteration 40, made while it was away, was replayed on reconnection
    assert windows["with_R"]["traces"]["R@10"][0] == [20, 40, 60, 80]
    # loss points: those the saved env held (up to 18: the evaluation at 20 ran first), then
    # from the reconnection on; the points of the outage are not replayed
    loss_xs = windows["loss"]["traces"]["loss"][0]
    assert loss_xs == list(range(2, 19, 2)) + list(range(58, 81, 2))
    assert plotter.waiting_evaluations == 0


def test_attach_returns_removable_handles_and_handler_list_orders_it() -> None:
    engine, optimizer = toy_engine(evaluate_every=10)
    plotter = VisdomPlotter("http://127.0.0.1:1", env="handles", optimizer=optimizer)
    handles = plotter.attach(engine)
    assert len(handles) == 4 and all(isinstance(h, RemovableEventHandle) for h in handles)
    for handle in handles:
        handle.remove()
    engine.run(range(20), max_epochs=1)
    assert plotter.connect_attempts == 0 and plotter.waiting_evaluations == 0  # detached

    handlers = HandlerList(engine, "train")
    handlers.add(FunctionHandler(lambda e: None, [Events.COMPLETED], "after_all", priority=999))
    handlers.add(plotter)
    handlers.add(FunctionHandler(lambda e: None, [Events.COMPLETED], "console", priority=900))
    assert handlers.names() == ["console", "visdom", "after_all"]
    table = handlers.describe()
    assert "visdom" in table and "(every 10)" in table  # throttled by default
    handlers.remove("visdom")
    engine.run(range(20), max_epochs=1)
    assert plotter.connect_attempts == 0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="http"):
        VisdomPlotter("ftp://host", env="x")
    with pytest.raises(ConfigError, match="every"):
        VisdomPlotter("http://127.0.0.1:8097", env="x", every=0)
    with pytest.raises(ConfigError, match="num_workers"):
        VisdomPlotter("http://127.0.0.1:8097", env="x", num_workers=2)


def test_evaluation_tables_from_metrics_records() -> None:
    records = [
        {"iteration": 10, "lr": 0.1, "losses": {"verb": 2.0, "loss": 3.0},
         "metrics": {"R@10": 0.5, "R@20": 0.75, "graphs": 4}},
        {"iteration": 20, "lr": 0.05, "losses": {"verb": 1.0, "loss": 1.5},
         "metrics": {"R@10": None, "R@20": 0.8, "with/per_predicate": {"20": [0.5] * 26}}},
    ]  # fmt: skip
    tables = evaluation_tables(records, lr=True)
    assert set(tables) == {"R", "loss_mean", "lr"}  # counts like "graphs" are not curves
    assert tables["R"].xs == [10.0, 20.0]
    assert tables["R"].columns["R@20"] == pytest.approx([75.0, 80.0])
    assert tables["R"].columns["R@10"][0] == 50.0 and math.isnan(tables["R"].columns["R@10"][1])
    assert list(tables["loss_mean"].columns) == ["loss", "verb"]  # the total first
    assert tables["lr"].columns["group 0"] == [0.1, 0.05]
    bars = per_predicate_bars(records[1])
    x, opts = bars["with_per_predicate"]
    assert x.shape == (26, 1) and opts["legend"] == ["R@20"] and opts["rownames"][0] == "looking_at"


def test_trainer_plots_its_run_to_visdom(visdom_server: Any, small_config: Any) -> None:
    from m3sgg.engine.trainer import Trainer

    config = small_config(f"log.visdom={json.dumps(visdom_server.url)}", "log.every_iters=3")
    trainer = Trainer.from_config(config)
    assert trainer.handlers.names()[-1] == "visdom"  # loggers last
    state = trainer.train_loop()

    env = trainer.run_dir.name  # "test": one env per run, named after the run folder
    windows = visdom_server.windows(env)
    records = read_metrics_file(trainer.run_dir / "metrics.jsonl")
    losses = windows["loss"]["traces"]
    assert next(iter(losses)) == "loss" and set(losses) == set(records[0]["losses"])
    assert losses["loss"][0] == list(range(3, state.iteration + 1, 3))
    assert windows["with_mR"]["traces"]["mR@20"][0] == [r["iteration"] for r in records]
    assert windows["with_mR"]["traces"]["mR@20"][1] == pytest.approx(
        [100 * r["metrics"]["with/mR@20"] for r in records]
    )
    assert windows["no_per_predicate"]["traces"]["R@20"][0] == list(AG_PREDICATES)


def test_trainer_without_server_trains_and_writes_metrics(
    small_config: Any, unused_url: str, m3sgg_log: list[logging.LogRecord]
) -> None:
    from m3sgg.engine.trainer import Trainer

    trainer = Trainer.from_config(small_config(f"log.visdom={json.dumps(unused_url)}"))
    trainer.train_loop()
    assert [r["epoch"] for r in read_metrics_file(trainer.run_dir / "metrics.jsonl")] == [1, 2]
    visdom_warnings = [w for w in warnings_of(m3sgg_log) if w.startswith("visdom")]
    assert len(visdom_warnings) == 1

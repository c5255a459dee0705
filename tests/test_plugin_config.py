"""Plugin configuration (``plugins:`` with options, validated and saved), plugin handler state at
resume, and one metric added to a dataset's evaluation with ``register_metric``."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from ignite.metrics import Metric

from m3sgg.config import PluginConfig, config_to_dict, load_config
from m3sgg.engine.handlers.metrics_file import read_metrics_file
from m3sgg.engine.trainer import Trainer
from m3sgg.errors import ConfigError, DataError
from m3sgg.metrics import _EXTRA, build_metrics, extra_metric_names, register_metric
from m3sgg.plugins import load_plugins

COUNTER_PLUGIN = '''
from ignite.engine import Events

from m3sgg import Handler


class CountSteps(Handler):
    """Counts iterations from ``start``; state saved in checkpoints."""

    name = "count_steps"

    def __init__(self, start):
        self.count = start

    def events(self):
        return [Events.ITERATION_COMPLETED]

    def __call__(self, engine):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def setup(trainer, *, start=0, label="steps"):
    trainer.handlers.add(CountSteps(start))
    trainer.counter_label = label
'''


@pytest.fixture
def counter_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "counter_plugin.py").write_text(textwrap.dedent(COUNTER_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("M3SGG_NO_ENTRY_POINTS", "1")
    return "counter_plugin:setup"


# -- the plugins: section -------------------------------------------------------------------


def test_plugins_section_accepts_names_and_options_and_saves_them(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "plugins:\n  - a_mod:setup\n  - name: counter_plugin:setup\n    options: {start: 5}\n"
    )
    config = load_config(path, plugins=["b_mod:setup", "a_mod:setup"])  # --plugin adds, once
    assert config.plugins == [
        PluginConfig("a_mod:setup"),
        PluginConfig("counter_plugin:setup", {"start": 5}),
        PluginConfig("b_mod:setup"),
    ]
    saved = config_to_dict(config)["plugins"]
    assert saved[1] == {"name": "counter_plugin:setup", "options": {"start": 5}}
    # the saved form reads back the same (what --config <run>/config.yaml does)
    (tmp_path / "again.yaml").write_text(yaml.safe_dump({"plugins": saved}))
    assert load_config(tmp_path / "again.yaml").plugins == config.plugins


def test_tune_plugin_flag_adds_to_the_config_files_plugins_as_train_does(tmp_path: Path):
    from m3sgg.cli import build_parser
    from m3sgg.tune.cli import _base

    path = tmp_path / "c.yaml"
    path.write_text("plugins:\n  - name: counter_plugin:setup\n    options: {start: 5}\n")
    args = build_parser().parse_args(
        ["tune", "--study", "s", "--config", str(path), "--plugin", "b_mod:setup"]
    )
    # the file's plugin keeps its options; --plugin adds one (it used to replace the list)
    assert _base(args).plugins == [
        PluginConfig("counter_plugin:setup", {"start": 5}),
        PluginConfig("b_mod:setup"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plugins: [{name: a:b, option: {}}]", "unknown key 'plugins[0].option'"),
        ("plugins: [{options: {}}]", "plugins[0]"),
        ("plugins: [{name: a:b, options: [1]}]", "plugins[0].options: expected a mapping"),
        ("plugins: [a:b, {name: a:b}]", "plugins[1].name: 'a:b' is listed twice"),
        ("plugins: ['  ']", "plugins[0].name: must not be empty"),
        ("plugins: a:b", "plugins: expected a list"),
    ],
)
def test_plugins_section_is_validated(tmp_path: Path, text: str, message: str):
    path = tmp_path / "c.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_options_are_checked_against_setup_before_anything_runs(counter_plugin: str):
    (plugin,) = load_plugins([PluginConfig(counter_plugin, {"start": 3, "label": "x"})])
    assert plugin.options == {"start": 3, "label": "x"}
    with pytest.raises(ConfigError, match=r"plugins: counter_plugin:setup: options \['stat'\]"):
        load_plugins([PluginConfig(counter_plugin, {"stat": 3})])


def test_options_reach_setup_and_handlers_are_recorded(small_config, counter_plugin: str):
    config = small_config("train.epochs=1")
    config.plugins = [PluginConfig(counter_plugin, {"start": 100, "label": "mine"})]
    trainer = Trainer.from_config(config)
    assert trainer.counter_label == "mine"
    assert trainer.handlers.get("count_steps").count == 100
    assert trainer.plugin_handlers == {"count_steps": counter_plugin}
    trainer.train_loop()
    steps = trainer.engine.state.iteration
    assert trainer.handlers.get("count_steps").count == 100 + steps
    saved = yaml.safe_load((trainer.run_dir / "config.yaml").read_text())
    assert saved["plugins"] == [
        {"name": counter_plugin, "options": {"start": 100, "label": "mine"}}
    ]
    ckpt = torch.load(trainer.checkpoint_dir / "last.pt", weights_only=True)
    assert ckpt["plugin_handlers"] == {"count_steps": counter_plugin}
    assert ckpt["handlers"]["count_steps"] == {"count": 100 + steps}


# -- resuming without the plugin ------------------------------------------------------------


def test_resume_without_the_plugin_is_an_error_or_dropped_on_request(
    small_config, counter_plugin: str, caplog: pytest.LogCaptureFixture
):
    config = small_config("train.epochs=1")
    config.plugins = [PluginConfig(counter_plugin, {"start": 7})]
    first = Trainer.from_config(config)
    first.train_loop()
    last = first.checkpoint_dir / "last.pt"

    # the folder holds a run: resuming goes through from_config(resume=...), like the CLI
    with pytest.raises(DataError) as err:
        Trainer.from_config(small_config("train.epochs=2"), run_dir=first.run_dir, resume=last)
    message = str(err.value)
    assert message.startswith(f"{last}: handlers: holds the state of handler 'count_steps' ")
    assert f"of plugin {counter_plugin!r}" in message and f"--plugin {counter_plugin}" in message
    assert "--ignore-missing-plugins" in message and "\n" not in message

    with caplog.at_level(logging.WARNING, logger="m3sgg"):
        bare = Trainer.from_config(
            small_config("train.epochs=2"),
            run_dir=first.run_dir,
            resume=last,
            ignore_missing_plugins=True,
        )
    assert "dropped the state of handler 'count_steps'" in caplog.text
    assert bare.engine.state.iteration == first.engine.state.iteration

    again = small_config("train.epochs=2")
    again.plugins = [PluginConfig(counter_plugin)]  # loaded: its state comes back
    resumed = Trainer.from_config(again, run_dir=first.run_dir, resume=last)
    assert resumed.handlers.get("count_steps").count == 7 + first.engine.state.iteration


# -- register_metric --------------------------------------------------------------------------


class PairCount(Metric):
    """Mean number of ground-truth relations per evaluated video."""

    def reset(self):
        self.pairs = self.videos = 0

    def update(self, output):
        gt, _pred = output
        self.videos += 1
        self.pairs += gt.num_relations

    def compute(self):
        return {"mean": self.pairs / max(self.videos, 1), "videos": self.videos}


@pytest.fixture
def pair_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_EXTRA, "action_genome", {})
    register_metric("action_genome", "pairs", lambda mode, cfg: PairCount())


def test_register_metric_adds_one_metric_beside_the_suite(pair_metric):
    metrics = build_metrics("action_genome", "predcls")
    assert set(metrics) == {"recall", "pairs"} and isinstance(metrics["pairs"], PairCount)
    assert extra_metric_names("action_genome") == ["pairs"]
    with pytest.raises(ValueError, match="already registered"):
        register_metric("action_genome", "pairs", lambda mode, cfg: PairCount())
    with pytest.raises(ValueError, match="no '/'"):
        register_metric("action_genome", "a/b", lambda mode, cfg: PairCount())


def test_a_registered_metric_reaches_console_and_metrics_file(
    small_config, pair_metric, caplog: pytest.LogCaptureFixture
):
    trainer = Trainer.from_config(small_config("train.epochs=1"))
    with caplog.at_level(logging.INFO, logger="m3sgg"):
        trainer.train_loop()
    metrics = trainer.engine.state.eval_metrics
    test_set = trainer.evaluator.dataloader.dataset
    videos = len(test_set)
    relations = sum(test_set[i].gt.num_relations for i in range(videos))  # read directly
    assert metrics["pairs/videos"] == videos
    assert metrics["pairs/mean"] == pytest.approx(relations / videos)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluation 1")]
    assert line.endswith(f"| pairs/mean {metrics['pairs/mean']:.4f} pairs/videos {videos:.4f}")
    assert " with R@20 " in line
    (record,) = read_metrics_file(trainer.run_dir / "metrics.jsonl")
    assert record["metrics"]["pairs/videos"] == videos
    assert record["metrics"]["pairs/mean"] == pytest.approx(metrics["pairs/mean"])

"""Plugins: --plugin module:attr and the m3sgg.plugins entry point of an installed distribution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from m3sgg.errors import ConfigError
from m3sgg.plugins import apply_plugins, import_plugins, load_plugins

PLUGIN_SOURCE = """
from ignite.engine import Events

from m3sgg.engine.handlers.base import FunctionHandler


def setup(trainer):
    def mark(engine):
        print(f"PLUGIN saw epoch {engine.state.epoch}", flush=True)

    trainer.handlers.add(
        FunctionHandler(mark, [Events.EPOCH_COMPLETED], "plugin_marker"), before="evaluation"
    )
"""


def make_distribution(site: Path) -> None:
    """A tiny installed distribution: a module and a dist-info with an entry point."""
    (site / "tiny_m3sgg_plugin.py").write_text(PLUGIN_SOURCE)
    info = site / "tiny_m3sgg_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-m3sgg-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[m3sgg.plugins]\ntiny = tiny_m3sgg_plugin:setup\n")
    (info / "RECORD").write_text("")


def test_entry_point_plugin_is_discovered_and_runs(toy_cache: Path, tmp_path: Path):
    """Installed, it is imported in every run but attaches only where named (by its entry point
    name here)."""
    make_distribution(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [
        sys.executable,
        "-m",
        "m3sgg",
        "train",
        "--describe",
        "--output",
        str(tmp_path / "r"),
    ]
    unnamed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert unnamed.returncode == 0, unnamed.stderr
    assert "plugin_marker" not in unnamed.stdout
    describe = subprocess.run(
        [*command, "--plugin", "tiny"], capture_output=True, text=True, env=env, timeout=300
    )
    assert describe.returncode == 0, describe.stderr
    lines = describe.stdout.splitlines()
    marker = next(i for i, line in enumerate(lines) if "plugin_marker" in line)
    assert "evaluation" in lines[marker + 1]  # inserted right before the evaluation
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "m3sgg",
            "train",
            "--output",
            str(tmp_path / "r"),
            "--name",
            "p",
            "--epochs",
            "1",
            "--set",
            "data.toy_videos=16",
            "--plugin",
            "tiny",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "PLUGIN saw epoch 1" in run.stdout


def test_disabling_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    make_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = import_plugins()
    assert found["tiny"] is found["tiny_m3sgg_plugin:setup"]  # by name and by module:attr
    assert load_plugins() == []  # imported, not named: nothing to call
    (named,) = load_plugins(["tiny"])
    assert named.name == "tiny" and named.source.startswith("entry point 'tiny' of tiny-m3sgg")
    monkeypatch.setenv("M3SGG_NO_ENTRY_POINTS", "1")
    assert import_plugins() == {}
    with pytest.raises(ConfigError, match=r"'tiny': neither 'module:attr' nor an installed"):
        load_plugins(["tiny"])


def test_plugin_errors_name_the_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "broken_plugin.py").write_text("import not_a_module_anywhere\n")
    (tmp_path / "raising_plugin.py").write_text(
        textwrap.dedent("""
        def setup(trainer):
            raise RuntimeError("boom")
        value = 3
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("M3SGG_NO_ENTRY_POINTS", "1")
    with pytest.raises(
        ConfigError,
        match=r"plugin 'broken_plugin:setup' \(--plugin\) failed to "
        r"import: ModuleNotFoundError",
    ):
        load_plugins(["broken_plugin:setup"])
    with pytest.raises(ConfigError, match="has no 'missing'"):
        load_plugins(["raising_plugin:missing"])
    with pytest.raises(ConfigError, match="is not callable"):
        load_plugins(["raising_plugin:value"])
    with pytest.raises(ConfigError, match="neither 'module:attr' nor an installed"):
        load_plugins(["raising_plugin"])
    plugins = load_plugins(["raising_plugin:setup"])
    with pytest.raises(ConfigError, match=r"plugin 'raising_plugin:setup' .* RuntimeError: boom"):
        apply_plugins(object(), plugins)


DATASET_PLUGIN = '''
"""A dataset plugin: Action Genome's reader under another name, with its own model and metrics."""
import dataclasses

from m3sgg.data.registry import get_dataset_spec, register_dataset
from m3sgg.metrics import build_metrics, register_metrics
from m3sgg.models.presets import toy_preset
from m3sgg.models.registry import register_model
from m3sgg.models.sttran import STTran

register_dataset(
    dataclasses.replace(
        get_dataset_spec("action_genome"),
        name="ag_copy",
        modes=("predcls",),
        default_model="sttran_copy",
        watched={"best": ("with/R@20",), "schedule": "with/R@20", "early_stop": "with/R@20"},
        test_split="test",
    )
)
register_metrics("ag_copy", lambda mode, cfg: build_metrics("action_genome", mode, cfg))


@register_model("sttran_copy", datasets={"ag_copy"}, modes={"predcls"})
def sttran_copy(*, dataset, mode, **options):
    return STTran(dataset="action_genome", mode=mode, **{**toy_preset("sttran"), **options})


def setup(trainer):
    print(f"DATASET PLUGIN: {trainer.config.data.dataset} / {trainer.config.model_name}")
'''


def test_a_plugin_dataset_is_selected_from_the_config(toy_cache: Path, tmp_path: Path):
    """``--dataset`` names a dataset a ``--plugin`` registers: the plugin is imported before
    the config is validated, its modes, default model and watched metrics apply, and the run
    trains and evaluates through its spec."""
    (tmp_path / "ag_copy_plugin.py").write_text(DATASET_PLUGIN)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "M3SGG_NO_ENTRY_POINTS": "1"}
    base = [sys.executable, "-m", "m3sgg", "train", "--output", str(tmp_path / "r")]
    options = ["--set", "data.toy_videos=16", "--dataset", "ag_copy"]  # --dataset takes it too
    run = subprocess.run(
        [*base, "--name", "copy", "--epochs", "1", "--plugin", "ag_copy_plugin:setup", *options],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "DATASET PLUGIN: ag_copy / sttran_copy" in run.stdout
    records = [json.loads(line) for line in (tmp_path / "r" / "copy" / "metrics.jsonl").open()]
    assert any("with/R@20" in record.get("metrics", record) for record in records)
    saved = (tmp_path / "r" / "copy" / "config.yaml").read_text()
    assert "ag_copy" in saved and "ag_copy_plugin:setup" in saved
    # without the plugin the name is unknown: one line, exit 2, listing the registered ones
    refused = subprocess.run(
        [*base, "--name", "refused", *options], capture_output=True, text=True, env=env, timeout=300
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "m3sgg train: error: data.dataset: must be one of 'action_genome', 'easg' or a dataset "
        "a plugin registers, got 'ag_copy'"
    ]
    # a mode the plugin dataset does not list is refused by name
    bad_mode = subprocess.run(
        [*base, "--plugin", "ag_copy_plugin:setup", *options, "--set", "data.mode=sgdet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad_mode.returncode == 2
    assert "data.mode: must be one of 'predcls', got 'sgdet'" in bad_mode.stderr

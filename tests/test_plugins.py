"""Plugins: --plugin module:attr and the m3sgg.plugins entry point of an installed distribution."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from m3sgg.errors import ConfigError
from m3sgg.plugins import apply_plugins, load_plugins

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
    make_distribution(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    describe = subprocess.run(
        [sys.executable, "-m", "m3sgg", "train", "--describe", "--output", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
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
    assert any(p.name == "tiny_m3sgg_plugin:setup" for p in load_plugins())
    monkeypatch.setenv("M3SGG_NO_ENTRY_POINTS", "1")
    assert load_plugins() == []


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
    with pytest.raises(ConfigError, match="expected 'module:attr'"):
        load_plugins(["raising_plugin"])
    plugins = load_plugins(["raising_plugin:setup"])
    with pytest.raises(ConfigError, match=r"plugin 'raising_plugin:setup' .* RuntimeError: boom"):
        apply_plugins(object(), plugins)

"""``m3sgg dashboard`` and ``m3sgg plot``: offline server, assets, replay, the page in a browser."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from m3sgg import dashboard
from m3sgg.cli import main
from m3sgg.dashboard import ASSETS, install_assets, missing_assets, spawn
from m3sgg.errors import M3sggError

CONSTRAINTS = ("with", "semi", "no")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_run(run: Path, evaluations: int = 3) -> Path:
    """A run folder whose metrics.jsonl has the metrics file's records."""
    run.mkdir(parents=True)
    with open(run / "metrics.jsonl", "w") as f:
        for i in range(1, evaluations + 1):
            metrics: dict[str, Any] = {"with/frames": 40}
            for c, constraint in enumerate(CONSTRAINTS):
                for k in (10, 20, 50):
                    metrics[f"{constraint}/R@{k}"] = 0.2 + 0.1 * i + k / 500 + c / 20
                    metrics[f"{constraint}/mR@{k}"] = 0.05 * i + k / 1000
                metrics[f"{constraint}/per_predicate"] = {
                    str(k): [(p % 7) / 7 * i / evaluations for p in range(26)] for k in (10, 20, 50)
                }
            record = {
                "epoch": i,
                "iteration": 10 * i,
                "lr": 1e-4 / i,
                "losses": {"loss": 2.0 / i, "attention": 1.0 / i, "spatial": 0.5 / i},
                "metrics": metrics,
            }
            f.write(json.dumps(record) + "\n")
    return run


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dashboard (``m3sgg dashboard`` in a child process) for the module; yields its URL."""
    root = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    process = spawn(port, root / "envs", log=root / "server.log")
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


def read_windows(url: str, env: str) -> dict[str, Any]:
    import visdom

    host, port = url.rsplit(":", 1)
    client = visdom.Visdom(server=host, port=int(port), env=env, use_incoming_socket=False)
    return json.loads(client.get_window_data(env=env))


def points(pane: dict[str, Any]) -> dict[str, list[float]]:
    return {trace["name"]: trace["x"] for trace in pane["content"]["data"]}


def test_register_commands_adds_dashboard_and_plot() -> None:
    parser = argparse.ArgumentParser(prog="m3sgg")
    dashboard.register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dashboard"])
    assert (args.port, args.host, args.env_path, args.install_assets) == (
        8097,
        "127.0.0.1",
        None,
        False,
    )
    args = parser.parse_args(["dashboard", "--port", "9000", "--env-path", "e", "--install-assets"])
    assert (args.port, args.env_path, args.install_assets) == (9000, Path("e"), True)
    args = parser.parse_args(["plot", "runs/a", "--url", "http://h:1", "--env", "x"])
    assert (args.run_dir, args.url, args.env, args.func) == ("runs/a", "http://h:1", "x", args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["dashboard", "--port", "70000"])


def test_missing_assets_names_every_file_and_the_version_stamp(tmp_path: Path) -> None:
    missing = missing_assets(tmp_path)
    assert "js/plotly-plotly.min.js" in missing and "css/bootstrap.min.css" in missing
    assert "js/mathjax/2.7.5/MathJax.js" in missing and missing[-1] == "version.built"
    assert len(missing) == sum(len(a.files) for a in ASSETS) + 1


def test_install_assets_needs_npm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on it
    assert main(["dashboard", "--install-assets"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("m3sgg dashboard: error: npm not found") and "\n" not in err


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_install_assets_reports_an_unreachable_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("npm_config_registry", f"http://127.0.0.1:{free_port()}/")
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_prefer_online", "true")  # do not answer from npm's cache
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    with pytest.raises(M3sggError, match="npm pack failed: code ECONNREFUSED") as info:
        install_assets(tmp_path / "static", log=lambda line: None)
    assert "\n" not in str(info.value) and "registry reachable" in str(info.value)
    assert not (tmp_path / "static").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_install_assets_from_the_npm_registry(tmp_path: Path) -> None:
    static = tmp_path / "static"
    written = install_assets(static, log=lambda line: None)
    assert missing_assets(static) == []
    assert (static / "version.built").read_text() == "0.2.4"
    assert len(written) == sum(len(a.files) for a in ASSETS) + 1
    assert b"Plotly" in (static / "js" / "plotly-plotly.min.js").read_bytes()[:2000]
    assert not list(static.rglob("*.part"))


def test_plot_replays_a_run_idempotently(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = write_run(tmp_path / "runs" / "replayed")
    for _ in range(2):  # replaying twice replaces, never duplicates
        assert main(["plot", str(run), "--url", server]) == 0
    out = capsys.readouterr().out
    assert "plotted 3 evaluations" in out and "env 'replayed'" in out
    windows = read_windows(server, "replayed")
    assert set(windows) == {
        "loss_mean",
        "lr",
        *(f"{c}_{m}" for c in CONSTRAINTS for m in ("R", "mR")),
        *(f"{c}_per_predicate" for c in CONSTRAINTS),
    }
    assert points(windows["with_R"]) == {f"R@{k}": [10, 20, 30] for k in (10, 20, 50)}
    assert points(windows["loss_mean"])["spatial"] == [10, 20, 30]
    bars = windows["no_per_predicate"]
    assert "iteration 30" in bars["title"] and len(bars["content"]["data"]) == 3

    assert main(["plot", str(run / "metrics.jsonl"), "--url", server, "--env", "other"]) == 0
    assert set(read_windows(server, "other")) == set(windows)


def test_plot_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    run = write_run(tmp_path / "run", evaluations=1)
    cases = [
        (["plot", str(tmp_path / "missing")], "metrics.jsonl: not found"),
        (["plot", str(empty)], "holds no evaluation yet"),
        (
            ["plot", str(run), "--url", nowhere, "--timeout", "1"],
            "start one with `m3sgg dashboard`",
        ),
        (["plot", str(run), "--url", "ftp://host"], "expected http://HOST"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("m3sgg plot: error: ") and message in err and "\n" not in err


@pytest.mark.parametrize("problem", ["taken port", "env path is a file"])
def test_dashboard_user_errors_are_one_line(tmp_path: Path, problem: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1] if problem == "taken port" else free_port()
        env_path = tmp_path / "envs"
        if problem == "env path is a file":
            env_path.write_text("not a folder")
        done = subprocess.run(
            [sys.executable, "-m", "m3sgg", "dashboard", "--port", str(port),
             "--env-path", str(env_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    expected = f"cannot listen on 127.0.0.1:{port}" if problem == "taken port" else "--env-path"
    assert message.startswith(f"m3sgg dashboard: error: {expected}")


def test_dashboard_without_npm_says_in_one_line_how_to_get_missing_assets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: list[tuple[Any, ...]] = []
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on it
    monkeypatch.setattr(dashboard, "missing_assets", lambda: ["js/plotly-plotly.min.js"])
    monkeypatch.setattr(dashboard, "serve", lambda *args: served.append(args))
    assert main(["dashboard", "--port", "8123"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "tornado" not in line]
    assert len(lines) == 1, err
    assert "js/plotly-plotly.min.js" in err and "m3sgg dashboard --install-assets" in err
    assert "install npm" in err
    assert served == [(8123, "127.0.0.1", None)]  # the API is served all the same


def test_dashboard_fetches_missing_assets_itself_when_npm_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 19, point 9: the first start used to serve a blank page until the user found
    ``--install-assets``. A stand-in npm on PATH records the call; install_assets is the real
    one, writing into a temporary static folder."""
    npm = tmp_path / "bin" / "npm"
    npm.parent.mkdir()
    npm.write_text(f'#!/bin/sh\necho "$@" >> "{npm.parent / "calls"}"\nexit 1\n')
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", str(npm.parent))
    static = tmp_path / "static"
    monkeypatch.setattr(dashboard, "static_dir", lambda: static)
    served: list[tuple[Any, ...]] = []
    monkeypatch.setattr(dashboard, "serve", lambda *args: served.append(args))
    assert main(["dashboard", "--port", "8124"]) == 0
    calls = (npm.parent / "calls").read_text()
    assert calls.startswith("pack ") and all(asset.spec in calls for asset in ASSETS)
    err = [line for line in capsys.readouterr().err.splitlines() if "tornado" not in line]
    assert err[0].startswith("fetching visdom's web assets with npm")
    # this stand-in npm fails, as an unreachable registry does: one line, and the server starts
    assert len(err) == 2 and "the page stays blank" in err[1] and "--install-assets" in err[1]
    assert served == [(8124, "127.0.0.1", None)]


def test_missing_static_files_do_not_flood_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19, point 9: every page load logged one tornado error per missing asset."""
    import logging
    import sys

    from tornado.web import StaticFileHandler

    handler = logging.StreamHandler(sys.stderr)
    general = logging.getLogger("tornado.general")
    general.addHandler(handler)
    try:
        dashboard.quiet_missing_static_files()
        StaticFileHandler._get_cached_version("/nonexistent/static/js/missing.js")
        logging.getLogger("tornado.access").warning("404 GET /static/js/missing.js (::1) 1ms")
        general.error("another error")  # other errors still show
    finally:
        general.removeHandler(handler)
        StaticFileHandler._static_hashes.pop("/nonexistent/static/js/missing.js", None)
    err = capsys.readouterr().err
    assert "Could not open static file" not in err and "missing.js" not in err
    assert "another error" in err


# ---------------------------------------------------------------------------- the page


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def _browser_skip_reason() -> str | None:
    if _chromium() is None:
        return "no headless chromium (apt-get install chromium)"
    if missing_assets():
        return "visdom's web assets are not installed (m3sgg dashboard --install-assets)"
    if dashboard._tornado_blocks_page():
        return "tornado>=6.6 answers 403 on the page (pin tornado<6.6)"
    return None


def _chromium_run(url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory() as profile:
        command = [
            _chromium() or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=8000",
            "--window-size=1280,900",
            *args,
            url,
        ]
        return subprocess.run(command, capture_output=True, timeout=120, check=False)


@pytest.mark.slow
def test_the_page_shows_the_plots_in_a_headless_browser(server: str, tmp_path: Path) -> None:
    reason = _browser_skip_reason()
    if reason:
        pytest.skip(reason)
    from PIL import Image

    run = write_run(tmp_path / "browser")
    assert main(["plot", str(run), "--url", server]) == 0
    page = f"{server}/env/browser"

    shot = tmp_path / "page.png"
    done = _chromium_run(page, f"--screenshot={shot}")
    assert shot.is_file(), done.stderr.decode(errors="replace")[-2000:]
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"), dtype=float)
    assert pixels.shape == (900, 1280, 3)
    assert pixels.std() > 20  # not a blank page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # lines, bars, text

    dom = _chromium_run(page, "--dump-dom").stdout.decode(errors="replace")
    for title in (
        "with: R@K",
        "no: mR@K",
        "training loss, mean between evaluations",
        "semi: recall per predicate, iteration 30",
    ):
        assert title in dom, f"{title!r} not rendered"
    assert "looking_at" in dom  # a predicate name on the bar chart's axis

"""Fixtures of the engine tests: real visdom servers (``m3sgg dashboard``) in child processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it: bind 127.0.0.1:0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class VisdomServer:
    """A visdom server process on 127.0.0.1 with its own env folder; start, kill, restart.

    It is started with m3sgg's offline entry point (no downloads) and stopped by its pid.
    """

    def __init__(self, root: Path, port: int | None = None):
        root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.env_path = root / "envs"
        self.log = root / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VisdomServer:
        from m3sgg.dashboard import spawn

        self.process = spawn(self.port, self.env_path, log=self.log)
        return self

    def kill(self) -> None:
        """Die at once, as a crashed server does (SIGKILL: nothing is saved)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=10)
        self.process = None

    def client(self, env: str) -> Any:
        import visdom

        return visdom.Visdom(
            server="http://127.0.0.1",
            port=self.port,
            env=env,
            use_incoming_socket=False,
            raise_exceptions=True,
        )

    def windows(self, env: str) -> dict[str, dict[str, Any]]:
        """``{window: {"title", "type", "traces": {name: (xs, ys)}}}`` of an env, read back."""
        data = json.loads(self.client(env).get_window_data(env=env))
        return {
            win: {
                "title": pane.get("title"),
                "type": pane["content"]["data"][0]["type"] if pane["content"]["data"] else None,
                "traces": {
                    trace.get("name"): (trace["x"], trace["y"]) for trace in pane["content"]["data"]
                },
            }
            for win, pane in data.items()
        }


@pytest.fixture(scope="session")
def visdom_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VisdomServer]:
    """One visdom server for the session, on a free port, stopped by its pid at the end."""
    server = VisdomServer(tmp_path_factory.mktemp("visdom")).start()
    yield server
    server.stop()


@pytest.fixture
def make_visdom_server(tmp_path: Path) -> Iterator[Any]:
    """Servers a test may kill and restart (all stopped at teardown)."""
    servers: list[VisdomServer] = []

    def make() -> VisdomServer:
        server = VisdomServer(tmp_path / f"visdom{len(servers)}")
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def unused_url() -> str:
    """The URL of a local port where no server listens."""
    return f"http://127.0.0.1:{free_port()}"

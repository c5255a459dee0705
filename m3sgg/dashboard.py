"""``m3sgg dashboard`` (a visdom server that works offline) and ``m3sgg plot`` (replay a run).

``python -m visdom.server`` downloads its web assets and MathJax at every start and crashes
without internet. :func:`serve` starts visdom's tornado application directly, skipping the
downloads, bound to 127.0.0.1 unless told otherwise. The HTTP API (what training plots through)
works without the assets; the web page needs them in visdom's ``static/`` folder:
:func:`install_assets` fetches each from the npm registry at the exact version visdom asks for
(``npm pack``), puts it under the file name visdom's ``server/build.py`` uses, and writes
``static/version.built`` so visdom's own start script would not download them again.

The first ``m3sgg dashboard`` without the assets fetches them itself when npm is installed (one
progress line); without npm, or when its registry cannot be reached, it says how in one line and
serves the API all the same. tornado's per-request "Could not open static file" errors are not
printed (the start said it once). The page needs ``tornado<6.6`` (6.6 answers 403 on ``/``); the
API works with any.

Example::

    m3sgg dashboard --port 8097 &        # then open http://127.0.0.1:8097 (first start: fetches
                                         # the page's assets with npm when they are missing)
    m3sgg train --visdom                 # plots live into env <run folder name>
    m3sgg plot runs/my_run               # or replay a finished run's metrics.jsonl
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from m3sgg.errors import ConfigError, DataError, M3sggError

__all__ = [
    "ASSETS",
    "Asset",
    "install_assets",
    "missing_assets",
    "register_commands",
    "serve",
    "spawn",
    "static_dir",
    "wait_until_up",
]

DEFAULT_URL = "http://127.0.0.1:8097"
_MATHJAX = "js/mathjax/2.7.5/"
_GLYPHS = "glyphicons-halflings-regular"


@dataclass(frozen=True)
class Asset:
    """One npm package and the files taken from it: (path in the package, path under static/)."""

    package: str
    version: str
    files: tuple[tuple[str, str], ...]

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def tarball(self) -> str:
        """The file name ``npm pack`` writes (unscoped packages)."""
        return f"{self.package}-{self.version}.tgz"


#: visdom 0.2.4's web assets (``visdom/server/build.py``), each from npm at the version it names
ASSETS: tuple[Asset, ...] = (
    Asset("jquery", "3.1.1", (("dist/jquery.min.js", "js/jquery.min.js"),)),
    Asset(
        "bootstrap",
        "3.3.7",
        (
            ("dist/js/bootstrap.min.js", "js/bootstrap.min.js"),
            ("dist/css/bootstrap.min.css", "css/bootstrap.min.css"),
            *(
                (f"dist/fonts/{_GLYPHS}.{ext}", f"fonts/{_GLYPHS}.{ext}")
                for ext in ("eot", "woff2", "woff", "ttf", "svg")
            ),
            # build.py's name for the svg font (what the CSS asks for is the plain .svg above)
            (f"dist/fonts/{_GLYPHS}.svg", f"fonts/{_GLYPHS}.svg#glyphicons_halflingsregular"),
        ),
    ),
    Asset("react", "16.2.0", (("umd/react.production.min.js", "js/react-react.min.js"),)),
    Asset("react-dom", "16.2.0", (("umd/react-dom.production.min.js", "js/react-dom.min.js"),)),
    Asset("react-modal", "3.1.10", (("dist/react-modal.min.js", "js/react-modal.min.js"),)),
    Asset("plotly.js-dist-min", "2.11.1", (("plotly.min.js", "js/plotly-plotly.min.js"),)),
    Asset("sjcl", "1.0.7", (("sjcl.js", "js/sjcl.js"),)),
    Asset(
        "layout-bin-packer",
        "1.4.0",
        (
            ("dist/layout-bin-packer.js", "js/layout_bin_packer.js"),
            ("dist/layout-bin-packer.js.map", "js/layout-bin-packer.js.map"),
        ),
    ),
    Asset("d3", "3.5.17", (("d3.min.js", "js/d3.v3.min.js"),)),
    Asset(
        "d3-selection-multi",
        "1.0.1",
        (("build/d3-selection-multi.js", "js/d3-selection-multi.v1.js"),),
    ),
    Asset("save-svg-as-png", "1.4.17", (("lib/saveSvgAsPng.js", "js/saveSvgAsPng.js"),)),
    Asset("react-resizable", "1.4.6", (("css/styles.css", "css/react-resizable-styles.css"),)),
    Asset("react-grid-layout", "0.16.3", (("css/styles.css", "css/react-grid-layout-styles.css"),)),
    Asset("classnames", "2.2.5", (("index.js", "fonts/classnames"),)),
    Asset(
        "mathjax",
        "2.7.5",
        tuple(
            (path, _MATHJAX + path)
            for path in (
                "MathJax.js",
                "config/Safe.js",
                "config/TeX-AMS-MML_HTMLorMML.js",
                "extensions/Safe.js",
                "jax/output/SVG/fonts/TeX/fontdata.js",
                "jax/output/SVG/jax.js",
                "jax/output/SVG/fonts/TeX/Size1/Regular/Main.js",
                "jax/output/SVG/config.js",
            )
        ),
    ),
)


def _import_visdom() -> None:
    """Import visdom's server without torch, which its client takes only to accept tensors.

    Saves ~2 s and hundreds of MB in the dashboard process; a process that already imported
    torch (or visdom) is left as it is, and torch stays importable afterwards.
    """
    if "visdom" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
    try:
        import visdom.server.app  # noqa: F401
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]


def static_dir() -> Path:
    """visdom's ``static/`` folder (where its server looks for the page's assets)."""
    from visdom.utils.shared_utils import get_visdom_path

    return Path(get_visdom_path("static"))


def _visdom_version() -> str:
    import visdom

    return str(visdom.__version__)


def missing_assets(static: Path | None = None) -> list[str]:
    """The asset files (paths under static/) that are absent, with ``version.built``."""
    static = static or static_dir()
    wanted = [target for asset in ASSETS for _, target in asset.files]
    missing = [target for target in wanted if not (static / target).is_file()]
    built = static / "version.built"
    if not built.is_file() or built.read_text().strip() != _visdom_version():
        missing.append("version.built")
    return missing


def install_assets(
    static: Path | None = None, npm: str | None = None, log: Callable[[str], None] = print
) -> list[Path]:
    """Fill visdom's static/ folder from the npm registry; returns the files written.

    Args:
        static: the folder (default: the installed visdom's).
        npm: the npm executable (default: ``npm`` on PATH).
        log: called with one line per step.

    Raises:
        M3sggError: npm missing or failing, a package lacking a file, static/ not writable.
    """
    static = static or static_dir()
    npm = npm or shutil.which("npm")
    if npm is None:
        raise M3sggError(
            "npm not found: install it (Debian: apt-get install npm) to fetch visdom's web "
            "assets from the npm registry"
        )
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="m3sgg-assets-") as tmp:
        log(f"fetching {len(ASSETS)} packages with npm pack ...")
        command = [npm, "pack", "--loglevel=error", *(asset.spec for asset in ASSETS)]
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise M3sggError(
                f"npm pack failed: {_npm_error(done)} (is the npm registry reachable?)"
            )
        for asset in ASSETS:
            tarball = Path(tmp) / asset.tarball
            if not tarball.is_file():
                raise M3sggError(f"npm pack wrote no {asset.tarball} for {asset.spec}")
            written += _extract(tarball, asset, static)
    built = static / "version.built"
    _write(built, _visdom_version().encode())
    written.append(built)
    log(f"installed {len(written)} files into {static}")
    return written


def _npm_error(done: subprocess.CompletedProcess[str]) -> str:
    """The gist of npm's error output: its code and, when given, the reason."""
    lines = []
    for line in (done.stderr or done.stdout).splitlines():
        for prefix in ("npm error ", "npm ERR! "):
            if line.startswith(prefix) and line[len(prefix) :].strip():
                lines.append(line[len(prefix) :].strip())
    if not lines:
        return f"exit code {done.returncode}"
    reasons = [x for x in lines[1:] if "reason" in x or "Not Found" in x or "No matching" in x]
    return "; ".join(lines[:1] + reasons[:1])


def _extract(tarball: Path, asset: Asset, static: Path) -> list[Path]:
    """Copy the asset's named files out of its package tarball (nothing else is extracted)."""
    written = []
    with tarfile.open(tarball, "r:gz") as tar:
        for member, target in asset.files:
            try:
                source = tar.extractfile(f"package/{member}")
            except KeyError:
                source = None
            if source is None:
                raise M3sggError(f"{asset.spec} has no file {member}")
            path = static / target
            _write(path, source.read())
            written.append(path)
    return written


def _write(path: Path, data: bytes) -> None:
    """Write atomically (a temp file renamed into place)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as err:
        raise M3sggError(f"cannot write {path}: {err.strerror or err}") from None


def _tornado_blocks_page() -> bool:
    import tornado

    return tuple(int(p) for p in tornado.version.split(".")[:2]) >= (6, 6)


def serve(port: int = 8097, host: str = "127.0.0.1", env_path: str | Path | None = None) -> None:
    """Run a visdom server until interrupted, without visdom's start-up downloads.

    Args:
        port: TCP port.
        host: the address to bind (127.0.0.1: this machine only; visdom has no login here).
        env_path: folder of the saved envs (default: visdom's ``~/.visdom``).

    Raises:
        M3sggError: the port is taken, or the env folder cannot be created.
    """
    _import_visdom()
    from tornado.ioloop import IOLoop
    from visdom.server import app as visdom_app
    from visdom.server.defaults import DEFAULT_ENV_PATH

    env_dir = Path(os.path.expanduser(str(env_path or DEFAULT_ENV_PATH)))
    try:
        env_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--env-path {env_dir}: {err.strerror or err}") from None
    if not env_dir.is_dir():
        raise ConfigError(f"--env-path {env_dir}: not a folder")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    quiet_missing_static_files()
    # visdom forces tornado's debug mode, which re-executes the process when a module changes
    visdom_app.tornado_settings["autoreload"] = False
    application = visdom_app.Application(port=port, env_path=str(env_dir) + os.sep)
    try:
        application.listen(port, address=host, max_buffer_size=1024**3)
    except OSError as err:
        raise M3sggError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    print(f"visdom dashboard at http://{host}:{port} (envs in {env_dir}); Ctrl-C stops it")
    sys.stdout.flush()
    IOLoop.current().start()


def wait_until_up(url: str, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    """Return once the visdom server at ``url`` answers its API.

    Raises:
        M3sggError: no answer within ``timeout`` s, or ``process`` exited first.
    """
    import json
    import time
    import urllib.error
    import urllib.request

    body = json.dumps({"win": "", "eid": "main"}).encode()
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise M3sggError(f"the visdom server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/win_exists", data=body, timeout=1.0) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise M3sggError(f"no visdom server answered at {url} within {timeout:g} s")
        time.sleep(0.1)


def spawn(
    port: int,
    env_path: str | Path,
    host: str = "127.0.0.1",
    log: str | Path | None = None,
    timeout: float = 30.0,
) -> subprocess.Popen:
    """Start ``m3sgg dashboard`` in a child process and return it once it answers.

    For scripts and tests; stop it with ``process.terminate()``. Its output goes to ``log``.

    Raises:
        M3sggError: the port is taken (another server would answer in its place), or the
            server did not come up within ``timeout`` s.
    """
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tornado binds
        try:
            probe.bind((host, port))
        except OSError as err:
            raise M3sggError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    command = [
        sys.executable,
        "-m",
        "m3sgg",
        "dashboard",
        "--port",
        str(port),
        "--host",
        host,
        "--env-path",
        str(env_path),
    ]
    with open(log or os.devnull, "ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        wait_until_up(f"http://{host}:{port}", timeout, process)
    except M3sggError:
        process.kill()
        process.wait()
        raise
    return process


# ---------------------------------------------------------------------------- commands


def _cmd_dashboard(args: argparse.Namespace) -> int:
    _import_visdom()  # this process only serves: no torch
    if args.install_assets:
        install_assets()
        return 0
    missing = missing_assets()
    if missing:
        _fetch_missing_assets(missing)
    if _tornado_blocks_page():
        print(
            "note: tornado>=6.6 answers 403 on the page (the API works); "
            "pip install 'tornado<6.6' to view it",
            file=sys.stderr,
        )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"note: listening on {args.host}: anyone who reaches it can read and change plots",
            file=sys.stderr,
        )
    try:
        serve(args.port, args.host, args.env_path)
    except KeyboardInterrupt:
        print("dashboard stopped")
    return 0


def _fetch_missing_assets(missing: list[str]) -> None:
    """First start: fetch the page's assets with npm when it is there (one progress line);
    otherwise, or when the registry cannot be reached, one line saying how. The server starts
    either way (training can plot through the API without them)."""
    static = static_dir()
    how = "get them with `m3sgg dashboard --install-assets` once npm can reach its registry"
    if shutil.which("npm") is None:
        print(
            f"note: {len(missing)} of visdom's web assets are missing from {static} (e.g. "
            f"{missing[0]}), so the page stays blank; npm is not installed to fetch them: "
            f"install npm (Debian: apt-get install npm), then {how.removeprefix('get them ')}",
            file=sys.stderr,
        )
        return
    print(
        f"fetching visdom's web assets with npm into {static} (first start only) ...",
        file=sys.stderr,
        flush=True,
    )
    try:
        install_assets(static, log=lambda line: None)
    except M3sggError as err:
        print(f"note: the page stays blank: {err}; {how}", file=sys.stderr)


class _MissingStaticFilter(logging.Filter):
    """Drops tornado's per-request complaints about missing static files (the page asks for
    every asset on each load): the start already said, once, that the assets are missing."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Could not open static file"):
            return False
        return not (record.name == "tornado.access" and " /static/" in message and "404" in message)


def quiet_missing_static_files() -> None:
    """Install :class:`_MissingStaticFilter` on tornado's loggers (idempotent)."""
    for name in ("tornado.general", "tornado.access"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _MissingStaticFilter) for f in log.filters):
            log.addFilter(_MissingStaticFilter())


def _cmd_plot(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    path = run if run.is_file() else run / "metrics.jsonl"
    if not path.is_file():
        raise DataError(path, "not found: give a run folder (one holding metrics.jsonl)")
    from m3sgg.engine.handlers.metrics_file import read_metrics_file
    from m3sgg.engine.handlers.visdom import VisdomUnavailable, open_logger, replay

    records = read_metrics_file(path)
    if not records:
        raise DataError(path, "holds no evaluation yet")
    bad = [i for i, r in enumerate(records) if not isinstance(r, dict) or "iteration" not in r]
    if bad:
        raise DataError(path, "not a metrics record (no 'iteration')", field=f"line {bad[0] + 1}")
    env = args.env or (run if run.is_dir() else run.parent).resolve().name
    try:
        visdom_logger = open_logger(args.url, env, timeout=args.timeout, num_workers=0)
    except VisdomUnavailable as err:
        raise VisdomUnavailable(f"{err}; start one with `m3sgg dashboard`") from None
    try:
        windows = replay(visdom_logger.vis, records)
    except ConnectionError as err:
        raise M3sggError(f"visdom server at {args.url} stopped answering: {err}") from None
    print(
        f"plotted {len(records)} evaluations of {path} into env {env!r}: "
        f"{', '.join(windows)} (open {args.url.rstrip('/')}/env/{env})"
    )
    return 0


def register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dashboard`` and ``plot`` to the CLI's subcommands (each sets ``func``)."""
    dashboard = subparsers.add_parser(
        "dashboard",
        help="start a visdom server for live plots (works offline)",
        description="Start a visdom server that needs no internet. Training plots to it with "
        "`m3sgg train --visdom`; open http://HOST:PORT in a browser.",
    )
    dashboard.add_argument("--port", type=_port, default=8097, help="TCP port (default 8097)")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine)"
    )
    dashboard.add_argument(
        "--env-path", type=Path, default=None, help="folder of saved envs (default ~/.visdom)"
    )
    dashboard.add_argument(
        "--install-assets",
        action="store_true",
        help="fetch the web page's scripts and styles from the npm registry (needs npm), then exit",
    )
    dashboard.set_defaults(func=_cmd_dashboard)

    plot = subparsers.add_parser(
        "plot", help="replay a run's metrics.jsonl into visdom (evaluation curves and bars)"
    )
    plot.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (or its metrics.jsonl)")
    plot.add_argument("--url", default=DEFAULT_URL, help=f"visdom server (default {DEFAULT_URL})")
    plot.add_argument("--env", default=None, help="visdom env (default: the run folder's name)")
    plot.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the server (default 5)"
    )
    plot.set_defaults(func=_cmd_plot)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {port}")
    return port

"""Untrusted files and exposed servers.

- Dataset pickles and checkpoints carrying code (a ``__reduce__`` calling ``os.system``, which
  would create a marker file) are refused through the real ``m3sgg`` commands, and the marker
  proves the code never ran; each payload is first shown to be live (it does run under a plain
  ``pickle.loads`` / ``torch.load(weights_only=False)``).
- A config carrying a YAML ``!!python`` tag is refused the same way.
- Every server m3sgg starts listens on the loopback interface unless told otherwise (checked on
  the live process's sockets in ``/proc``), and no call in ``m3sgg/`` runs a shell (AST scan).
"""

from __future__ import annotations

import ast
import contextlib
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from m3sgg.cli import build_parser
from m3sgg.config import load_config
from m3sgg.data.registry import toy_dataset_path
from m3sgg.data.safe_pickle import load_pickle

from .conftest import (
    REPO,
    Reference,
    child_env,
    m3sgg_command,
    run_m3sgg,
    train_args,
)
from .probes import listening_sockets, loopback, spawned_group_sockets

PACKAGE = REPO / "m3sgg"
OBJECTS = "annotations/object_bbox_and_relationship.pkl"
PERSONS = "annotations/person_bbox.pkl"


class Payload:
    """Pickles as ``func(*args)``: what an attacker puts into a file."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payload(marker: Path) -> Payload:
    """``os.system`` of a command that creates ``marker``."""
    return Payload(os.system, f"{sys.executable} -c \"open({str(marker)!r}, 'w').close()\"")


def assert_refused(done: subprocess.CompletedProcess[str], command: str, *words: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"m3sgg {command}: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


# ------------------------------------------------------------------------------ dataset pickles


@pytest.fixture
def ag_copy(reference_run: Reference, tmp_path: Path) -> Path:
    source = toy_dataset_path(load_config(reference_run.config))
    return Path(shutil.copytree(source, tmp_path / "ag"))


def poison_annotations(ag: Path, target: str, marker: Path) -> Path:
    """Hide the payload in the first frame's entry (as a box) of one AG pickle."""
    path = ag / target
    data = load_pickle(path)
    key = sorted(data)[0]
    if target == OBJECTS:
        data[key][0]["bbox"] = payload(marker)
    else:
        data[key]["bbox"] = payload(marker)
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


def test_the_pickle_payload_is_live(tmp_path: Path) -> None:
    """The test's own check: the payload does run under a plain ``pickle.loads``."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"bbox": payload(marker)}))
    assert marker.exists()


@pytest.mark.parametrize("target", [OBJECTS, PERSONS], ids=["objects", "persons"])
def test_dataset_pickle_with_code_is_refused_by_inspect_data(
    ag_copy: Path, tmp_path: Path, target: str
) -> None:
    marker = tmp_path / "ran"
    path = poison_annotations(ag_copy, target, marker)
    done = run_m3sgg("inspect-data", "--data-path", ag_copy)
    assert_refused(done, "inspect-data", str(path), "refused global", "system")
    assert "nothing was executed" in done.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_dataset_pickle_with_code_is_refused_by_train(
    reference_run: Reference, ag_copy: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    path = poison_annotations(ag_copy, OBJECTS, marker)
    args = train_args(reference_run.config, tmp_path / "runs", "run", "--data-path", str(ag_copy))
    done = run_m3sgg(*args)
    assert_refused(done, "train", str(path), "refused global", "system")
    assert not marker.exists()


def test_easg_pickle_with_code_is_refused(tmp_path: Path, toy_cache: Path) -> None:
    source = toy_dataset_path(
        load_config(None, ["data.dataset=easg", "data.mode=edgecls", "data.toy_videos=16"])
    )
    root = Path(shutil.copytree(source, tmp_path / "easg"))
    marker = tmp_path / "ran"
    path = root / "easg_train.pkl"
    data = load_pickle(path)
    data[sorted(data)[0]]["clip_frame_number"]["pnr"] = payload(marker)
    path.write_bytes(pickle.dumps(data, protocol=2))
    done = run_m3sgg("inspect-data", "--dataset", "easg", "--data-path", root)
    assert_refused(done, "inspect-data", str(path), "refused global")
    assert not marker.exists()


# ---------------------------------------------------------------------------------- checkpoints


@pytest.fixture
def evil_checkpoint(reference_run: Reference, tmp_path: Path) -> tuple[Path, Path]:
    """The reference's ``last.pt`` with the payload among its weights; (file, marker)."""
    marker = tmp_path / "ran"
    ckpt = torch.load(reference_run.run / "checkpoints" / "last.pt", weights_only=True)
    ckpt["model"]["extra"] = payload(marker)
    path = tmp_path / "evil.pt"
    torch.save(ckpt, path)
    return path, marker


def test_the_checkpoint_payload_is_live(evil_checkpoint: tuple[Path, Path]) -> None:
    path, marker = evil_checkpoint
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "train-resume"])
def test_checkpoint_with_code_is_refused(
    reference_run: Reference, evil_checkpoint: tuple[Path, Path], tmp_path: Path, command: str
) -> None:
    path, marker = evil_checkpoint
    if command == "evaluate":
        done = run_m3sgg("evaluate", "--checkpoint", path)
    else:
        done = run_m3sgg(
            *train_args(reference_run.config, tmp_path / "runs", "run", "--resume", str(path))
        )
    assert_refused(done, command.split("-")[0], str(path), "weights_only", "nothing in it was run")
    assert not marker.exists()


@pytest.mark.slow
def test_config_with_a_python_tag_is_refused(reference_run: Reference, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    command = f"{sys.executable} -c \"open({str(marker)!r}, 'w').close()\""
    config.write_text(f"optim:\n  lr: !!python/object/apply:os.system [{command!r}]\n")
    done = run_m3sgg("train", "--config", config, "--output", tmp_path / "runs")
    assert_refused(done, "train", str(config))
    assert not marker.exists()
    assert not (tmp_path / "runs").exists()


# -------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/net/tcp").exists(), reason="reads listening sockets from Linux's /proc"
)


def wait_for_listener(process: subprocess.Popen, timeout: float = 60) -> list[tuple[str, int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        found = listening_sockets(process.pid)
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("the server never listened")


@pytest.mark.slow
@needs_proc
def test_dashboard_listens_on_loopback_only(tmp_path: Path) -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    if "dashboard" not in commands:
        pytest.skip("this m3sgg has no dashboard command")
    port = free_port()
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            m3sgg_command("dashboard", "--port", str(port), "--env-path", str(tmp_path / "env")),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(),
        )
    try:
        found = wait_for_listener(process)
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert found and all(loopback(address) for address, _ in found), (found, log.read_text())
    assert {p for _, p in found} == {port}


@pytest.mark.slow
@needs_proc
def test_distributed_launch_listens_on_loopback_only() -> None:
    distributed = pytest.importorskip("m3sgg.engine.distributed")
    found = distributed.launch(spawned_group_sockets, nproc_per_node=2, backend="gloo")
    assert found and all(loopback(address) for address, _ in found), found


# ------------------------------------------------------------------------------- static checks


def package_calls() -> list[tuple[Path, ast.Call]]:
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        calls += [(path, node) for node in ast.walk(tree) if isinstance(node, ast.Call)]
    return calls


def dotted(node: ast.AST) -> str:
    """``os.system`` for the expression ``os.system`` (``""`` for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


def test_no_shell_anywhere_in_the_package() -> None:
    """No ``shell=`` other than a literal False, and none of the calls that always use a shell."""
    shells = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}
    found = []
    for path, call in package_calls():
        for keyword in call.keywords:
            if keyword.arg == "shell" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                found.append(f"{where(path, call)} shell={ast.unparse(keyword.value)}")
        if dotted(call.func) in shells:
            found.append(f"{where(path, call)} {dotted(call.func)}")
    assert found == []


def test_loaders_never_run_code() -> None:
    """``torch.load`` always with ``weights_only=True``; no ``eval``/``exec``; unrestricted
    ``pickle`` only where m3sgg reads back what its own child processes wrote."""
    own_results = {PACKAGE / "engine" / "distributed.py"}  # results of its spawned workers
    found = []
    for path, call in package_calls():
        name = dotted(call.func)
        if name == "torch.load":
            flag = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{where(path, call)} torch.load without weights_only=True")
        elif name in ("eval", "exec", "builtins.eval", "builtins.exec") or (
            name in ("pickle.load", "pickle.loads") and path not in own_results
        ):
            found.append(f"{where(path, call)} {name}")
        elif name in ("np.load", "numpy.load"):
            flag = next((k.value for k in call.keywords if k.arg == "allow_pickle"), None)
            if not (flag is None or (isinstance(flag, ast.Constant) and flag.value is False)):
                found.append(f"{where(path, call)} {name}(allow_pickle=...)")
        elif name == "yaml.load":
            loader = next((k.value for k in call.keywords if k.arg == "Loader"), None)
            if loader is None:
                found.append(f"{where(path, call)} yaml.load without a safe Loader")
    assert found == []


def parameter_defaults(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[tuple[str, ast.AST]]:
    """``(name, default expression)`` of every parameter of a function that has a default."""
    args = node.args
    positional = args.posonlyargs + args.args
    with_default = positional[len(positional) - len(args.defaults) :]
    pairs = [(a.arg, d) for a, d in zip(with_default, args.defaults, strict=True)]
    pairs += [(a.arg, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d]
    return pairs


def test_server_addresses_default_to_loopback() -> None:
    """Every ``host``/``address`` parameter and ``--host`` option defaults to a loopback address,
    and no wildcard address is written anywhere in the package."""
    names = {"host", "address", "bind", "bind_address", "master_addr"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Constant) and node.value in ("0.0.0.0", "::"):
                found.append(f"{where(path, node)} wildcard address {node.value!r}")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found += [
                    f"{where(path, node)} {name}={default.value!r}"
                    for name, default in parameter_defaults(node)
                    if name in names
                    and isinstance(default, ast.Constant)
                    and default.value is not None
                    and not loopback_name(default.value)
                ]
            if isinstance(node, ast.Call) and dotted(node.func).endswith("add_argument"):
                flags = [a.value for a in node.args if isinstance(a, ast.Constant)]
                if any(f in ("--host", "--address", "--bind") for f in flags):
                    default = next((k.value for k in node.keywords if k.arg == "default"), None)
                    if not (isinstance(default, ast.Constant) and loopback_name(default.value)):
                        found.append(f"{where(path, node)} {flags[0]} default")
    assert found == []


def loopback_name(value: object) -> bool:
    return value == "localhost" or (isinstance(value, str) and _is_loopback_ip(value))


def _is_loopback_ip(value: str) -> bool:
    try:
        return loopback(value)
    except ValueError:
        return False

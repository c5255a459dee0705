"""Checkpoint files: atomic, durable writes; safe loads; RNG state capture.

Why not ignite's ``Checkpoint``/``DiskSaver``: ``Checkpoint`` deletes the file it replaces
*before* writing the new one and ``DiskSaver`` renames without fsync, so a crash or a full disk
during a save can leave no loadable checkpoint at all. Here a new file is written to a temp file
in the same folder, fsynced, renamed over the target, and the folder is fsynced; older files are
removed only after that. A half-written temp file is never picked up (loaders read final names
only) and is cleaned up by the next save.

:func:`atomic_write` writes the run's other files the same way (``config.yaml``, a
``metrics.jsonl`` cut back on resume, ``m3sgg tune --export-best``'s config).

A checkpoint is one ``torch.save`` of a dict of tensors and plain Python values, loaded with
``torch.load(weights_only=True)``: a file carrying code is refused without running it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import platform
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

from m3sgg.errors import DataError, WriteError

if TYPE_CHECKING:
    from m3sgg.config import Config

__all__ = [
    "FORMAT",
    "CheckpointWriteError",
    "atomic_save",
    "atomic_write",
    "capture_rng",
    "checkpoint_manifest",
    "load_checkpoint",
    "require_sections",
    "restore_rng",
    "versions",
]

FORMAT = "m3sgg-checkpoint/1"
_TMP_PREFIX = ".tmp-"


class CheckpointWriteError(WriteError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


def atomic_save(obj: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` so that ``path`` is always either the old or the new file.

    Raises:
        CheckpointWriteError: the write failed (ENOSPC, EACCES, ...); nothing at ``path`` changed
            and the temp file is removed.
    """

    def write(f: BinaryIO) -> None:
        sink = _RecordingWriter(f)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is not None:  # torch reports a failed write as "unexpected pos"
                raise sink.error from None
            raise

    return _replace_durably(
        Path(path), write, CheckpointWriteError, "checkpoint", "; the previous checkpoint is intact"
    )


def atomic_write(path: str | os.PathLike[str], data: bytes, what: str, *, intact: str = "") -> Path:
    """Write ``data`` to ``path`` as :func:`atomic_save` writes a checkpoint: a temp file in the
    same folder, fsynced, renamed over ``path``, the folder fsynced (``config.yaml``, a cut-back
    ``metrics.jsonl``, an exported config).

    Raises:
        WriteError: ``"<path>: could not write <what> (<reason>)<intact>"``; nothing at ``path``
            changed and the temp file is removed.
    """
    return _replace_durably(Path(path), lambda f: f.write(data), WriteError, what, intact)


def _replace_durably(
    path: Path,
    write: Callable[[BinaryIO], object],
    error: type[WriteError],
    what: str,
    intact: str,
) -> Path:
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not isinstance(err, OSError):
            raise
        reason = "disk full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        raise error(f"{path}: could not write {what} ({reason}){intact}") from None
    return path


class _RecordingWriter:
    """The file ``torch.save`` writes through, remembering the OSError of a failed write.

    ``torch.save`` swallows an exception raised by ``write`` (a full disk) and fails later with an
    unrelated ``RuntimeError`` ("unexpected pos ..."); this keeps the real cause.
    """

    def __init__(self, file: Any):
        self._file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self._file.flush()

    def fileno(self) -> int:
        return self._file.fileno()


def remove_stale_temps(folder: str | os.PathLike[str]) -> None:
    """Delete temp files left by a save that was killed mid-write."""
    for stale in Path(folder).glob(_TMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load an m3sgg checkpoint onto the CPU with ``weights_only=True``.

    Raises:
        DataError: missing, truncated, not a checkpoint, carrying code, or another format.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = next(
            (line.strip() for line in str(err).splitlines() if "Unsupported global" in line),
            "unsupported content",
        )
        raise DataError(
            path,
            f"refused to load: it holds more than tensors and plain data ({detail[:160]}); "
            "nothing in it was run",
            field="weights_only",
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise DataError(
            path, f"unreadable checkpoint (truncated or corrupt: {type(err).__name__})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DataError(
            path, f"not an m3sgg checkpoint (expected {FORMAT!r}, found {found!r})", field="format"
        )
    return data


def require_sections(ckpt: dict[str, Any], path: str | os.PathLike[str], *names: str) -> None:
    """Raise a :class:`DataError` naming the first of ``names`` missing or not a mapping
    (``rng``, ``model``, ``optimizer``, ... are dicts in every m3sgg checkpoint)."""
    for name in names:
        if name not in ckpt:
            raise DataError(path, "missing from the checkpoint", field=name)
        if not isinstance(ckpt[name], dict):
            raise DataError(
                path, f"expected a mapping, found {type(ckpt[name]).__name__}", field=name
            )


def capture_rng() -> dict[str, Any]:
    """The state of every random generator training touches (Python, numpy, torch CPU/CUDA)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (restore it last when resuming: loading touches RNGs)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_manifest(config: Config, world_size: int = 1, **extra: str) -> dict[str, Any]:
    """A checkpoint's ``manifest``: package versions, the config's dataset, mode and model (what
    a resume checks), the world size and the time of saving; ``extra`` keys come last."""
    return {
        "versions": versions(),
        "dataset": config.data.dataset,
        "mode": config.data.mode,
        "model": config.model_name,
        "world_size": world_size,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
    }


def versions() -> dict[str, str]:
    """Package versions recorded in every checkpoint's manifest."""
    import ignite

    from m3sgg import __version__

    return {
        "m3sgg": __version__,
        "torch": str(torch.__version__),
        "pytorch-ignite": str(ignite.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }

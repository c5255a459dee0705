"""Several processes, one training: ``ignite.distributed`` launching, and the training worker.

:func:`launch` runs ``fn(local_rank, *args)`` in every process of a job, three ways:

- ``nproc_per_node`` > 1: spawns that many local processes with ``idist.Parallel`` (gloo on
  CPU, nccl on CUDA), meeting through a file in a private temp folder (no TCP listener) unless
  ``master_port`` asks for a TCP rendezvous on 127.0.0.1;
- started by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment): joins the process
  group torchrun describes, spawning nothing;
- otherwise (``nproc_per_node`` None or 1): calls ``fn(0, *args)`` in this process, no group.

:func:`train_worker` is the function ``m3sgg train`` runs in every process: build the trainer
from the config, resume, train with graceful SIGINT/SIGTERM handling, report on rank 0.
:func:`evaluate_worker` evaluates a checkpoint with the test set sharded over the processes.

What each rank does in a distributed run (collectives through ``ignite.distributed``)::

    every rank   seed + rank; same model (DDP broadcasts rank 0's weights: idist.auto_model)
                 its own shard of the training set (ResumableSampler: rank-strided, padded)
                 forward/backward; DDP all-reduces gradients; identical optimizer steps
                 finite-loss check all-reduced (MIN): a NaN anywhere skips the step everywhere
                 stop flag all-reduced (MAX, CPU, own gloo group) per iteration: GracefulStop
                 its shard of the test set; metrics gathered and deduplicated by sample id,
                 so every rank holds the same numbers for LR plateau, best checkpoint, early stop
                 save_checkpoint is collective: per-rank RNG and loss sums are gathered
    rank 0 only  writes checkpoints, metrics.jsonl, config.yaml; logs to the console/visdom

Example::

    from m3sgg.config import config_to_dict, load_config
    from m3sgg.engine.distributed import launch, train_worker

    config = load_config("my.yaml")
    summary = launch(train_worker, config_to_dict(config), nproc_per_node=2)
    print(summary["eval_metrics"]["with/R@20"])
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.utils import setup_logger
from torch.multiprocessing.spawn import ProcessException

from m3sgg.errors import ConfigError, M3sggError

__all__ = [
    "default_backend",
    "evaluate_worker",
    "free_port",
    "launch",
    "launched_by_torchrun",
    "train_worker",
]

logger = logging.getLogger("m3sgg")

_RESULT = "result.pkl"


def default_backend() -> str:
    """``"nccl"`` when CUDA is available, else ``"gloo"``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def launched_by_torchrun() -> bool:
    """True in a process started by ``torchrun`` (or any launcher setting RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (bind to port 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def launch(
    fn: Callable[..., Any],
    *args: Any,
    nproc_per_node: int | None = None,
    backend: str | None = None,
    master_port: int | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``fn(local_rank, *args, **kwargs)`` in every process of a job; return rank 0's result.

    Args:
        fn: a module-level function (spawned processes import it by name); its first argument
            is the local rank.
        nproc_per_node: local processes to spawn; None or 1: none (this process, or torchrun's
            group when started by torchrun).
        backend: ``"gloo"`` or ``"nccl"``; None: :func:`default_backend`.
        master_port: TCP rendezvous port of spawned processes (default: none, a file rendezvous).

    Returns:
        What ``fn`` returned on global rank 0 (spawned processes send it back pickled). Under
        torchrun every process runs this function itself: rank 0 gets its result, the others
        None.

    Raises:
        ConfigError: an unknown backend, nccl without enough GPUs, or ``nproc_per_node`` given
            to a process torchrun started with another number of local processes.
        M3sggError: a user error raised in a spawned process (its message, its exit code).
        torch.multiprocessing.spawn.ProcessException: a spawned process failed otherwise.
    """
    if launched_by_torchrun():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", nproc_per_node or 1))
        if nproc_per_node not in (None, local):
            raise ConfigError(
                f"--nproc-per-node {nproc_per_node}: this process was started by torchrun with "
                f"{local} processes per node; leave --nproc-per-node out under torchrun"
            )
        backend = _check_backend(backend, local)
        _quiet_ignite("ignite.distributed.launcher.Parallel")
        box: list[Any] = []
        with idist.Parallel(backend=backend) as parallel:
            parallel.run(_call_into, fn, box, args, kwargs)
        return box[0] if box else None
    if nproc_per_node is None or nproc_per_node == 1:
        return fn(0, *args, **kwargs)
    if nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be >= 1, got {nproc_per_node}")
    backend = _check_backend(backend, nproc_per_node)
    _quiet_ignite("ignite.distributed.launcher.Parallel")
    with tempfile.TemporaryDirectory(prefix="m3sgg-launch-") as tmp, _forward_signals():
        # one node: rendezvous through a file, so no TCP store listens on any interface;
        # an explicit master_port asks for the classic env:// rendezvous on 127.0.0.1
        where: dict[str, Any] = (
            {"master_port": master_port}
            if master_port is not None
            else {"init_method": f"file://{tmp}/rendezvous"}
        )
        try:
            with idist.Parallel(
                backend=backend, nproc_per_node=nproc_per_node, **where
            ) as parallel:
                parallel.run(_spawned, fn, tmp, args, kwargs)
        except ProcessException:
            _raise_user_error(Path(tmp))
            raise
        result = Path(tmp) / _RESULT
        return pickle.loads(result.read_bytes()) if result.is_file() else None


def _quiet_ignite(name: str) -> None:
    """ignite's launcher and ``auto_model`` log at INFO through their own handlers; make them
    follow the ``ignite`` logger's level (the CLI: WARNING unless --verbose)."""
    if name not in logging.root.manager.loggerDict:
        setup_logger(name, level=logging.getLogger("ignite").getEffectiveLevel())


def _check_backend(backend: str | None, local_processes: int) -> str:
    backend = backend or default_backend()
    if backend not in ("gloo", "nccl"):
        raise ConfigError(f"--backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend not in idist.available_backends():
        raise ConfigError(
            f"backend {backend!r} is not available in this torch build "
            f"(available: {', '.join(idist.available_backends())})"
        )
    if backend == "nccl":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus < local_processes:
            raise ConfigError(
                f"backend 'nccl' needs one GPU per process: {local_processes} processes, "
                f"{gpus} GPU(s) visible; use --backend gloo on CPU"
            )
    return backend


def _call_into(local_rank: int, fn: Callable[..., Any], box: list[Any], args: Any, kw: Any) -> None:
    result = fn(local_rank, *args, **kw)
    if idist.get_rank() == 0:
        box.append(result)


def _spawned(local_rank: int, fn: Callable[..., Any], tmp: str, args: Any, kw: Any) -> None:
    """The body of a spawned process: share the CPU, run ``fn``, send rank 0's result back."""
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun sets it; do as well for N processes
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) // idist.get_nproc_per_node()))
    rank = idist.get_rank()
    try:
        result = fn(local_rank, *args, **kw)
    except M3sggError as err:  # a user error: the parent re-raises it as one line
        _write(Path(tmp) / f"error-{rank}.pkl", (str(err), err.exit_code))
        raise
    if rank == 0:
        _write(Path(tmp) / _RESULT, result)


def _write(path: Path, obj: Any) -> None:
    part = path.with_suffix(".part")
    part.write_bytes(pickle.dumps(obj))
    os.replace(part, path)


def _raise_user_error(tmp: Path) -> None:
    errors = sorted(tmp.glob("error-*.pkl"), key=lambda p: int(p.stem.split("-")[1]))
    if errors:
        message, code = pickle.loads(errors[0].read_bytes())
        err = M3sggError(message)
        err.exit_code = code
        raise err from None


@contextlib.contextmanager
def _forward_signals() -> Iterator[None]:
    """While spawned processes run, pass SIGINT/SIGTERM on to them instead of dying first.

    A Ctrl+C reaches every process of the terminal's group anyway; a SIGTERM sent to this
    process alone (a job scheduler) would not. Each worker decides what a signal means (the
    trainer's graceful stop: finish the step, save, stop on every rank).
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: Any) -> None:
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)  # type: ignore[arg-type]

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------- the worker


def _setup_worker_logging(rank: int, verbose: bool) -> None:
    """Rank 0 logs like the CLI (m3sgg lines on stdout); other ranks only warnings, tagged."""
    handler = logging.StreamHandler(sys.stdout if rank == 0 else sys.stderr)
    tag = "" if rank == 0 else f"[rank {rank}] "
    handler.setFormatter(logging.Formatter(tag + "%(message)s"))
    root = logging.getLogger("m3sgg")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    root.propagate = False
    ignite_level = logging.INFO if verbose and rank == 0 else logging.WARNING
    logging.getLogger("ignite").setLevel(ignite_level)
    _quiet_ignite("ignite.distributed.auto.auto_model")


def train_worker(
    local_rank: int,
    config: dict[str, Any] | Any,
    resume: str | os.PathLike[str] | None = None,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    resume_hint: str = "",
    graceful_stop: bool = True,
    verbose: bool = False,
    ignore_missing_plugins: bool = False,
) -> dict[str, Any] | None:
    """Train one run in this process (one rank of a job, or the only process).

    Builds the trainer with :meth:`Trainer.from_config`, resumes when asked, attaches a
    :class:`GracefulStop` (SIGINT/SIGTERM: finish the step, save ``last.pt``, stop; agreed by all
    ranks), trains, and on rank 0 logs the final evaluation and best checkpoints.

    Args:
        local_rank: given by :func:`launch` (the device is picked from it by ``run.device``).
        config: a config dict (:func:`~m3sgg.config.config_to_dict`, picklable for spawned
            processes) or a :class:`~m3sgg.config.Config`.
        resume: None (a new run), ``"auto"`` (this run's ``last.pt`` when it exists, else a new
            run) or a checkpoint path. Every rank loads the same file.
        run_dir: the run folder (default: ``run.output/run.name``, decided once on rank 0).
        resume_hint: the command that continues the run, for the stop message.
        graceful_stop: install the SIGINT/SIGTERM handlers (main thread only).
        verbose: ignite's own messages too (rank 0).
        ignore_missing_plugins: resume even if the checkpoint holds state of handlers of plugins
            this run does not load (:meth:`Trainer.resume`).

    Returns:
        On rank 0 a summary: ``run_dir``, ``world_size``, ``epoch``, ``iteration``,
        ``stop_reason`` (None when training ran to the end), ``signal`` (the signal number that
        stopped it, or None), ``exit_code`` (0; 130 stopped by a signal; 3 stopped by a handler,
        e.g. the NaN guard), ``eval_metrics`` (the last evaluation, JSON-ready), ``best``
        (metric → checkpoint path) and ``metrics_file``. None on the other ranks.
    """
    import threading

    from m3sgg.config import Config, config_from_dict
    from m3sgg.engine.handlers.console import headline
    from m3sgg.engine.handlers.graceful_stop import GracefulStop
    from m3sgg.engine.trainer import Trainer

    rank, world = idist.get_rank(), idist.get_world_size()
    if world > 1:
        _setup_worker_logging(rank, verbose)
    cfg = config if isinstance(config, Config) else config_from_dict(config, "config")
    overrides: dict[str, Any] = {"run_dir": Path(run_dir)} if run_dir is not None else {}
    trainer = Trainer.from_config(
        cfg, resume=resume, ignore_missing_plugins=ignore_missing_plugins, **overrides
    )
    run = Path(trainer.run_dir) if trainer.run_dir is not None else None
    if trainer.complete:  # a finished run is final: nothing is trained, nothing written
        state = trainer.engine.state
        if rank == 0:
            logger.info(
                "%s is complete: %d of %d epochs trained; nothing to do "
                "(raise --epochs to train it further)",
                run,
                state.epoch,
                cfg.train.epochs,
            )
        return _summary(trainer, state, run, world, None) if rank == 0 else None
    if world > 1:
        logger.info("run folder: %s (%d processes, backend %s)", run, world, idist.backend())
    else:
        logger.info("run folder: %s", run)
    if rank == 0:
        from m3sgg.engine.builders import describe_model

        logger.info(describe_model(trainer.model, trainer.optimizer, trainer.config))

    stop = None
    if graceful_stop:
        save = trainer.save_checkpoint if trainer.checkpoint_dir is not None else None
        stop = GracefulStop(save, resume_hint)
        if threading.current_thread() is threading.main_thread():
            stop.install()
        trainer.handlers.add(stop)
    try:
        state = trainer.train_loop()
    finally:
        if stop is not None:
            stop.uninstall()
    if rank != 0:
        return None
    metrics = getattr(state, "eval_metrics", None)
    if metrics:
        logger.info("final evaluation: %s", headline(metrics))
    return _summary(trainer, state, run, world, stop)


def _summary(trainer: Any, state: Any, run: Path | None, world: int, stop: Any) -> dict[str, Any]:
    """What :func:`train_worker` returns on rank 0 (and logs: best checkpoints, metrics file)."""
    from m3sgg.engine.handlers.metrics_file import jsonable

    reason = getattr(state, "stop_reason", None)
    metrics = getattr(state, "eval_metrics", None)
    best: dict[str, str | None] = {}
    if "best_checkpoint" in trainer.handlers:
        handler = trainer.handlers.get("best_checkpoint")
        for metric in handler.metrics:  # type: ignore[attr-defined]
            path = handler.best(metric)  # type: ignore[attr-defined]
            best[metric] = str(path) if path is not None else None
    for metric, path in best.items():
        logger.info("best %s: %s", metric, path)
    metrics_file = run / "metrics.jsonl" if run is not None else None
    logger.info("metrics: %s", metrics_file)
    signum = stop.signal if stop is not None else None
    return {
        "run_dir": str(run) if run is not None else None,
        "world_size": world,
        "epoch": state.epoch,
        "iteration": state.iteration,
        "stop_reason": reason,
        "signal": signum,
        "exit_code": 0 if not reason else (130 if signum is not None else 3),
        "eval_metrics": jsonable(metrics) if metrics else None,
        "best": best,
        "metrics_file": str(metrics_file) if metrics_file is not None else None,
    }


def evaluate_worker(
    local_rank: int,
    checkpoint: str | os.PathLike[str],
    overrides: list[str] | None = None,
    split: str | None = None,
    *,
    verbose: bool = False,
) -> dict[str, Any] | None:
    """:func:`~m3sgg.engine.builders.evaluate_checkpoint` in this process: with several
    processes each rank evaluates its shard of the split (padded to equal shards) and the
    metrics are gathered and deduplicated by video id, so they equal a one-process evaluation.

    Returns:
        The flat metrics on rank 0 (every rank computes the same), None on the others.
    """
    from m3sgg.engine.builders import evaluate_checkpoint

    rank = idist.get_rank()
    if idist.get_world_size() > 1:
        _setup_worker_logging(rank, verbose)
    metrics = evaluate_checkpoint(checkpoint, overrides, split)
    return metrics if rank == 0 else None

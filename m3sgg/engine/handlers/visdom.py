"""``visdom``: live plots of a run in a visdom server, without ever slowing or stopping training.

One visdom env per run (named after the run folder). The x axis of every curve is the training
iteration (``engine.state.iteration``), so curves logged every N iterations and curves logged at
each evaluation share one axis, whether evaluation runs per epoch or every N iterations.

=======================  ====================  ===================================================
window                   when                  what
=======================  ====================  ===================================================
``loss``                 every ``every`` its   the total loss and each loss term
``lr``                   every ``every`` its   the learning rate of each parameter group
``loss_mean``            each evaluation       mean training losses since the previous evaluation
``<c>_R``, ``<c>_mR``    each evaluation       "<c>: R@K" / "<c>: mR@K" in %, one line per K
``<c>_per_predicate``    each evaluation       R@K (%) of each of the 26 AG predicates, bars per
                                               K, replaced by every new evaluation
=======================  ====================  ===================================================

``<c>`` is the constraint (``with``, ``semi``, ``no``) of metric keys ``"<c>/R@K"`` (EASG runs
have ``with``/``no`` R@K curves and no bars); keys without a constraint give windows ``R``/``mR``.

Training never depends on the server: a server that is absent at the start or dies mid-run gives
one warning, plots are sent by a background worker (ignite's :class:`VisdomLogger` executor)
with short HTTP timeouts, at most ``max_pending`` sends wait in its queue (further training
points are dropped, counted in ``dropped``), and a reconnection is tried at most every
``retry_every`` seconds. Evaluations made while the server was away are kept and sent when it
answers again; training-loss points of that time are not. ``metrics.jsonl`` is written by its own
handler and is unaffected. ``m3sgg plot RUN_DIR`` redraws the evaluation windows from it.

ignite's ``OutputHandler``/``OptimizerParamsHandler`` are not used: they wait for the server in
the training thread (the first point of a window, and an env save after every call) and name
windows at random, so a restarted server could not be continued.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests
from ignite.engine import Engine, Events
from ignite.engine.events import RemovableEventHandle
from ignite.handlers.visdom_logger import VisdomLogger

from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import Handler
from m3sgg.engine.handlers.metrics_file import evaluation_record
from m3sgg.errors import ConfigError, M3sggError
from m3sgg.vocab import AG_PREDICATES

__all__ = [
    "Table",
    "VisdomPlotter",
    "VisdomUnavailable",
    "draw_evaluations",
    "evaluation_tables",
    "open_logger",
    "parse_url",
    "replay",
]

logger = logging.getLogger("m3sgg")

_CURVE = re.compile(r"^(?:(?P<constraint>[^/]+)/)?(?P<name>[A-Za-z]+)@(?P<k>\d+)$")
_PER_PREDICATE = re.compile(r"^(?:(?P<constraint>[^/]+)/)?per_predicate$")


class VisdomUnavailable(M3sggError, ConnectionError):
    """No visdom server answered at the URL (within the timeout)."""


class _QuietVisdom(logging.Filter):
    """Drop the visdom client's per-connection chatter (session set-up, no incoming socket)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Setting up a new session", "Without the incoming socket"))


logging.getLogger("visdom").addFilter(_QuietVisdom())


class _TimeoutSession(requests.Session):
    """A requests session whose every request has a timeout (visdom's client sets none)."""

    def __init__(self, timeout: float, like: requests.Session | None = None):
        super().__init__()
        self.timeout = timeout
        if like is not None:
            self.cookies.update(like.cookies)
            self.proxies.update(like.proxies)

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        return super().request(*args, **kwargs)


def parse_url(url: str) -> tuple[str, int, str]:
    """``"http://host:8097/base"`` → ``("http://host", 8097, "/base")`` (port 8097 by default).

    Raises:
        ConfigError: not an http(s) URL with a host.
    """
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port or 8097
    except ValueError as err:
        raise ConfigError(f"visdom URL {url!r}: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"visdom URL {url!r}: expected http://HOST[:PORT][/BASE]")
    base = parts.path.rstrip("/") or "/"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}", port, base


def open_logger(url: str, env: str, timeout: float = 2.0, num_workers: int = 1) -> VisdomLogger:
    """Connect ignite's :class:`VisdomLogger` to ``url`` and env ``env``, waiting at most ~timeout.

    A TCP probe fails fast when nothing listens; the logger's own handshake (which has no
    timeout) runs in a helper thread so that a server that accepts but never answers cannot hang
    the caller. Afterwards every request of the client times out after ``timeout`` seconds.

    Raises:
        VisdomUnavailable: nothing answered.
        ConfigError: a malformed URL.
    """
    server, port, base = parse_url(url)
    host = server.split("://", 1)[1].strip("[]")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise VisdomUnavailable(f"no visdom server at {url}: {err.strerror or err}") from None
    result: dict[str, Any] = {}

    def build() -> None:
        try:
            result["logger"] = VisdomLogger(
                server=server,
                port=port,
                num_workers=num_workers,
                raise_exceptions=True,
                base_url=base,
                env=env,
                use_incoming_socket=False,
            )
        except Exception as err:  # the handshake's ConnectionError/RuntimeError, reported below
            result["error"] = err

    thread = threading.Thread(target=build, name="m3sgg-visdom-connect", daemon=True)
    thread.start()
    thread.join(timeout * 2)
    if "logger" not in result:
        reason = result.get("error") or f"no answer within {timeout * 2:g} s"
        raise VisdomUnavailable(f"visdom server at {url} did not answer: {reason}")
    visdom_logger: VisdomLogger = result["logger"]
    vis = visdom_logger.vis
    vis._session = _TimeoutSession(timeout, like=vis._session)
    return visdom_logger


# ---------------------------------------------------------------------------- what is drawn


@dataclass
class Table:
    """The points of one line window: shared x values and one y column per trace (NaN: none)."""

    title: str
    ylabel: str
    xs: list[float] = field(default_factory=list)
    columns: dict[str, list[float]] = field(default_factory=dict)

    def add(self, x: float, values: dict[str, float]) -> None:
        """One row at ``x``; traces absent from ``values`` get NaN there."""
        for name in values:
            if name not in self.columns:
                self.columns[name] = [math.nan] * len(self.xs)
        self.xs.append(float(x))
        for name, column in self.columns.items():
            column.append(_finite(values.get(name, math.nan)))

    def opts(self, legend: Sequence[str] | None = None) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "title": self.title,
            "xlabel": "iteration",
            "ylabel": self.ylabel,
            "showlegend": True,
        }
        if legend is not None:
            opts["legend"] = list(legend)
        return opts

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``X`` and ``Y`` of shape (points, traces), as ``Visdom.line`` takes them."""
        y = np.array(list(self.columns.values()), dtype=float).T
        x = np.tile(np.array(self.xs, dtype=float)[:, None], (1, y.shape[1]))
        return x, y


def _scalar(value: Any) -> float | None:
    """A number or one-element tensor as a float; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    numel = getattr(value, "numel", None)
    if numel is not None and numel() == 1:
        return float(value)
    return None


def _finite(value: Any) -> float:
    value = math.nan if value is None else float(value)
    return value if math.isfinite(value) else math.nan


def _window_id(constraint: str | None, what: str) -> str:
    return f"{constraint}_{what}" if constraint else what


def _curve_order(trace: str) -> tuple[str, int]:
    name, _, k = trace.partition("@")
    return name, int(k) if k.isdigit() else 0


def evaluation_tables(records: Iterable[dict[str, Any]], lr: bool = False) -> dict[str, Table]:
    """Line windows of ``metrics.jsonl``-style records: ``loss_mean``, ``<c>_R``, ``<c>_mR``.

    Args:
        records: ``{"iteration", "losses", "metrics", "lr"}`` dicts (the metrics file's lines).
        lr: also a ``lr`` window from each record's learning rate.
    """
    tables: dict[str, Table] = {}
    for record in records:
        x = record["iteration"]
        curves: dict[str, dict[str, float]] = {}
        for key, value in record.get("metrics", {}).items():
            match = _CURVE.match(key)
            if match is None or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            constraint, name = match["constraint"], match["name"]
            win = _window_id(constraint, name)
            if win not in tables:
                title = f"{constraint}: {name}@K" if constraint else f"{name}@K"
                tables[win] = Table(title, f"{name}@K (%)")
            curves.setdefault(win, {})[f"{name}@{match['k']}"] = 100.0 * value
        for win, values in curves.items():
            tables[win].add(x, dict(sorted(values.items(), key=lambda kv: _curve_order(kv[0]))))
        losses = record.get("losses") or {}
        if losses:
            table = tables.setdefault(
                "loss_mean", Table("training loss, mean between evaluations", "loss")
            )
            table.add(x, _loss_first(losses))
        if lr and record.get("lr") is not None:
            tables.setdefault("lr", Table("learning rate", "lr")).add(x, {"group 0": record["lr"]})
    return tables


def _loss_first(values: dict[str, Any]) -> dict[str, float]:
    """The total ``loss`` first, then the terms in their own order."""
    ordered = {"loss": values["loss"]} if "loss" in values else {}
    ordered.update({k: v for k, v in values.items() if k != "loss"})
    return {k: float(v) for k, v in ordered.items()}


def per_predicate_bars(record: dict[str, Any]) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """``<c>_per_predicate`` bar windows of one record: window id → (X (predicates, Ks), opts)."""
    bars = {}
    for key, value in record.get("metrics", {}).items():
        match = _PER_PREDICATE.match(key)
        if match is None or not isinstance(value, dict) or not value:
            continue
        ks = sorted(value, key=int)
        x = np.array([[_finite(v) for v in value[k]] for k in ks], dtype=float).T * 100.0
        x = np.nan_to_num(x, nan=0.0)
        names = list(AG_PREDICATES) if x.shape[0] == len(AG_PREDICATES) else None
        constraint = match["constraint"]
        where = f"{constraint}: " if constraint else ""
        opts: dict[str, Any] = {
            "title": f"{where}recall per predicate, iteration {record['iteration']}",
            "legend": [f"R@{k}" for k in ks],
            "ylabel": "R@K (%)",
            "stacked": False,
            "width": 900,  # room for the 26 predicate names
            "height": 420,
            "marginbottom": 120,
        }
        if names is not None:
            opts["rownames"] = names
        bars[_window_id(constraint, "per_predicate")] = (x, opts)
    return bars


def draw_evaluations(
    vis: Any, records: Sequence[dict[str, Any]], windows: _Windows | None = None
) -> None:
    """Evaluation windows of ``records``; bars from the last record.

    With ``windows`` (the live plotter's trace book-keeping) the points are appended to existing
    windows; without, each window is replaced by exactly these points (a replay).
    """
    if not records:
        return
    for win, table in evaluation_tables(records, lr=windows is None).items():
        if windows is None:
            x, y = table.arrays()
            vis.line(X=x, Y=y, win=win, opts=table.opts(legend=list(table.columns)))
        else:
            windows.append(vis, win, table)
    for win, (x, opts) in per_predicate_bars(records[-1]).items():
        vis.bar(X=x, win=win, opts=opts)


def replay(vis: Any, records: Sequence[dict[str, Any]]) -> list[str]:
    """Redraw a run's evaluation windows from its metrics records; returns the window ids."""
    draw_evaluations(vis, records)
    vis.save([vis.env])
    return sorted({*evaluation_tables(records, lr=True), *per_predicate_bars(records[-1])})


class _Windows:
    """The traces of the windows this connection created, to append to them in one request.

    A window new on the server is created with all its traces, in order; later rows covered by
    those traces go in one ``line(update="append")`` (traces matched by position). A window that
    was already there (an env reloaded by a restarted server, a resumed run) and rows with new
    traces are appended trace by trace, by name: the server adds a trace it does not have.
    """

    def __init__(self) -> None:
        self.traces: dict[str, list[str]] = {}  # windows created here → their traces, in order
        self.foreign: set[str] = set()  # windows found on the server

    def append(self, vis: Any, win: str, table: Table) -> None:
        known = self.traces.get(win)
        if known is None and win not in self.foreign:
            if vis.win_exists(win) is False:
                x, y = table.arrays()
                vis.line(X=x, Y=y, win=win, opts=table.opts(legend=list(table.columns)))
                self.traces[win] = list(table.columns)
                return
            self.foreign.add(win)
        if known is not None and set(table.columns) <= set(known):
            for name in known:
                table.columns.setdefault(name, [math.nan] * len(table.xs))
            table.columns = {name: table.columns[name] for name in known}
            x, y = table.arrays()
            vis.line(X=x, Y=y, win=win, update="append", opts=table.opts(legend=known))
            return
        for name, column in table.columns.items():
            vis.line(
                X=np.array(table.xs),
                Y=np.array(column),
                win=win,
                name=name,
                update="append",
                opts=table.opts(),
            )
            if known is not None and name not in known:
                known.append(name)


# ---------------------------------------------------------------------------- the handler


class VisdomPlotter(Handler):
    """Plot losses, learning rate and evaluations of the train engine to a visdom server.

    Events: STARTED (connect), ITERATION_COMPLETED(every=``every``) (losses, lr),
    EVALUATION_COMPLETED (recall curves, per-predicate bars, mean losses), COMPLETED (send what
    is queued, save the env on the server). State: none worth resuming (a resumed run appends to
    the same env).

    Args:
        url: the visdom server, ``http://127.0.0.1:8097``.
        env: the visdom env (one per run: the trainer passes the run folder's name).
        optimizer: whose param groups' learning rates are plotted (None: no lr window).
        every: plot training losses every this many iterations (reading a loss syncs the host).
        timeout: seconds for the connection probe and for each HTTP request.
        retry_every: seconds between reconnection attempts while the server is away.
        max_pending: sends allowed to wait in the background queue before training points drop.
        num_workers: 1: send from ignite's background executor; 0: send in the training thread.
        clock: seconds for the retry schedule (tests pass a fake one).

    Example::

        trainer.handlers.add(VisdomPlotter("http://127.0.0.1:8097", env="run1", every=20))
    """

    name = "visdom"
    priority = 960

    def __init__(
        self,
        url: str,
        env: str,
        optimizer: Any = None,
        every: int = 10,
        *,
        timeout: float = 2.0,
        retry_every: float = 30.0,
        max_pending: int = 64,
        num_workers: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ):
        parse_url(url)
        if not isinstance(every, int) or every < 1:
            raise ConfigError(
                f"visdom: every must be a positive number of iterations, got {every!r}"
            )
        if num_workers not in (0, 1):
            raise ConfigError(
                f"visdom: num_workers must be 0 or 1 (ordered sends), got {num_workers}"
            )
        if timeout <= 0 or retry_every < 0 or max_pending < 1:
            raise ConfigError("visdom: timeout > 0, retry_every >= 0 and max_pending >= 1 needed")
        self.url = url
        self.env = env
        self.optimizer = optimizer
        self.every = every
        self.timeout = timeout
        self.retry_every = retry_every
        self.max_pending = max_pending
        self.num_workers = num_workers
        self.clock = clock
        #: connection attempts made (each at most ~2 x timeout seconds of the training thread)
        self.connect_attempts = 0
        #: sends that failed on the network (each one opens an outage)
        self.failures = 0
        #: training points not sent: the queue was full, or no server was connected
        self.dropped = 0
        self._logger: VisdomLogger | None = None
        self._generation = 0
        self._down_generation = -1  # set by a failed send of that connection
        self._down_reason = ""
        self._outage = False
        self._next_attempt = 0.0
        self._pending = 0
        self._lock = threading.Lock()
        self._evaluations: deque[dict[str, Any]] = deque()
        self._windows = _Windows()
        self._bug_logged = False

    def events(self) -> list[Any]:
        return [event for event, _ in self._routes()]

    def _routes(self) -> list[tuple[Any, Callable[[Engine], None]]]:
        return [
            (Events.STARTED, self.started),
            (Events.ITERATION_COMPLETED(every=self.every), self.iteration_completed),
            (M3sggEvents.EVALUATION_COMPLETED, self.evaluation_completed),
            (Events.COMPLETED, self.completed),
        ]

    def attach(self, engine: Engine) -> list[RemovableEventHandle]:
        """One method per event: an evaluation fired from inside ITERATION_COMPLETED changes
        ``engine.last_event_name`` before this handler's turn at that iteration comes."""
        return [engine.add_event_handler(event, method) for event, method in self._routes()]

    def __call__(self, engine: Engine) -> None:
        """Do what ``engine.last_event_name`` calls for (:meth:`attach` binds the methods)."""
        for event, method in self._routes():
            if engine.last_event_name == event:
                method(engine)
                return

    @property
    def waiting_evaluations(self) -> int:
        """Evaluations not yet on the server (sent when it answers again)."""
        return len(self._evaluations)

    @property
    def connected(self) -> bool:
        """A connection is open and none of its sends has failed."""
        return self._logger is not None and self._down_generation != self._generation

    def started(self, engine: Engine) -> None:
        """Connect (or warn once that no server answers)."""
        self._ensure_connected()

    def iteration_completed(self, engine: Engine) -> None:
        """Queue this iteration's losses and learning rates."""
        if self._ensure_connected():
            self._submit(self._training_job(engine), droppable=True)
        else:
            self.dropped += 1

    def evaluation_completed(self, engine: Engine) -> None:
        """Keep the evaluation's record and queue every one the server has not got yet."""
        self._evaluations.append(self._record(engine))
        if self._ensure_connected():
            self._submit(self._send_evaluations, droppable=False)

    def completed(self, engine: Engine) -> None:
        """Send what is queued, save the env, stop the worker."""
        self.close()

    # ------------------------------------------------------------------ what each event sends

    def _record(self, engine: Engine) -> dict[str, Any]:
        return evaluation_record(engine, self.optimizer)

    def _training_job(self, engine: Engine) -> Callable[[Any, _Windows], None]:
        x = engine.state.iteration
        output = engine.state.output
        values = output if isinstance(output, dict) else {"loss": output}
        losses = {k: _scalar(v) for k, v in values.items() if k != "finite"}
        loss_table = Table(f"training loss (every {self.every} iterations)", "loss")
        loss_table.add(x, _loss_first({k: v for k, v in losses.items() if v is not None}))
        tables = {"loss": loss_table}
        if self.optimizer is not None:
            lr_table = Table("learning rate", "lr")
            lr_table.add(
                x, {f"group {i}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
            )
            tables["lr"] = lr_table

        def job(vis: Any, windows: _Windows) -> None:
            for win, table in tables.items():
                windows.append(vis, win, table)

        return job

    def _send_evaluations(self, vis: Any, windows: _Windows) -> None:
        """Send every evaluation not yet on the server (the new one, any missed), save the env.

        The worker may run this after later evaluations were queued: it then sends them too, and
        the jobs of those find nothing left but still save (the env file keeps up).
        """
        records = list(self._evaluations)
        draw_evaluations(vis, records, windows)
        vis.save([self.env])
        with self._lock:
            for record in records:
                if self._evaluations and self._evaluations[0] is record:
                    self._evaluations.popleft()

    # ------------------------------------------------------------------ connection

    def _ensure_connected(self) -> bool:
        """True when sends may go out; reconnects at most every ``retry_every`` seconds."""
        if self._logger is not None:
            if self.connected:
                return True
            self._disconnect()
        now = self.clock()
        if now < self._next_attempt:
            return False
        self.connect_attempts += 1
        try:
            self._logger = open_logger(self.url, self.env, self.timeout, self.num_workers)
        except VisdomUnavailable as err:
            self._next_attempt = self.clock() + self.retry_every
            self._begin_outage(str(err))
            return False
        self._generation += 1
        self._windows = _Windows()
        if self._outage:
            logger.info(
                "visdom: %s answers again; plotting resumes (%d evaluations to send)",
                self.url,
                len(self._evaluations),
            )
            self._outage = False
            if self._evaluations:
                self._submit(self._send_evaluations, droppable=False)
        return True

    def _begin_outage(self, reason: str) -> None:
        if not self._outage:
            logger.warning(
                "visdom: %s; training continues without plots, retrying every %g s",
                reason,
                self.retry_every,
            )
        self._outage = True

    def _disconnect(self) -> None:
        """Drop a connection whose send failed; queued sends are cancelled."""
        old, self._logger = self._logger, None
        if old is not None:
            old.executor.shutdown(wait=False, cancel_futures=True)
        self._next_attempt = self.clock() + self.retry_every
        self._begin_outage(f"lost the server at {self.url} ({self._down_reason})")

    def _submit(self, job: Callable[[Any, _Windows], None], droppable: bool) -> None:
        visdom_logger, windows, generation = self._logger, self._windows, self._generation
        assert visdom_logger is not None
        with self._lock:
            if droppable and self._pending >= self.max_pending:
                self.dropped += 1
                return
            self._pending += 1

        def run() -> None:
            try:
                if self._down_generation == generation:
                    return  # this connection already failed: do not knock again
                job(visdom_logger.vis, windows)
            except OSError as err:  # ConnectionError, timeouts, refused: the server is away
                with self._lock:
                    self.failures += 1
                    self._down_reason = str(err) or type(err).__name__
                    self._down_generation = generation
            except Exception:  # a bug in plotting must not stop training; said once, loudly
                if not self._bug_logged:
                    self._bug_logged = True
                    logger.exception("visdom: plotting failed (a bug in m3sgg; please report it)")
            finally:
                with self._lock:
                    self._pending -= 1

        future = visdom_logger.executor.submit(run)
        if hasattr(future, "add_done_callback"):  # a real future: it may be cancelled unrun
            future.add_done_callback(
                lambda f: self._cancelled(droppable) if f.cancelled() else None
            )

    def _cancelled(self, droppable: bool) -> None:
        with self._lock:
            self._pending -= 1
            self.dropped += int(droppable)

    # ------------------------------------------------------------------ end

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until queued sends are done (at most ``timeout`` s, default 2 x timeout)."""
        deadline = time.monotonic() + (2 * self.timeout if timeout is None else timeout)
        while self._pending > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._pending == 0

    def close(self) -> None:
        """Send what is queued (waiting a bounded time) and stop the background worker.

        The env stays on the server (ignite's ``VisdomLogger.close`` would delete its windows).
        """
        if self._logger is not None and self.connected:
            self._submit(self._send_evaluations, droppable=False)
        self.flush()
        if self._logger is not None:
            self._logger.executor.shutdown(wait=False, cancel_futures=True)
            self._logger = None

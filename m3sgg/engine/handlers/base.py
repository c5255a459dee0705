"""The handler base class and the ordered list that attaches handlers to an engine.

ignite runs the handlers of one event in registration order and has no priorities. m3sgg makes
the order explicit: every :class:`Handler` has a ``name`` and a ``priority`` (lower runs first,
ties keep insertion order), and a :class:`HandlerList` attaches its handlers to the engine in that
order, re-attaching when one is added, moved or removed. ``describe()`` prints the table of what
runs at each event, the way mmengine prints its hook table, for bug reports.

Writing a handler::

    class PrintLoss(Handler):
        name = "print_loss"
        priority = 60

        def events(self):
            return [Events.ITERATION_COMPLETED(every=100)]

        def __call__(self, engine):
            print(engine.state.iteration, float(engine.state.output["loss"]))

    trainer.handlers.add(PrintLoss(), before="console")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ignite.engine import Engine
from ignite.engine.events import CallableEventWithFilter, RemovableEventHandle

from m3sgg.errors import ConfigError

__all__ = ["FunctionHandler", "Handler", "HandlerList", "watched_metric"]


class Handler:
    """One small job at one or more events of an engine.

    Subclasses set ``name`` and ``priority`` and implement :meth:`events` and ``__call__``.
    A handler holding state worth resuming implements ``state_dict``/``load_state_dict``; the
    trainer puts it in every checkpoint under its name.
    """

    name: str = "handler"
    priority: int = 50

    def events(self) -> list[Any]:
        """The ignite events (possibly filtered, ``Events.EPOCH_COMPLETED(every=2)``) it runs on."""
        raise NotImplementedError(f"{type(self).__name__} must declare its events()")

    def __call__(self, engine: Engine) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(engine)")

    def attach(self, engine: Engine) -> list[RemovableEventHandle]:
        """Register on every event of :meth:`events`; returns the handles that detach it."""
        return [engine.add_event_handler(event, self) for event in self.events()]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, priority={self.priority})"


class FunctionHandler(Handler):
    """Wrap a plain ``fn(engine)`` as a named, ordered handler (for plugins and scripts)."""

    def __init__(
        self, fn: Callable[[Engine], Any], events: list[Any], name: str, priority: int = 50
    ):
        self.fn = fn
        self._events = list(events)
        self.name = name
        self.priority = priority

    def events(self) -> list[Any]:
        return self._events

    def __call__(self, engine: Engine) -> None:
        self.fn(engine)


class HandlerList:
    """The ordered handlers of one engine.

    Args:
        engine: the ignite engine they attach to.
        label: how :meth:`describe` titles the table (``"train"``, ``"eval"``).
    """

    def __init__(self, engine: Engine, label: str = "engine"):
        self.engine = engine
        self.label = label
        self._handlers: list[Handler] = []
        self._handles: list[RemovableEventHandle] = []

    def add(
        self,
        handler: Handler,
        *,
        before: str | None = None,
        after: str | None = None,
        priority: int | None = None,
    ) -> Handler:
        """Insert ``handler``: just before/after a named one (taking its priority), or by priority.

        Raises:
            ValueError: duplicate name, unknown anchor, or both ``before`` and ``after`` given.
        """
        if handler.name in self.names():
            raise ValueError(
                f"a handler named {handler.name!r} is already attached to {self.label}"
            )
        if before is not None and after is not None:
            raise ValueError("give at most one of before= and after=")
        if priority is not None:
            handler.priority = priority
        anchor = before or after
        if anchor is not None:
            index = self._index(anchor)
            handler.priority = self._handlers[index].priority
            self._handlers.insert(index if before else index + 1, handler)
        else:
            index = sum(1 for h in self._handlers if h.priority <= handler.priority)
            self._handlers.insert(index, handler)
        self._reattach()
        return handler

    def remove(self, name: str) -> Handler:
        """Detach and return the handler called ``name``."""
        handler = self._handlers.pop(self._index(name))
        self._reattach()
        return handler

    def replace(self, name: str, handler: Handler) -> Handler:
        """Put ``handler`` where ``name`` was (same position and priority); returns the old one."""
        index = self._index(name)
        old = self._handlers[index]
        handler.priority = old.priority
        self._handlers[index] = handler
        self._reattach()
        return old

    def get(self, name: str) -> Handler:
        return self._handlers[self._index(name)]

    def names(self) -> list[str]:
        return [h.name for h in self._handlers]

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[Handler]:
        return iter(list(self._handlers))

    def __len__(self) -> int:
        return len(self._handlers)

    def _index(self, name: str) -> int:
        for i, h in enumerate(self._handlers):
            if h.name == name:
                return i
        raise ValueError(f"no handler named {name!r} on {self.label}; attached: {self.names()}")

    def _reattach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = [handle for h in self._handlers for handle in h.attach(self.engine)]

    def describe(self) -> str:
        """A table of the handlers per event (in loop order), each in the order it runs."""
        rows: dict[str, list[tuple[Handler, str]]] = {}
        for handler in self._handlers:
            for event in handler.events():
                name, note = _event_label(event)
                rows.setdefault(name, []).append((handler, note))
        ordered = sorted(rows, key=lambda n: _LOOP_ORDER.index(n) if n in _LOOP_ORDER else 99)
        lines = [f"{self.label} engine"]
        if not rows:
            lines.append("  (no handlers)")
        width = max((len(k) for k in rows), default=0)
        for event in ordered:
            for i, (h, note) in enumerate(rows[event]):
                label = event if i == 0 else ""
                lines.append(
                    f"  {label:<{width}}  {i + 1:>2}. {h.name:<18} priority {h.priority:>4}  "
                    f"{type(h).__name__}{note}"
                )
        return "\n".join(lines)


_LOOP_ORDER = [
    "STARTED",
    "EPOCH_STARTED",
    "GET_BATCH_STARTED",
    "GET_BATCH_COMPLETED",
    "ITERATION_STARTED",
    "FORWARD_COMPLETED",
    "ITERATION_COMPLETED",
    "EPOCH_COMPLETED",
    "EVALUATION_COMPLETED",
    "CHECKPOINT_SAVED",
    "COMPLETED",
    "EXCEPTION_RAISED",
]


def _event_label(event: Any) -> tuple[str, str]:
    """``(EVENT_NAME, " (every 2)")`` for a (possibly filtered) ignite event."""
    name = getattr(event, "name", str(event)).upper()
    if isinstance(event, CallableEventWithFilter) and event.filter is not None:
        for cell in getattr(event.filter, "__closure__", None) or ():
            if isinstance(cell.cell_contents, int) and cell.cell_contents > 1:
                return name, f" (every {cell.cell_contents})"
        return name, " (filtered)"
    return name, ""


def watched_metric(metrics: Mapping[str, Any], metric: str, handler: str) -> float:
    """``metrics[metric]`` as a float, for a handler that watches an evaluation metric.

    Raises:
        ConfigError: the evaluation does not report ``metric`` (one line naming ``handler`` and
            the metrics there are).
    """
    if metric not in metrics:
        raise ConfigError(
            f"{handler} watches {metric!r}, which the evaluation does not report; "
            f"available: {sorted(k for k in metrics if '/' in k)}"
        )
    return float(metrics[metric])

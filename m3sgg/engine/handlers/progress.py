"""``progress_bar``: ignite's tqdm ``ProgressBar`` over each epoch, as an ordered handler."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine
from ignite.engine.events import RemovableEventHandle
from ignite.handlers import ProgressBar as IgniteProgressBar

from m3sgg.engine.handlers.base import Handler

__all__ = ["ProgressBar"]


class ProgressBar(Handler):
    """Wraps :class:`ignite.handlers.ProgressBar` showing the step's total loss."""

    name = "progress_bar"
    priority = 950

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs
        self.bar: IgniteProgressBar | None = None

    def events(self) -> list[Any]:
        return ["(ProgressBar: ITERATION_COMPLETED, EPOCH_COMPLETED)"]

    def attach(self, engine: Engine) -> list[RemovableEventHandle]:
        """ignite's bar registers its own events; record the handles it creates to detach later."""
        self.bar = IgniteProgressBar(persist=False, **self.kwargs)
        handles: list[RemovableEventHandle] = []
        register = engine.add_event_handler

        def recording(*args: Any, **kwargs: Any) -> RemovableEventHandle:
            handle = register(*args, **kwargs)
            handles.append(handle)
            return handle

        engine.add_event_handler = recording  # type: ignore[method-assign]
        try:
            self.bar.attach(engine, output_transform=lambda out: {"loss": float(out["loss"])})
        finally:
            del engine.add_event_handler
        return handles

    def __call__(self, engine: Engine) -> None:  # the wrapped bar does the work
        pass

"""HandlerList: explicit priorities, before/after/replace/remove, and the describe() table."""

from __future__ import annotations

import pytest
from ignite.engine import Engine, Events

from m3sgg.engine.handlers.base import FunctionHandler, HandlerList


def recorder(calls: list[str], name: str, priority: int = 50, events=None) -> FunctionHandler:
    return FunctionHandler(
        lambda e: calls.append(name), events or [Events.ITERATION_COMPLETED], name, priority
    )


def test_priorities_and_anchors_decide_the_run_order():
    calls: list[str] = []
    engine = Engine(lambda e, b: None)
    handlers = HandlerList(engine, "train")
    handlers.add(recorder(calls, "b", 20))
    handlers.add(recorder(calls, "a", 10))
    handlers.add(recorder(calls, "c", 20))  # ties keep insertion order
    handlers.add(recorder(calls, "x"), before="b")
    handlers.add(recorder(calls, "y"), after="c")
    engine.run([0], max_epochs=1)
    assert calls == ["a", "x", "b", "c", "y"]
    assert handlers.get("x").priority == 20


def test_replace_and_remove_reattach():
    calls: list[str] = []
    engine = Engine(lambda e, b: None)
    handlers = HandlerList(engine)
    for name, priority in (("first", 1), ("second", 2), ("third", 3)):
        handlers.add(recorder(calls, name, priority))
    handlers.replace("second", recorder(calls, "new"))
    handlers.remove("first")
    engine.run([0], max_epochs=1)
    assert calls == ["new", "third"]
    assert handlers.names() == ["new", "third"] and handlers.get("new").priority == 2


def test_errors():
    handlers = HandlerList(Engine(lambda e, b: None))
    handlers.add(recorder([], "one"))
    with pytest.raises(ValueError, match="already attached"):
        handlers.add(recorder([], "one"))
    with pytest.raises(ValueError, match="no handler named 'nope'"):
        handlers.add(recorder([], "two"), before="nope")
    with pytest.raises(ValueError, match="at most one"):
        handlers.add(recorder([], "three"), before="one", after="one")


def test_describe_lists_events_in_loop_order_with_filters():
    handlers = HandlerList(Engine(lambda e, b: None), "train")
    handlers.add(recorder([], "late", 90, [Events.EPOCH_COMPLETED, Events.STARTED]))
    handlers.add(recorder([], "often", 10, [Events.ITERATION_COMPLETED(every=5)]))
    text = handlers.describe()
    assert text.index("STARTED") < text.index("ITERATION_COMPLETED") < text.index("EPOCH_COMPLETED")
    assert "often" in text and "(every 5)" in text

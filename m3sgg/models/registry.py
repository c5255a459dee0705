"""Model registry: names → factories, with the datasets and modes each model supports.

Why: the engine and the CLI build models by name from the config and must refuse an unsupported
(dataset, mode) before any training starts, with a message that says what *is* supported. Built-in
models and plugins register the same way::

    from m3sgg.models import SceneGraphModel, register_model

    @register_model("my_model", datasets={"action_genome"}, modes={"predcls", "sgcls"})
    class MyModel(SceneGraphModel):
        def __init__(self, *, dataset: str, mode: str, hidden: int = 64): ...

    model = build_model("my_model", "action_genome", "predcls", hidden=32)

A factory (a class or any callable) is called as ``factory(dataset=..., mode=..., **kwargs)`` and
must return a module following :class:`~m3sgg.models.base.ModelProtocol`. Names are unique:
registering a taken name raises :class:`~m3sgg.errors.ConfigError` unless ``override=True`` (a
plugin deliberately replacing a model). Plugin packages register at import time, from the module
the ``m3sgg.plugins`` entry point (or ``--plugin module:attr``) names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from torch import nn

from m3sgg.errors import ConfigError

__all__ = [
    "ModelSpec",
    "available_models",
    "build_model",
    "get_model_spec",
    "register_model",
    "unregister_model",
]

Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its factory and what it supports."""

    name: str
    factory: Factory
    datasets: frozenset[str]
    modes: frozenset[str]

    def supports(self, dataset: str, mode: str) -> bool:
        return dataset in self.datasets and mode in self.modes

    def describe(self) -> str:
        return f"datasets [{_listing(self.datasets)}], modes [{_listing(self.modes)}]"


_REGISTRY: dict[str, ModelSpec] = {}


@overload
def register_model(
    name: str,
    factory: None = None,
    *,
    datasets: Iterable[str],
    modes: Iterable[str],
    override: bool = False,
) -> Callable[[F], F]: ...


@overload
def register_model(
    name: str,
    factory: F,
    *,
    datasets: Iterable[str],
    modes: Iterable[str],
    override: bool = False,
) -> F: ...


def register_model(
    name: str,
    factory: Factory | None = None,
    *,
    datasets: Iterable[str],
    modes: Iterable[str],
    override: bool = False,
) -> Any:
    """Register ``factory`` under ``name``; use as a decorator or call with the factory.

    Args:
        name: the model's name in configs and on the command line.
        factory: a class or callable; omitted when used as a decorator.
        datasets: dataset names the model supports (e.g. ``{"action_genome"}``).
        modes: modes it supports (e.g. ``{"predcls", "sgcls", "sgdet"}``).
        override: replace an existing registration of ``name`` instead of refusing.

    Returns:
        The factory unchanged (or a decorator that registers and returns it).

    Raises:
        ConfigError: ``name`` is taken and ``override`` is false.
        ValueError: empty name, datasets or modes; a factory that is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    dataset_set = frozenset(datasets)
    mode_set = frozenset(modes)
    if not dataset_set or not mode_set:
        raise ValueError(f"model {name!r} must support at least one dataset and one mode")

    def add(fn: F) -> F:
        if not callable(fn):
            raise ValueError(f"model {name!r}: factory {fn!r} is not callable")
        if name in _REGISTRY and not override:
            raise ConfigError(
                f"a model named {name!r} is already registered "
                f"({_REGISTRY[name].factory!r}); pass override=True to replace it"
            )
        _REGISTRY[name] = ModelSpec(name, fn, dataset_set, mode_set)
        return fn

    return add if factory is None else add(factory)


def unregister_model(name: str) -> ModelSpec:
    """Remove ``name`` from the registry and return its spec (``KeyError`` when absent)."""
    return _REGISTRY.pop(name)


def get_model_spec(name: str) -> ModelSpec:
    """The registration of ``name``.

    Raises:
        ConfigError: no model of that name; the message lists the registered ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; available: {_listing(_REGISTRY) or '(none)'}"
        ) from None


def available_models(dataset: str | None = None, mode: str | None = None) -> list[str]:
    """Sorted names of registered models, optionally only those supporting ``dataset``/``mode``."""
    return sorted(
        name
        for name, spec in _REGISTRY.items()
        if (dataset is None or dataset in spec.datasets) and (mode is None or mode in spec.modes)
    )


def build_model(name: str, dataset: str, mode: str, **kwargs: Any) -> nn.Module:
    """Build model ``name`` for ``dataset`` and ``mode``, passing ``kwargs`` to its factory.

    Raises:
        ConfigError: unknown model, or a (dataset, mode) the model does not support; the message
            names the model and lists what it supports.
        TypeError: the factory returned something that is not a ``torch.nn.Module`` with a
            ``loss`` method.
    """
    spec = get_model_spec(name)
    if not spec.supports(dataset, mode):
        raise ConfigError(
            f"model {name!r} does not support dataset {dataset!r} with mode {mode!r}; "
            f"it supports {spec.describe()}"
        )
    model = spec.factory(dataset=dataset, mode=mode, **kwargs)
    if not isinstance(model, nn.Module) or not callable(getattr(model, "loss", None)):
        raise TypeError(
            f"model {name!r}: factory {spec.factory!r} returned {type(model).__name__}, "
            "expected a torch.nn.Module with a loss(predictions, batch) method"
        )
    return model


def _listing(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))

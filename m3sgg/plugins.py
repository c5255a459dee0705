"""Plugins: code outside m3sgg that extends a training run.

A plugin is a callable ``plugin(trainer)`` that may attach handlers to either engine
(``trainer.handlers.add(...)``, ``trainer.evaluator.handlers.add(...)``), fire or register
custom events, or change the run in any way the Trainer's public API allows. Models (and
anything else with a registry) register when the plugin's *module is imported*, which happens
before the trainer is built, so ``model.name`` may name a model a plugin brings.

Two ways to load one:

- ``--plugin package.module:attr`` (repeatable) or ``plugins: [...]`` in the config;
- an installed distribution declaring an entry point in the group ``m3sgg.plugins``::

      [options.entry_points]
      m3sgg.plugins =
          my_plugin = my_package.plugin:setup

Entry-point plugins load in every run (set ``M3SGG_NO_ENTRY_POINTS=1`` to skip them). A plugin
that fails to import or raises stops the start with its name in the message.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from m3sgg.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "Plugin", "apply_plugins", "import_object", "load_plugins"]

ENTRY_POINT_GROUP = "m3sgg.plugins"


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: where it came from and the callable to run with the trainer."""

    name: str
    source: str  # "--plugin" or "entry point <dist>"
    setup: Callable[[Any], Any]


def import_object(spec: str, what: str, expected: str = "'module:attr'") -> Any:
    r"""The object ``"package.module:attr.sub"`` names; errors name ``what`` (e.g. ``"plugin
    'x:y' (--plugin)"``) and are one-line :class:`ConfigError`\ s."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what}: expected {expected}")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import-time failure names the spec
        raise ConfigError(f"{what} failed to import: {type(err).__name__}: {err}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{what}: module {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    return target


def _import(spec: str, source: str) -> Plugin:
    target = import_object(spec, f"plugin {spec!r} ({source})")
    if not callable(target):
        raise ConfigError(f"plugin {spec!r} ({source}): {spec.partition(':')[2]!r} is not callable")
    return Plugin(spec, source, target)


def load_plugins(
    specs: list[str] | tuple[str, ...] = (), *, use_entry_points: bool = True
) -> list[Plugin]:
    """Import entry-point plugins (group ``m3sgg.plugins``) then ``specs`` ("module:attr")."""
    plugins: list[Plugin] = []
    if use_entry_points and not os.environ.get("M3SGG_NO_ENTRY_POINTS"):
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            plugins.append(_import(ep.value, f"entry point {ep.name!r} of {dist}"))
    seen = {p.name for p in plugins}
    for spec in specs:
        if spec not in seen:
            plugins.append(_import(spec, "--plugin"))
            seen.add(spec)
    return plugins


def apply_plugins(trainer: Any, plugins: list[Plugin]) -> None:
    """Call every plugin with the trainer; a plugin that raises stops the start, named."""
    for plugin in plugins:
        try:
            plugin.setup(trainer)
        except Exception as err:
            raise ConfigError(
                f"plugin {plugin.name!r} ({plugin.source}) failed: {type(err).__name__}: {err}"
            ) from None

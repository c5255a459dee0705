"""Plugins: code outside m3sgg that extends a training run.

A plugin is a callable ``setup(trainer, **options)`` that may attach handlers to either engine
(``trainer.handlers.add(...)``, ``trainer.evaluator.handlers.add(...)``), fire or register
custom events, or change the run in any way the Trainer's public API allows. Models, datasets and
metrics (anything with a registry) register when the plugin's *module is imported*, which happens
before the trainer is built, so ``model.name`` may name a model a plugin brings.

Two ways to make one available:

- name it: ``--plugin package.module:attr`` (repeatable) or ``plugins:`` in the config, as a
  string or as ``{name: ..., options: {...}}`` (the options are ``setup``'s keyword arguments,
  checked against its signature before anything is built, and saved in the run's config.yaml);
- install a distribution declaring an entry point in the group ``m3sgg.plugins``::

      [options.entry_points]
      m3sgg.plugins =
          my_plugin = my_package.plugin:setup

Installed entry points are *imported* in every run (their models, datasets and metrics are
available; set ``M3SGG_NO_ENTRY_POINTS=1`` to skip them), but their ``setup`` runs only in runs
that name them (``--plugin my_plugin``, or their ``module:attr``). A plugin that fails to import,
has options its ``setup`` does not take, or raises, stops the start with its name in the message.

:func:`apply_plugins` records which train handlers each plugin attached
(``trainer.plugin_handlers``); checkpoints keep that record, so resuming without the plugin is an
error instead of silently dropping the handler's state (see :meth:`Trainer.resume`).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from m3sgg.errors import ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "Plugin",
    "apply_plugins",
    "import_object",
    "import_plugins",
    "load_plugins",
]

ENTRY_POINT_GROUP = "m3sgg.plugins"


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: its name in the config, where it came from, ``setup`` and its options."""

    name: str
    source: str  # "--plugin" or "entry point 'x' of <dist>"
    setup: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)


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


def _import(spec: str, name: str, source: str) -> Plugin:
    target = import_object(spec, f"plugin {name!r} ({source})")
    if not callable(target):
        raise ConfigError(f"plugin {name!r} ({source}): {spec.partition(':')[2]!r} is not callable")
    return Plugin(name, source, target)


def _entry_points() -> dict[str, Plugin]:
    """Every installed entry point, imported, by its name and by its ``module:attr``."""
    found: dict[str, Plugin] = {}
    if os.environ.get("M3SGG_NO_ENTRY_POINTS"):
        return found
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        plugin = _import(ep.value, ep.name, f"entry point {ep.name!r} of {dist}")
        found.setdefault(ep.name, plugin)
        found.setdefault(ep.value, plugin)
    return found


def import_plugins(names: Sequence[str] = ()) -> dict[str, Plugin]:
    """Import every installed entry point and each named ``module:attr``; returns name → plugin
    for the entry points (by name and by ``module:attr``) and the named plugins."""
    found = _entry_points()
    for name in names:
        if name in found:
            continue
        if ":" not in name:
            installed = sorted(n for n in found if ":" not in n)
            raise ConfigError(
                f"plugin {name!r}: neither 'module:attr' nor an installed m3sgg.plugins entry "
                f"point (installed: {', '.join(installed) or 'none'})"
            )
        found[name] = _import(name, name, "--plugin")
    return found


def load_plugins(plugins: Sequence[Any] = ()) -> list[Plugin]:
    """The plugins a run names (``"name"`` strings or :class:`~m3sgg.config.PluginConfig`), in
    order, with their options checked against ``setup``'s signature. Every installed entry point
    is imported too (its registrations are available), but only named ones are returned."""
    entries = [(p, None) if isinstance(p, str) else (p.name, p.options) for p in plugins]
    found = import_plugins([name for name, _ in entries])
    loaded: list[Plugin] = []
    for name, options in entries:
        plugin = found[name]
        options = dict(options or {})
        try:
            inspect.signature(plugin.setup).bind(None, **options)
        except TypeError as err:
            raise ConfigError(
                f"plugins: {name}: options {sorted(options)} do not fit "
                f"setup{inspect.signature(plugin.setup)} ({err})"
            ) from None
        except ValueError:  # no signature (a builtin): nothing to check
            pass
        loaded.append(Plugin(name, plugin.source, plugin.setup, options))
    return loaded


def apply_plugins(trainer: Any, plugins: list[Plugin]) -> None:
    """Call every plugin with the trainer and its options; a plugin that raises stops the start,
    named. The train handlers each one attached are recorded in ``trainer.plugin_handlers``."""
    owners = getattr(trainer, "plugin_handlers", None)
    for plugin in plugins:
        handlers = getattr(trainer, "handlers", None)
        before = set(handlers.names()) if handlers is not None else set()
        try:
            plugin.setup(trainer, **plugin.options)
        except Exception as err:
            raise ConfigError(
                f"plugin {plugin.name!r} ({plugin.source}) failed: {type(err).__name__}: {err}"
            ) from None
        if owners is not None and handlers is not None:
            for name in handlers.names():
                if name not in before:
                    owners[name] = plugin.name

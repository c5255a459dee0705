"""The original authors' checkpoints: ``import_original(name, source, **options)``.

Each model ported from a paper registers an *importer* that reads the original repository's
checkpoint (a path, a ``{"state_dict": ...}`` mapping or a state dict), maps its keys explicitly
and returns our model holding those weights::

    from m3sgg.models import import_original

    model = import_original("stket", "STKET/checkpoints/predcls.tar", priors="TrainPrior.json")

An importer is ``importer(source, **options) -> nn.Module``; ``options`` are the model's
constructor arguments (the importer fills the original's widths by default). A bad key is a
one-line :class:`~m3sgg.errors.DataError` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from m3sgg.errors import ConfigError

__all__ = ["import_original", "original_importers", "register_original"]

Importer = Callable[..., nn.Module]

_IMPORTERS: dict[str, Importer] = {}


def register_original(name: str, importer: Importer, *, override: bool = False) -> Importer:
    """Make ``import_original(name, ...)`` call ``importer``; a taken name raises unless
    ``override``."""
    if not callable(importer):
        raise ValueError(f"importer for {name!r} is not callable: {importer!r}")
    if name in _IMPORTERS and not override:
        raise ConfigError(f"an importer for {name!r} is already registered")
    _IMPORTERS[name] = importer
    return importer


def original_importers() -> list[str]:
    """Sorted names that :func:`import_original` knows."""
    return sorted(_IMPORTERS)


def import_original(name: str, source: Any, **options: Any) -> nn.Module:
    """Our model ``name`` with the weights of the original's checkpoint ``source``.

    Raises:
        ConfigError: no importer for ``name``.
        DataError: the checkpoint is unreadable or its keys do not fit (one line naming the key).
    """
    try:
        importer = _IMPORTERS[name]
    except KeyError:
        raise ConfigError(
            f"no importer of original checkpoints for {name!r}; known: "
            f"{', '.join(original_importers()) or '(none)'}"
        ) from None
    return importer(source, **options)

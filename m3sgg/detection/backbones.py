"""Backbones for ``m3sgg extract-features``: the built-in CNN (:func:`builtin_backbone`) and a
user's module named ``"package.module:attr"`` (:func:`load_backbone`), with its output stride."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from m3sgg.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used (`m3sgg --help` stays fast)
    from torch import nn


#: Output stride of :func:`builtin_backbone`.
BUILTIN_STRIDE = 8


def builtin_backbone(widths: Sequence[int] = (32, 64, 128, 256), seed: int = 0) -> nn.Module:
    """A small CNN that needs no weights download: output stride 8, ``widths[-1]`` channels.

    Four blocks of 3x3 convolution + ReLU with strides 2, 2, 2, 1 (padding 1, so an ``H x W``
    image gives ``ceil(H / 8) x ceil(W / 8)`` maps), as an ``nn.Sequential``. Weights are
    He-normal and biases zero, drawn from a private generator seeded with ``seed``: the same
    seed gives the same weights whatever the global RNG state. (A factory rather than a class so
    that importing this module, which the CLI does to build its parser, does not import torch.)

    Args:
        widths: channels of the four blocks; the last is the feature width.
        seed: seed of the weights.

    Returns:
        The module, with attributes ``stride`` (:data:`BUILTIN_STRIDE`, read by
        :func:`extract_features`) and ``out_channels``.

    Example:
        >>> builtin_backbone()(torch.zeros(1, 3, 64, 96)).shape
        torch.Size([1, 256, 8, 12])
    """
    import torch
    from torch import nn

    widths = tuple(int(w) for w in widths)
    if len(widths) != 4 or any(w <= 0 for w in widths):
        raise ValueError(f"widths must be four positive ints, got {widths!r}")
    layers: list[nn.Module] = []
    in_channels = 3
    for width, stride in zip(widths, (2, 2, 2, 1), strict=True):
        layers += [nn.Conv2d(in_channels, width, 3, stride=stride, padding=1), nn.ReLU()]
        in_channels = width
    body = nn.Sequential(*layers)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in body:
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                assert module.bias is not None
                module.bias.zero_()
    body.stride = BUILTIN_STRIDE
    body.out_channels = widths[-1]
    return body


def load_backbone(spec: str | nn.Module) -> tuple[nn.Module, str]:
    """The backbone named by ``spec``, and a name for messages.

    Args:
        spec: ``"builtin"``, ``"package.module:attr"`` (``attr`` a module instance or a zero-arg
            factory returning one), or a ``torch.nn.Module`` instance.

    Raises:
        ConfigError: malformed spec, import failure, missing attribute, or not a module.
    """
    from torch import nn

    if isinstance(spec, nn.Module):
        return spec, type(spec).__name__
    if spec == "builtin":
        return builtin_backbone(), "builtin"
    from m3sgg.plugins import import_object

    target = import_object(str(spec), f"backbone {spec!r}", "'builtin' or 'module:attr'")
    if not isinstance(target, nn.Module):
        if not callable(target):
            raise ConfigError(
                f"backbone {spec!r} is a {type(target).__name__}, not a torch.nn.Module or a "
                "zero-argument factory returning one"
            )
        try:
            target = target()
        except Exception as err:
            raise ConfigError(
                f"backbone {spec!r}: calling the factory failed: {type(err).__name__}: {err}"
            ) from None
        if not isinstance(target, nn.Module):
            raise ConfigError(
                f"backbone {spec!r}: the factory returned a {type(target).__name__}, "
                "not a torch.nn.Module"
            )
    return target, str(spec)


def _resolve_stride(backbone: nn.Module, name: str, stride: Any) -> float:
    """``stride`` if given, else the module's ``stride`` attribute: a positive finite number.

    A pair of equal numbers (what ``nn.Conv2d`` holds) counts as that number.
    """
    source = "stride (--stride)"
    if stride is None:
        stride = getattr(backbone, "stride", None)
        source = f"backbone {name!r} attribute 'stride'"
        if stride is None:
            raise ConfigError(
                f"backbone {name!r} has no 'stride' attribute; give its output stride with "
                "--stride (stride=...)"
            )
    value = stride
    if isinstance(value, tuple | list) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"{source} must be a positive number (the same along both axes), got {stride!r}; "
            "give the output stride with --stride"
        )
    if not (np.isfinite(value) and value > 0):
        raise ConfigError(f"{source} must be a positive number, got {stride!r}")
    return float(value)

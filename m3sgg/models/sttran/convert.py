"""The original STTran's checkpoint layout (github:yrcong/STTran, ``lib/sttran.py``) → ours.

:func:`key_map` is the explicit table of every original key and the key it becomes here, for a
model's layer counts and mode; :func:`convert_state_dict` applies it and refuses any key that is
unknown, missing or of the wrong shape, with one line naming it. The original always builds its
``ObjectClassifier``; a predcls model has none, so in predcls those keys are known and dropped
(the original never uses them in predcls: its classifier returns before touching them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from m3sgg.errors import DataError

__all__ = ["CLASSIFIER_KEYS", "convert_state_dict", "key_map", "load_original_state"]

_LINEAR = ("weight", "bias")
_BATCHNORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_LAYER_NORM = ("weight", "bias")
_ATTENTION = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")

#: The original's object-classifier keys below ``object_classifier.``; ours are the same.
CLASSIFIER_KEYS: tuple[str, ...] = (
    "obj_embed.weight",
    *(f"pos_embed.0.{n}" for n in _BATCHNORM),
    *(f"pos_embed.1.{n}" for n in _LINEAR),
    *(f"decoder_lin.0.{n}" for n in _LINEAR),
    *(f"decoder_lin.1.{n}" for n in _BATCHNORM),
    *(f"decoder_lin.3.{n}" for n in _LINEAR),
)


def key_map(enc_layers: int, dec_layers: int, *, classifier: bool) -> dict[str, str | None]:
    """Original key → our key (``None``: a known key this model drops)."""
    table: dict[str, str | None] = {}
    for name in _LINEAR:
        table[f"union_func1.{name}"] = f"relation.union_func1.{name}"
        for index in (0, 4):
            table[f"conv.{index}.{name}"] = f"relation.conv.{index}.{name}"
        for fc in ("subj_fc", "obj_fc", "vr_fc", "a_rel_compress", "s_rel_compress"):
            prefix = "relation." if fc in ("subj_fc", "obj_fc", "vr_fc") else ""
            table[f"{fc}.{name}"] = f"{prefix}{fc}.{name}"
        table[f"c_rel_compress.{name}"] = f"c_rel_compress.{name}"
    for index in (2, 6):
        for name in _BATCHNORM:
            table[f"conv.{index}.{name}"] = f"relation.conv.{index}.{name}"
    for embed in ("obj_embed", "obj_embed2"):
        table[f"{embed}.weight"] = f"relation.{embed}.weight"
    local = "glocal_transformer.local_attention.layers"
    for i in range(enc_layers):
        for name in _ATTENTION:
            table[f"{local}.{i}.self_attn.{name}"] = f"spatial.layers.{i}.self_attn.{name}"
        for part in ("linear1", "linear2"):
            for name in _LINEAR:
                table[f"{local}.{i}.{part}.{name}"] = f"spatial.layers.{i}.{part}.{name}"
        for part in ("norm1", "norm2"):
            for name in _LAYER_NORM:
                table[f"{local}.{i}.{part}.{name}"] = f"spatial.layers.{i}.{part}.{name}"
    glob = "glocal_transformer.global_attention.layers"
    for i in range(dec_layers):
        for name in _ATTENTION:
            table[f"{glob}.{i}.multihead2.{name}"] = f"temporal.layers.{i}.multihead2.{name}"
        for part in ("linear1", "linear2"):
            for name in _LINEAR:
                table[f"{glob}.{i}.{part}.{name}"] = f"temporal.layers.{i}.{part}.{name}"
        for name in _LAYER_NORM:
            table[f"{glob}.{i}.norm3.{name}"] = f"temporal.layers.{i}.norm3.{name}"
    table["glocal_transformer.position_embedding.weight"] = "temporal.position_embedding.weight"
    for key in CLASSIFIER_KEYS:
        table[f"object_classifier.{key}"] = f"object_classifier.{key}" if classifier else None
    return table


def load_original_state(source: Any) -> tuple[dict[str, torch.Tensor], str]:
    """The original state dict from ``source``: a path to a ``.tar``/``.pt`` file (read with
    ``weights_only=True``), a ``{"state_dict": ...}`` mapping or a state dict. Returns it and a
    name for messages."""
    where = "<state dict>"
    if isinstance(source, str | os.PathLike):
        where = os.fspath(source)
        try:
            source = torch.load(where, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise DataError(where, "no such file") from None
        except Exception as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(where, f"cannot read as a torch checkpoint: {message}") from None
    if isinstance(source, Mapping) and "state_dict" in source:
        source = source["state_dict"]
    if not isinstance(source, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in source.items()
    ):
        raise DataError(where, "expected a state dict (or {'state_dict': ...}) of tensors")
    return dict(source), where


def convert_state_dict(
    state: Mapping[str, torch.Tensor], model: nn.Module, table: Mapping[str, str | None], where: str
) -> dict[str, torch.Tensor]:
    """``state`` (original keys) → a state dict for ``model`` through ``table``.

    Raises:
        DataError: an original key the table does not know, a key of the model that no original
            key fills, or a tensor whose shape differs from the model's; one line naming it.
    """
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in table:
            raise DataError(where, "unknown key in the original's layout", field=key)
        target = table[key]
        if target is None:
            continue
        if target not in ours:
            raise DataError(where, f"maps to {target!r}, which this model lacks", field=key)
        if tuple(value.shape) != tuple(ours[target].shape):
            raise DataError(
                where,
                f"shape {tuple(value.shape)}, this model expects {tuple(ours[target].shape)} "
                f"for {target!r}",
                field=key,
            )
        out[target] = value.to(ours[target].dtype)
    filled = set(out)
    for original, target in table.items():
        if target is not None and target not in filled:
            raise DataError(where, "missing key of the original's layout", field=original)
    missing = sorted(set(ours) - filled)
    if missing:
        raise DataError(where, "no original key fills this model's key", field=missing[0])
    return out

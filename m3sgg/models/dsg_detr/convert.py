"""The original DSG-DETR's checkpoints (github:Shengyu-Feng/DSG-DETR, ``lib/sttran.py``) → ours.

The original is STTran's layout with three ``nn.TransformerEncoder`` stacks in place of STTran's
transformer: ``object_classifier.encoder_tran`` (objects), ``local_transformer`` and
``global_transformer`` (relations), each layer ``self_attn.{in_proj_weight, in_proj_bias,
out_proj.*}``, ``linear1``, ``linear2``, ``norm1``, ``norm2`` — the same names as our
:class:`~m3sgg.models.dsg_detr.encoders.SequenceEncoder` layers. The relation token, heads and
classifier keys are STTran's (:func:`m3sgg.models.sttran.convert.key_map`). The two sinusoidal
tables (``*.positional_encoder.pe``) are constants here: they are checked, not loaded.

The original loads checkpoints with ``strict=False``; we refuse unknown, missing and mis-shaped
keys with one line naming the key.
"""

from __future__ import annotations

from typing import Any

import torch

from m3sgg.errors import DataError
from m3sgg.models.dsg_detr.encoders import sinusoidal_table
from m3sgg.models.sttran.convert import (
    convert_state_dict,
    load_original_state,
)
from m3sgg.models.sttran.convert import (
    key_map as sttran_key_map,
)

__all__ = ["POSITION_TABLES", "key_map", "load_original"]

_LINEAR = ("weight", "bias")
_ATTENTION = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
#: The original's sinusoidal tables: checked against ours, not loaded.
POSITION_TABLES = ("object_classifier.positional_encoder.pe", "positional_encoder.pe")


def _encoder(prefix: str, ours: str, layers: int) -> dict[str, str]:
    table = {}
    for i in range(layers):
        src, dst = f"{prefix}.layers.{i}", f"{ours}.encoder.layers.{i}"
        for name in _ATTENTION:
            table[f"{src}.self_attn.{name}"] = f"{dst}.self_attn.{name}"
        for part in ("linear1", "linear2", "norm1", "norm2"):
            for name in _LINEAR:
                table[f"{src}.{part}.{name}"] = f"{dst}.{part}.{name}"
    return table


def key_map(
    enc_layers: int = 1, dec_layers: int = 3, object_layers: int = 3
) -> dict[str, str | None]:
    """Original key → our key (``None``: a position table, checked instead of loaded)."""
    table = {
        k: v
        for k, v in sttran_key_map(0, 0, classifier=True).items()
        if not k.startswith("glocal_transformer.")
    }
    table.update(_encoder("object_classifier.encoder_tran", "object_encoder", object_layers))
    table.update(_encoder("local_transformer", "local_encoder", enc_layers))
    table.update(_encoder("global_transformer", "global_encoder", dec_layers))
    for key in POSITION_TABLES:
        table[key] = None
    return table


def load_original(source: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict for ``model`` (a :class:`~m3sgg.models.dsg_detr.model.DSGDETR`) from the
    original's checkpoint ``source`` (a path, ``{"state_dict": ...}`` or a state dict).

    Raises:
        DataError: unreadable file; unknown, missing or mis-shaped key; a position table that is
            not the sinusoidal one.
    """
    state, where = load_original_state(source)
    table = key_map(
        len(model.local_encoder.encoder.layers),
        len(model.global_encoder.encoder.layers),
        len(model.object_encoder.encoder.layers),
    )
    for key in POSITION_TABLES:
        if key in state:
            pe = state[key].reshape(-1, state[key].shape[-1]).float()
            if not torch.allclose(pe, sinusoidal_table(*pe.shape), atol=1e-6):
                raise DataError(where, "not the sinusoidal position table", field=key)
    return convert_state_dict(state, model, table, where)


def import_dsg_detr(source: Any, *, mode: str = "predcls", **options: Any) -> torch.nn.Module:
    """``import_original("dsg_detr", source, mode=..., **options)``: a
    :class:`~m3sgg.models.dsg_detr.model.DSGDETR` at the original's widths (``options``
    override them) holding the original checkpoint's weights, in evaluation mode.

    Raises:
        DataError: unreadable file; unknown, missing or mis-shaped key.
    """
    from m3sgg.models.dsg_detr.model import DSGDETR

    model = DSGDETR(mode=mode, **options)
    model.load_state_dict(load_original(source, model))
    return model.eval()

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

from collections.abc import Mapping
from typing import Any

import torch

from m3sgg.errors import DataError
from m3sgg.models.dsg_detr.encoders import sinusoidal_table
from m3sgg.models.sttran.convert import (
    convert_state_dict,
    key_shape,
    layer_count,
    load_original_state,
)
from m3sgg.models.sttran.convert import (
    key_map as sttran_key_map,
)

__all__ = ["POSITION_TABLES", "import_dsg_detr", "key_map", "load_original", "original_widths"]

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
    return _convert(*load_original_state(source), model)


def _convert(
    state: Mapping[str, torch.Tensor], where: str, model: torch.nn.Module
) -> dict[str, torch.Tensor]:
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


def original_widths(state: Mapping[str, torch.Tensor], where: str) -> dict[str, int]:
    """The :class:`~m3sgg.models.dsg_detr.model.DSGDETR` widths an original checkpoint was
    trained with, read from its tensors' shapes (the heads are not in the weights).

    Raises:
        DataError: a key the widths are read from is missing (one line naming it).
    """
    proj_dim, object_token = key_shape(state, "subj_fc.weight", where)
    conv_dim, union_channels = key_shape(state, "union_func1.weight", where)[:2]
    num_classes, embed_dim = key_shape(state, "obj_embed.weight", where)
    box_embed_dim = key_shape(state, "object_classifier.pos_embed.1.weight", where)[0]
    widths = {
        "object_dim": object_token - embed_dim - box_embed_dim,
        "union_channels": union_channels,
        "proj_dim": proj_dim,
        "embed_dim": embed_dim,
        "conv_dim": conv_dim,
        "num_classes": num_classes,
        "box_embed_dim": box_embed_dim,
        "classifier_dim": key_shape(state, "object_classifier.decoder_lin.0.weight", where)[0],
        "enc_layers": layer_count(state, "local_transformer.layers."),
        "dec_layers": layer_count(state, "global_transformer.layers."),
        "object_layers": layer_count(state, "object_classifier.encoder_tran.layers."),
    }
    for option, prefix in (
        ("ff_dim", "local_transformer"),
        ("ff_dim", "global_transformer"),
        ("object_ff_dim", "object_classifier.encoder_tran"),
    ):
        key = f"{prefix}.layers.0.linear1.weight"
        if key in state and option not in widths:
            widths[option] = int(state[key].shape[0])
    return widths


def import_dsg_detr(source: Any, *, mode: str = "predcls", **options: Any) -> torch.nn.Module:
    """``import_original("dsg_detr", source, mode=..., **options)``: a
    :class:`~m3sgg.models.dsg_detr.model.DSGDETR` holding the original checkpoint's weights, in
    evaluation mode.

    The widths (box feature width, union channels, projections, embeddings, layer counts,
    feed-forward and classifier widths) are read from the tensors' shapes
    (:func:`original_widths`); ``heads`` and ``object_heads`` (8) and the other constructor
    arguments may be given in ``options``, which win. The options used, except the two the
    engine takes from the feature store (``object_dim``, ``union_channels``), are kept as
    ``model.config_options``: what ``m3sgg import-checkpoint`` writes into the config.

    Raises:
        DataError: unreadable file; unknown, missing or mis-shaped key.
    """
    from m3sgg.models.dsg_detr.model import DSGDETR

    state, where = load_original_state(source)
    chosen = {**original_widths(state, where), **options}
    model = DSGDETR(mode=mode, **chosen)
    model.load_state_dict(_convert(state, where, model))
    model.config_options = {
        k: v for k, v in chosen.items() if k not in ("object_dim", "union_channels")
    }
    return model.eval()

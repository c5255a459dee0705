"""The original STKET's checkpoint layout (github:HCPLab-SYSU/STKET, ``lib/stket.py``) → ours.

STKET keeps STTran's relation-token keys (``union_func1``, ``conv``, ``subj_fc``, ``obj_fc``,
``vr_fc``, ``obj_embed``, ``obj_embed2``): their part of the table is STTran's
(:func:`m3sgg.models.sttran.convert.key_map`). Its own keys keep their names except
``initialPrior`` → ``initial_prior``, ``specificPrior`` → ``specific_prior`` and ``W_q/W_k/W_v``
→ ``w_q/w_k/w_v``. Known keys this model drops: the pre-transformer heads
``{a,s,c}_rel_compress`` (computed by the original, read by no loss and no evaluation) and, in
predcls, the ``object_classifier`` (kept under its own name in sgcls and sgdet). An unknown,
missing or mis-shaped key is a one-line error.

:func:`infer_options` reads the model's widths from the tensors' shapes (the original's are fixed
at 2048 / 1024 / 1936, but a checkpoint of ours in the original's layout may be narrower).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from m3sgg.models.sttran.convert import (
    convert_state_dict,
    key_shape,
    layer_count,
    load_original_state,
)
from m3sgg.models.sttran.convert import key_map as sttran_key_map

__all__ = ["import_stket", "infer_options", "key_map"]

_LINEAR = ("weight", "bias")
_ATTENTION = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")


def _layer(table: dict[str, str | None], prefix: str, norms: tuple[str, ...]) -> None:
    for name in _ATTENTION:
        table[f"{prefix}.self_attn.{name}"] = f"{prefix}.self_attn.{name}"
    for part in ("linear1", "linear2", *norms):
        for name in _LINEAR:
            table[f"{prefix}.{part}.{name}"] = f"{prefix}.{part}.{name}"
    for original, ours in (("W_q", "w_q"), ("W_k", "w_k"), ("W_v", "w_v")):
        for name in _LINEAR:
            table[f"{prefix}.{original}.{name}"] = f"{prefix}.{ours}.{name}"


def _state_fc(table: dict[str, str | None], module: str) -> None:
    for index in range(4):
        for name in _LINEAR:
            table[f"{module}.state_fc.{index}.{name}"] = f"{module}.state_fc.{index}.{name}"


def key_map(enc_layers: int, dec_layers: int, *, classifier: bool = False) -> dict[str, str | None]:
    """Original key → our key (``None``: a known key this model drops); ``classifier``: the
    model has the object classifier (sgcls)."""
    table = {
        key: (
            target
            if target is not None and target.startswith(("relation.", "object_classifier."))
            else None
        )
        for key, target in sttran_key_map(0, 0, classifier=classifier).items()
    }
    for i in range(enc_layers):
        _layer(table, f"spatial_encoder.encoder.layers.{i}", ("norm1", "norm2"))
    for i in range(dec_layers):
        _layer(table, f"temporal_decoder.decoder.layers.{i}", ("norm3",))
    for i in range(2):
        _layer(table, f"ensemble_decoder.decoder.layers.{i}", ("norm3",))
    table["spatial_encoder.initialPrior"] = "spatial_encoder.initial_prior"
    table["temporal_decoder.initialPrior"] = "temporal_decoder.initial_prior"
    table["temporal_decoder.specificPrior"] = "temporal_decoder.specific_prior"
    _state_fc(table, "spatial_encoder")
    _state_fc(table, "temporal_decoder")
    for module in ("temporal_decoder", "ensemble_decoder"):
        table[f"{module}.position_embedding.weight"] = f"{module}.position_embedding.weight"
    for short in ("spa", "tem", "ens"):
        for group in "asc":
            for name in _LINEAR:
                key = f"{short}_{group}_rel_compress.{name}"
                table[key] = key
    return table


def import_stket(source: Any, model: nn.Module, *, where: str | None = None) -> dict[str, Any]:
    """The original's checkpoint (path, ``{"state_dict": ...}`` or state dict) as a state dict
    for ``model`` (an :class:`~m3sgg.models.stket.model.STKET`); ``where`` names an already
    loaded state dict in messages."""
    state, name = load_original_state(source)
    where = where or name
    table = key_map(
        len(model.spatial_encoder.encoder.layers),
        len(model.temporal_decoder.decoder.layers),
        classifier=getattr(model, "object_classifier", None) is not None,
    )
    return convert_state_dict(state, model, table, where)


def infer_options(state: Mapping[str, torch.Tensor], where: str, mode: str) -> dict[str, Any]:
    """The :class:`~m3sgg.models.stket.model.STKET` arguments the original's state dict fixes:
    feature and token widths, layer counts, ``ff_dim``, ``window`` (the ensemble decoder's
    position table), ``state_dims`` and, outside predcls, the classifier's widths. ``heads``,
    the contact threshold, the prior switches and the loss choices are not in the tensors."""
    proj, object_dim = key_shape(state, "subj_fc.weight", where)
    conv, union_channels = key_shape(state, "union_func1.weight", where)[:2]
    options: dict[str, Any] = {
        "object_dim": object_dim,
        "union_channels": union_channels,
        "proj_dim": proj,
        "embed_dim": key_shape(state, "obj_embed.weight", where)[1],
        "conv_dim": conv,
        "enc_layers": layer_count(state, "spatial_encoder.encoder.layers."),
        "dec_layers": layer_count(state, "temporal_decoder.decoder.layers."),
        "ff_dim": key_shape(state, "spatial_encoder.encoder.layers.0.linear1.weight", where)[0],
        "window": key_shape(state, "ensemble_decoder.position_embedding.weight", where)[0],
        "state_dims": [
            key_shape(state, f"spatial_encoder.state_fc.{i}.weight", where)[0] for i in range(3)
        ],
    }
    if mode != "predcls":
        options["classifier_dim"] = key_shape(
            state, "object_classifier.decoder_lin.0.weight", where
        )[0]
        options["pos_dim"] = key_shape(state, "object_classifier.pos_embed.1.weight", where)[0]
    return options

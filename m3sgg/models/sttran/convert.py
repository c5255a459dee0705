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

__all__ = [
    "CLASSIFIER_KEYS",
    "convert_state_dict",
    "import_sttran",
    "key_map",
    "key_shape",
    "layer_count",
    "load_original_state",
    "original_state_dict",
    "read_checkpoint",
    "relation_widths",
]

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


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """The object saved at ``path`` (``torch.load`` on the CPU, ``weights_only=True``).

    Raises:
        DataError: no such file, or not readable as a torch checkpoint (one line).
    """
    where = os.fspath(path)
    try:
        return torch.load(where, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(where, "no such file") from None
    except Exception as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(where, f"cannot read as a torch checkpoint: {message}") from None


def load_original_state(source: Any) -> tuple[dict[str, torch.Tensor], str]:
    """The original state dict from ``source``: a path to a ``.tar``/``.pt`` file (read with
    ``weights_only=True``), a ``{"state_dict": ...}`` mapping or a state dict. Returns it and a
    name for messages."""
    where = "<state dict>"
    if isinstance(source, str | os.PathLike):
        where = os.fspath(source)
        source = read_checkpoint(where)
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


def original_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights in the original's key layout (the inverse of the key map; a predcls
    model has no classifier keys). For tests and for exporting back."""
    enc, dec = len(model.spatial.layers), len(model.temporal.layers)
    table = key_map(enc, dec, classifier=getattr(model, "object_classifier", None) is not None)
    ours = model.state_dict()
    return {original: ours[target].clone() for original, target in table.items() if target}


def layer_count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Layers of the stack whose keys start with ``prefix`` (``...layers.``): the highest index
    after it, plus one (0 without such keys)."""
    indices = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def key_shape(state: Mapping[str, torch.Tensor], key: str, where: str) -> tuple[int, ...]:
    """The shape of ``state[key]``.

    Raises:
        DataError: ``key`` is missing (one line naming it and ``where``).
    """
    if key not in state:
        raise DataError(where, "missing key of the original's layout", field=key)
    return tuple(state[key].shape)


def relation_widths(state: Mapping[str, torch.Tensor], where: str) -> dict[str, int]:
    """The relation part's widths of an original STTran-layout state dict, from its shapes:
    ``object_dim``, ``union_channels``, ``proj_dim``, ``embed_dim``, ``conv_dim``,
    ``num_classes``, ``enc_layers``, ``dec_layers`` and (with a temporal layer) ``ff_dim``. For
    the models built on STTran whose checkpoints share its layout (TEMPURA).

    Raises:
        DataError: a key the widths are read from is missing (one line naming it).
    """
    proj, object_dim = key_shape(state, "subj_fc.weight", where)
    conv, union_channels = key_shape(state, "union_func1.weight", where)[:2]
    widths = {
        "object_dim": object_dim,
        "union_channels": union_channels,
        "proj_dim": proj,
        "embed_dim": key_shape(state, "obj_embed.weight", where)[1],
        "conv_dim": conv,
        "num_classes": key_shape(state, "obj_embed.weight", where)[0],
        "enc_layers": layer_count(state, "glocal_transformer.local_attention.layers."),
        "dec_layers": layer_count(state, "glocal_transformer.global_attention.layers."),
    }
    layers = "glocal_transformer.global_attention.layers.0.linear1.weight"
    if layers in state:
        widths["ff_dim"] = int(state[layers].shape[0])
    return widths


def import_sttran(source: Any, *, mode: str = "predcls", **options: Any) -> nn.Module:
    """Our :class:`~m3sgg.models.sttran.model.STTran` holding the original's weights.

    The widths (box feature width, union channels, projections, embeddings, union-branch
    channels, feed-forward width, layer counts, classifier widths) are read from the tensors'
    shapes; ``heads`` (8) and the other constructor arguments may be given in ``options``. The
    options used are kept as ``model.config_options`` (what ``m3sgg import-checkpoint`` writes
    into the checkpoint's config).

    Raises:
        DataError: unreadable source, or a key unknown, missing or mis-shaped (one line).
    """
    from m3sgg.models.sttran.model import STTran

    state, where = load_original_state(source)
    inferred: dict[str, Any] = relation_widths(state, where)
    if mode != "predcls":
        hidden, _ = key_shape(state, "object_classifier.decoder_lin.0.weight", where)
        inferred["classifier_dim"] = hidden
        inferred["pos_dim"] = key_shape(state, "object_classifier.pos_embed.1.weight", where)[0]
    chosen = {**inferred, **options}
    model = STTran(mode=mode, **chosen)
    table = key_map(chosen["enc_layers"], chosen["dec_layers"], classifier=mode != "predcls")
    model.load_state_dict(convert_state_dict(state, model, table, where))
    model.config_options = {
        k: v for k, v in chosen.items() if k not in ("object_dim", "union_channels")
    }
    return model

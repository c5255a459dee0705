"""The original TEMPURA's checkpoints (github:sayaknag/unbiasedSGG) → ours.

A checkpoint of the original's ``train.py`` is ``{"state_dict": ..., "object_memory": ...,
"rel_memory": ...}``; ``rel_memory`` is ``{"attention": [3, 1936], "spatial": [6, 1936],
"contacting": [17, 1936]}`` after the first epoch and ``[]`` before (its ``test.py`` never
restores it; here it becomes the model's memory). The state dict's keys are STTran's
(:func:`m3sgg.models.sttran.convert.key_map`) except:

- the relation heads are mixtures: ``{a,s,c}_rel_compress.heads.{mu,var,pi}_{i}.{weight,bias}``,
  fused into each head's ``proj`` (:func:`~m3sgg.models.tempura.gmm.gmm_state_from_original`);
- the memory read-out: ``glocal_transformer.mem_attention.*`` (joint: one attention;
  separate: one per group) and, with automated selection, ``glocal_transformer.selector.*``;
- TEMPURA's object classifier (``intermediate`` + ``decoder_lin``, optional tracking encoder and
  object memory): known, and dropped in predcls, where the original never uses it; a mixture
  object head (``decoder_lin.heads.*``) is fused into ``object_classifier.decoder_lin.proj``;
  with ``object_memory`` the object memory's attention (``mem_attention``, ``selector``) and the
  file's ``object_memory`` [36, W] (``[]`` before the first) fill the classifier's
  ``memory_fusion``; a model without it refuses them outside predcls.

An unknown, missing or mis-shaped key is refused with one line naming it
(:class:`~m3sgg.errors.DataError`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from m3sgg.errors import DataError
from m3sgg.models.sttran.convert import (
    convert_state_dict,
    load_original_state,
    read_checkpoint,
    relation_widths,
)
from m3sgg.models.sttran.convert import key_map as sttran_key_map
from m3sgg.models.tempura.gmm import gmm_state_from_original
from m3sgg.vocab import GROUP_SIZES

__all__ = [
    "convert_original",
    "import_tempura",
    "key_map",
    "load_original",
    "original_checkpoint",
]

_LINEAR = ("weight", "bias")
_BATCHNORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_HEADS = ("a_rel_compress", "s_rel_compress", "c_rel_compress")
_GROUPS = ("attention", "spatial", "contacting")
#: the original's separate memory attentions, in the order of our groups
_SEPARATE = ("attention", "spatial", "contacting")
_TRACKING_LAYERS = 3
_OBJECT_HEAD = "object_classifier.decoder_lin"
_OBJECT_MEMORY = "object_classifier.memory_fusion"


def _classifier_keys(k: int) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """TEMPURA's ObjectClassifier keys (below ``object_classifier.``): ``(ours, linear, gmm,
    tracking, memory)``: the parts every classifier has, the linear object head (the recipes),
    the mixture object head (``-obj_head gmm``, fused here into ``decoder_lin.proj``), the
    tracking encoder (ours below ``tracker.encoder.``) and the object memory (not built here)."""
    ours = ["obj_embed.weight"]
    ours += [f"pos_embed.0.{n}" for n in _BATCHNORM] + [f"pos_embed.1.{n}" for n in _LINEAR]
    ours += [f"intermediate.0.{n}" for n in _LINEAR] + [f"intermediate.1.{n}" for n in _BATCHNORM]
    linear = [f"decoder_lin.0.{n}" for n in _LINEAR]
    gmm = [
        f"decoder_lin.heads.{part}_{i}.{n}"
        for part in ("mu", "var", "pi")
        for i in range(1, k + 1)
        for n in _LINEAR
    ]
    tracking = []
    for i in range(_TRACKING_LAYERS):
        layer = f"encoder_tran.layers.{i}"
        tracking += [f"{layer}.self_attn.{n}" for n in ("in_proj_weight", "in_proj_bias")]
        tracking += [f"{layer}.self_attn.out_proj.{n}" for n in _LINEAR]
        for part in ("linear1", "linear2", "norm1", "norm2"):
            tracking += [f"{layer}.{part}.{n}" for n in _LINEAR]
    memory = ["mem_attention.in_proj_weight", "mem_attention.out_proj.weight"]
    memory += [f"selector.{n}" for n in _LINEAR]
    return ours, linear, gmm, tracking, memory


def _gmm_heads(model: Any) -> dict[str, Any]:
    """Key prefix → mixture head of ``model``: the relation heads and a mixture object head."""
    heads = {head: getattr(model, head) for head in _HEADS} if model.relation_head == "gmm" else {}
    classifier = model.object_classifier
    if classifier is not None and classifier.head == "gmm":
        heads[_OBJECT_HEAD] = classifier.decoder_lin
    return heads


def key_map(model: Any) -> dict[str, str | None]:
    """Original key → our key for ``model`` (a :class:`~m3sgg.models.tempura.TEMPURA`);
    ``None`` marks a known key the model drops. Head keys are the fused ``<head>.proj.*``."""
    enc, dec = len(model.spatial.layers), len(model.temporal.layers)
    table = {
        key: target
        for key, target in sttran_key_map(enc, dec, classifier=False).items()
        if not key.startswith(("object_classifier.", *(f"{h}." for h in _HEADS)))
    }
    for head in _HEADS:
        for name in _LINEAR:
            if model.relation_head == "gmm":  # fused (convert_original)
                table[f"{head}.proj.{name}"] = f"{head}.proj.{name}"
            else:  # -rel_head linear: the same keys
                table[f"{head}.{name}"] = f"{head}.{name}"
    ours, linear, gmm, tracking, memory = _classifier_keys(model.k)
    classifier = model.object_classifier
    for key in ours:
        table[f"object_classifier.{key}"] = f"object_classifier.{key}" if classifier else None
    if classifier is None:  # predcls: the original never uses its classifier
        for key in linear + gmm + memory:
            table[f"object_classifier.{key}"] = None
    elif classifier.head == "linear":
        for key in linear:
            table[f"object_classifier.{key}"] = f"object_classifier.{key}"
    else:  # the mixture object head, fused (convert_original)
        for name in _LINEAR:
            table[f"{_OBJECT_HEAD}.proj.{name}"] = f"{_OBJECT_HEAD}.proj.{name}"
    if classifier is not None and classifier.memory_fusion is not None:  # the object memory
        for name in ("in_proj_weight", "out_proj.weight"):
            table[f"object_classifier.mem_attention.{name}"] = f"{_OBJECT_MEMORY}.attention.{name}"
        if classifier.memory_fusion.selector is not None:
            for name in _LINEAR:
                table[f"object_classifier.selector.{name}"] = f"{_OBJECT_MEMORY}.selector.{name}"
    for key in tracking:
        target = f"object_classifier.tracker.encoder.{key.split('.', 1)[1]}"
        keep = classifier is not None and classifier.tracker is not None
        table[f"object_classifier.{key}"] = target if keep else None
    table["object_classifier.positional_encoder.pe"] = None  # a constant table here
    fusion = model.memory_fusion
    if fusion is not None:
        source = "glocal_transformer.mem_attention"
        names = ("in_proj_weight", "out_proj.weight")
        if fusion.groups is None:
            for name in names:
                table[f"{source}.{name}"] = f"memory_fusion.attention.{name}"
        else:
            for i, group in enumerate(_SEPARATE):
                for name in names:
                    table[f"{source}.{group}.{name}"] = f"memory_fusion.attention.{i}.{name}"
        if fusion.selector is not None:
            for name in _LINEAR:
                table[f"glocal_transformer.selector.{name}"] = f"memory_fusion.selector.{name}"
    return table


def load_original(source: Any) -> tuple[dict[str, torch.Tensor], Any, str]:
    """``(state_dict, rel_memory, where)`` from a path, a checkpoint mapping or a state dict."""
    state, rel_memory, _, where = _load(source)
    return state, rel_memory, where


def _load(source: Any) -> tuple[dict[str, torch.Tensor], Any, Any, str]:
    """``(state_dict, rel_memory, object_memory, where)`` (:func:`load_original`)."""
    rel_memory: Any = []
    object_memory: Any = []
    where = "<state dict>"
    if isinstance(source, Mapping) and "rel_memory" in source:
        rel_memory = source["rel_memory"]
        object_memory = source.get("object_memory", [])
    elif not isinstance(source, Mapping):  # a path: read once, keep the memory
        where = os.fspath(source)
        loaded = read_checkpoint(where)
        if isinstance(loaded, Mapping):
            rel_memory = loaded.get("rel_memory", [])
            object_memory = loaded.get("object_memory", [])
        source = loaded
    state, _ = load_original_state(source)
    return state, rel_memory, object_memory, where


def _object_memory(object_memory: Any, model: Any, where: str) -> torch.Tensor | None:
    """The checkpoint's object memory [C - 1, W], or None when it has none (``[]``)."""
    if object_memory is None or (isinstance(object_memory, list | tuple) and not object_memory):
        return None
    classifier = model.object_classifier
    objects = classifier.memory_fusion if classifier is not None else None
    if objects is None:
        raise DataError(
            where, "the checkpoint has an object memory, this model none", field="object_memory"
        )
    memory = torch.as_tensor(object_memory).float()
    if tuple(memory.shape) != tuple(objects.memory.shape):
        raise DataError(
            where,
            f"shape {tuple(memory.shape)}, this model expects {tuple(objects.memory.shape)}",
            field="object_memory",
        )
    return memory


def _memory(rel_memory: Any, model: Any, where: str) -> torch.Tensor | None:
    """The checkpoint's memory as our [26, D] rows, or None when it has none."""
    if rel_memory is None or (isinstance(rel_memory, list | tuple) and not rel_memory):
        return None
    if not isinstance(rel_memory, Mapping) or set(rel_memory) != set(_GROUPS):
        raise DataError(
            where, f"expected a dict with keys {list(_GROUPS)} or []", field="rel_memory"
        )
    if model.memory_fusion is None:
        raise DataError(where, "the checkpoint has a memory, this model none", field="rel_memory")
    width = model.memory_fusion.memory.shape[1]
    parts = []
    for group in _GROUPS:
        part = torch.as_tensor(rel_memory[group]).float()
        expected = (GROUP_SIZES[group], width)
        if tuple(part.shape) != expected:
            raise DataError(
                where,
                f"shape {tuple(part.shape)}, this model expects {expected}",
                field=f"rel_memory.{group}",
            )
        parts.append(part)
    return torch.cat(parts)


def convert_original(source: Any, model: Any, where: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict for ``model`` from an original TEMPURA checkpoint (memory included).

    Args:
        source: a path, ``{"state_dict", "rel_memory", ...}`` or a bare state dict.
        model: the :class:`~m3sgg.models.tempura.TEMPURA` to fill (its options must match the
            checkpoint's: K, memory kind, selection, layer counts).
        where: a name for messages (default: the path).

    Raises:
        DataError: unknown, missing or mis-shaped key, or a memory that does not fit.
    """
    state, rel_memory, object_memory, origin = _load(source)
    where = where or origin
    state = dict(state)
    for head in _gmm_heads(model):
        original_keys = [k for k in state if k.startswith(f"{head}.heads.")]
        if not original_keys:
            continue
        try:
            fused = gmm_state_from_original(state, f"{head}.", model.k)
        except KeyError as err:
            raise DataError(
                where, "missing key of the original's layout", field=err.args[0]
            ) from None
        extra = sorted(
            set(original_keys)
            - {
                f"{head}.heads.{p}_{i}.{n}"
                for p in ("mu", "var", "pi")
                for i in range(1, model.k + 1)
                for n in _LINEAR
            }
        )
        if extra:
            raise DataError(where, f"unknown key (is K {model.k}?)", field=extra[0])
        for key in original_keys:
            del state[key]
        for name, value in fused.items():
            state[f"{head}.{name}"] = value
    converted = convert_state_dict(state, _Buffers(model), key_map(model), where)
    memory = _memory(rel_memory, model, where)
    if model.memory_fusion is not None:
        converted["memory_fusion.memory"] = (
            memory if memory is not None else torch.zeros_like(model.memory_fusion.memory)
        )
        converted["memory_fusion.ready"] = torch.tensor(memory is not None)
    classifier = model.object_classifier
    if classifier is not None:  # predcls never reads the object memory
        objects = _object_memory(object_memory, model, where)
        if classifier.memory_fusion is not None:
            converted[f"{_OBJECT_MEMORY}.memory"] = (
                objects
                if objects is not None
                else torch.zeros_like(classifier.memory_fusion.memory)
            )
            converted[f"{_OBJECT_MEMORY}.ready"] = torch.tensor(objects is not None)
    return converted


class _Buffers:
    """``model`` seen without its memory buffers (they come from ``rel_memory``, not the
    state dict)."""

    def __init__(self, model: Any):
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        buffers = ("memory_fusion.memory", "memory_fusion.ready")
        buffers += tuple(f"{_OBJECT_MEMORY}.{name}" for name in ("memory", "ready"))
        return {k: v for k, v in self.model.state_dict().items() if k not in buffers}


def _inferred(state: Mapping[str, torch.Tensor], mode: str, where: str) -> dict[str, Any]:
    """The options a checkpoint's keys and shapes tell: STTran's widths, ``k``, the memory kind,
    the selection and, outside predcls, the classifier's widths and ``tracking``."""
    inferred: dict[str, Any] = relation_widths(state, where)
    k = sum(
        1 for key in state if key.startswith("a_rel_compress.heads.mu_") and key.endswith(".weight")
    )
    if k:
        inferred["k"] = k
    if "a_rel_compress.weight" in state:
        inferred["relation_head"] = "linear"
    joint = "glocal_transformer.mem_attention.in_proj_weight"
    separate = "glocal_transformer.mem_attention.attention.in_proj_weight"
    inferred["memory"] = "joint" if joint in state else "separate" if separate in state else None
    inferred["selection"] = (
        "automated" if "glocal_transformer.selector.weight" in state else "manual"
    )
    if mode != "predcls":
        prefix = "object_classifier."
        if f"{prefix}intermediate.0.weight" in state:
            inferred["classifier_dim"] = int(state[f"{prefix}intermediate.0.weight"].shape[0])
        if f"{prefix}pos_embed.1.weight" in state:
            inferred["pos_dim"] = int(state[f"{prefix}pos_embed.1.weight"].shape[0])
        inferred["tracking"] = f"{prefix}encoder_tran.layers.0.linear1.weight" in state
        if f"{prefix}decoder_lin.heads.mu_1.weight" in state:
            inferred["object_head"] = "gmm"
        if f"{prefix}mem_attention.in_proj_weight" in state:
            inferred["object_memory"] = True
    return inferred


def import_tempura(source: Any, *, mode: str = "predcls", **options: Any) -> Any:
    """``import_original("tempura", source, mode=..., **options)``: a :class:`TEMPURA` with the
    original checkpoint's weights and memory loaded, in eval mode.

    Read from the checkpoint: STTran's widths
    (:func:`~m3sgg.models.sttran.convert.relation_widths`), ``k`` (the mixture components),
    ``memory`` (joint, separate or none), ``selection`` (manual or automated) and, in
    sgcls/sgdet, the classifier's widths, ``tracking`` and ``object_head``. Not in the file, so
    given in ``options`` where they differ from the defaults: ``heads`` (8), ``fusion`` (late),
    ``lam`` (0.5), ``memory_weighting``, ``contrastive_weight``, ``eos_coef``,
    ``take_object_features`` (then the box width is read from the classifier). ``options`` win
    over what is read. The options used are kept as ``model.config_options`` (what ``m3sgg
    import-checkpoint`` writes into the checkpoint's config; the memory goes into the model's
    state, which ``m3sgg evaluate`` loads).

    Raises:
        DataError: unreadable source, or a key unknown, missing or mis-shaped (one line).
    """
    from m3sgg.models.tempura.model import TEMPURA

    state, rel_memory, object_memory, where = _load(source)
    chosen = {**_inferred(state, mode, where), **options}
    intermediate = "object_classifier.intermediate.0.weight"
    if chosen.get("take_object_features") and "object_dim" not in options and intermediate in state:
        # subj_fc reads the classifier's features: the box width is the classifier's input
        # less the class embedding and the position embedding
        width = int(state[intermediate].shape[1])
        chosen["object_dim"] = width - chosen["embed_dim"] - chosen.get("pos_dim", 128)
    model = TEMPURA(mode=mode, **chosen)
    checkpoint = {"state_dict": state, "rel_memory": rel_memory, "object_memory": object_memory}
    model.load_state_dict(convert_original(checkpoint, model, where))
    model.config_options = {
        k: v for k, v in chosen.items() if k not in ("object_dim", "union_channels")
    }
    return model.eval()


def original_checkpoint(model: Any) -> dict[str, Any]:
    """``model``'s weights and memory in the original's checkpoint layout (``{"state_dict",
    "object_memory", "rel_memory"}``, ``rel_memory`` ``[]`` before the first memory): the
    inverse of :func:`convert_original`, for tests and hand-over to the original's code."""
    state = model.state_dict()
    heads = _gmm_heads(model)
    fused = {f"{head}.proj.{name}" for head in heads for name in _LINEAR}
    original = {}
    for source, target in key_map(model).items():
        if target is None or target in fused:  # a mixture head's fused layer: below
            continue
        original[source] = state[target].clone()
    for head, gmm in heads.items():
        for part in ("mu", "var", "pi"):
            for i in range(model.k):
                rows = gmm.fused_index(part, i)
                original[f"{head}.heads.{part}_{i + 1}.weight"] = state[f"{head}.proj.weight"][rows]
                original[f"{head}.heads.{part}_{i + 1}.bias"] = state[f"{head}.proj.bias"][rows]
    rel_memory: Any = []
    if model.memory_fusion is not None and model.memory_fusion.is_ready:
        memory = state["memory_fusion.memory"]
        rows = torch.cumsum(torch.tensor([0, *(GROUP_SIZES[g] for g in _GROUPS)]), 0).tolist()
        rel_memory = {g: memory[rows[i] : rows[i + 1]].clone() for i, g in enumerate(_GROUPS)}
    object_memory: Any = []
    classifier = model.object_classifier
    objects = classifier.memory_fusion if classifier is not None else None
    if objects is not None and objects.is_ready:
        object_memory = state[f"{_OBJECT_MEMORY}.memory"].clone()
    return {"state_dict": original, "object_memory": object_memory, "rel_memory": rel_memory}

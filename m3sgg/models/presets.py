"""Small widths for the built-in models, used when training on the toy dataset.

The models' own defaults are the published sizes (STTran: d=1936, 1 + 3 layers), which take
about a second per step on a 2-core CPU. On the toy dataset (``data.path`` unset) m3sgg
starts from these presets, so a full run takes about a minute; ``model.options`` entries
override them key by key.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TOY_PRESETS", "toy_preset"]

TOY_PRESETS: dict[str, dict[str, Any]] = {
    "sttran": {
        "proj_dim": 32,
        "embed_dim": 16,
        "conv_dim": 16,
        "heads": 4,
        "ff_dim": 128,
        "enc_layers": 1,
        "dec_layers": 1,
    },
    "stket": {
        "proj_dim": 32,
        "embed_dim": 16,
        "conv_dim": 16,
        "heads": 4,
        "ff_dim": 128,
        "enc_layers": 1,
        "dec_layers": 1,
        "state_dims": [32, 32, 32],
    },
    "tempura": {
        "proj_dim": 32,
        "embed_dim": 16,
        "conv_dim": 16,
        "heads": 4,
        "ff_dim": 128,
        "enc_layers": 1,
        "dec_layers": 1,
    },
    "dsg_detr": {
        "proj_dim": 32,
        "embed_dim": 16,
        "conv_dim": 16,
        "heads": 4,
        "ff_dim": 128,
        "enc_layers": 1,
        "dec_layers": 1,
        "object_heads": 4,
        "object_ff_dim": 128,
        "object_layers": 1,
        "box_embed_dim": 16,
        "classifier_dim": 128,
    },
    "easg_fc": {"hidden_dim": 128, "proj_dim": 128},
    "sttran_easg": {"d_model": 64, "proj_dim": 32, "embed_dim": 16},
}


def toy_preset(model: str) -> dict[str, Any]:
    """The toy-size options of a built-in model (``{}`` for others: their own defaults)."""
    return dict(TOY_PRESETS.get(model, {}))

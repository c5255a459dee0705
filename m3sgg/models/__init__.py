"""Models: the registry, the model protocol, and the built-in models (registered on import).

Built-in: ``"sttran"``, ``"stket"``, ``"tempura"`` and ``"dsg_detr"`` (Action Genome: predcls,
sgcls, sgdet), ``"easg_fc"`` and ``"sttran_easg"`` (EASG: edgecls, sgcls, easgcls). Plugins add
models with :func:`register_model`; the engine builds any of them with :func:`build_model`.
"""

from m3sgg.models.base import AG_PREDICTION_KEYS, ModelProtocol, SceneGraphModel
from m3sgg.models.dsg_detr import DSGDETR
from m3sgg.models.easg import EASGFC, STTranEASG
from m3sgg.models.originals import import_original, original_importers, register_original
from m3sgg.models.registry import (
    ModelSpec,
    available_models,
    build_model,
    get_model_spec,
    register_model,
    unregister_model,
)
from m3sgg.models.stket.model import STKET
from m3sgg.models.sttran import STTran
from m3sgg.models.tempura import TEMPURA

__all__ = [
    "AG_PREDICTION_KEYS",
    "DSGDETR",
    "EASGFC",
    "STKET",
    "TEMPURA",
    "ModelProtocol",
    "ModelSpec",
    "STTran",
    "STTranEASG",
    "SceneGraphModel",
    "available_models",
    "build_model",
    "get_model_spec",
    "import_original",
    "original_importers",
    "register_model",
    "register_original",
    "unregister_model",
]

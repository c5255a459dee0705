"""TEMPURA (Nag et al., CVPR 2023, github:sayaknag/unbiasedSGG): unbiased VidSGG on STTran.

One concept per module:

- :mod:`~m3sgg.models.tempura.model`: :class:`TEMPURA` (registered as ``"tempura"``);
- :mod:`~m3sgg.models.tempura.gmm`: the mixture (GMM) predicate heads and their uncertainty;
- :mod:`~m3sgg.models.tempura.memory`: the predicate memory (streaming sums per epoch), its
  attention read-out and the fusion ``lambda * f + (1 - lambda) * memory``;
- :mod:`~m3sgg.models.tempura.handlers`: the engine handlers the model contributes (uncertainty
  pass, memory rebuild);
- :mod:`~m3sgg.models.tempura.losses`: attention NLL, object cross-entropy with the background
  weight, the object contrastive loss;
- :mod:`~m3sgg.models.tempura.objects`: the object classifier (tracking encoder, mixture head,
  object memory);
- :mod:`~m3sgg.models.tempura.postprocess`: the original's sgdet relabelling for frames without
  detections;
- :mod:`~m3sgg.models.tempura.convert`: the original's checkpoints
  (``import_original("tempura", ...)``).
"""

from m3sgg.models.originals import register_original
from m3sgg.models.tempura.convert import import_tempura
from m3sgg.models.tempura.gmm import GMMHead, gmm_state_from_original
from m3sgg.models.tempura.losses import attention_nll, contrastive_loss, object_cross_entropy
from m3sgg.models.tempura.memory import WEIGHTINGS, MemoryAccumulator, MemoryFusion
from m3sgg.models.tempura.model import TEMPURA, TEMPURA_PREDICTION_KEYS

register_original("tempura", import_tempura)

__all__ = [
    "TEMPURA",
    "TEMPURA_PREDICTION_KEYS",
    "WEIGHTINGS",
    "GMMHead",
    "MemoryAccumulator",
    "MemoryFusion",
    "attention_nll",
    "contrastive_loss",
    "gmm_state_from_original",
    "import_tempura",
    "object_cross_entropy",
]

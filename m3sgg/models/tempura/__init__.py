"""TEMPURA (Nag et al., CVPR 2023, github:sayaknag/unbiasedSGG): unbiased VidSGG on STTran.

Its own pieces, one concept per module:

- :mod:`~m3sgg.models.tempura.gmm`: the mixture (GMM) predicate heads and their uncertainty;
- :mod:`~m3sgg.models.tempura.memory`: the predicate memory (streaming sums per epoch), its
  attention read-out and the fusion ``lambda * f + (1 - lambda) * memory``;
- :mod:`~m3sgg.models.tempura.losses`: attention NLL, object cross-entropy with the background
  weight, the object contrastive loss.
"""

from m3sgg.models.tempura.gmm import GMMHead, gmm_state_from_original
from m3sgg.models.tempura.losses import attention_nll, contrastive_loss, object_cross_entropy
from m3sgg.models.tempura.memory import WEIGHTINGS, MemoryAccumulator, MemoryFusion

__all__ = [
    "WEIGHTINGS",
    "GMMHead",
    "MemoryAccumulator",
    "MemoryFusion",
    "attention_nll",
    "contrastive_loss",
    "gmm_state_from_original",
    "object_cross_entropy",
]

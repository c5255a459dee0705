"""STKET (Pu et al., IEEE TIP 2024): spatial-temporal knowledge priors on STTran's backbone.

Modules: :mod:`.priors` (the prior tables: counting, reading, writing), :mod:`.attention`
(prior-augmented encoder and decoder layers), :mod:`.selection` (which prior and which key frames
each relation uses, vectorised), :mod:`.decoders` (the spatial encoder, temporal decoder and
ensemble decoder on packed tensors), :mod:`.model` (:class:`STKET` on STTran's relation tokens,
registered as ``"stket"``), :mod:`.convert` (the original's checkpoint layout; registered with
``import_original("stket", ...)``).
"""

from m3sgg.models.stket.priors import STKETPriors, count_priors, load_priors, save_priors

__all__ = ["STKETPriors", "count_priors", "load_priors", "save_priors"]

"""The protocol every m3sgg model follows, so the engine needs nothing model-specific.

A model is a ``torch.nn.Module`` that:

- ``forward(batch) -> dict[str, Tensor]``: predictions for a collated
  :class:`~m3sgg.data.collate.Batch`, batch-level indices, with at least the keys
  ``prediction_keys`` names (for Action Genome, the contract of ``docs/metrics.md``); it may add
  more (logits the loss needs);
- ``loss(predictions, batch) -> dict[str, Tensor]``: named scalar losses, already weighted; the
  trainer back-propagates their sum and logs each one;
- declares ``prediction_keys``, ``supported_datasets`` and ``supported_modes`` (class attributes
  or properties), and ``input_section``: the feature section its batches are collated from
  (``"gt"`` for ground-truth boxes, ``"det"`` for detections); optionally ``train_section``, the
  section training batches come from when it differs (``"det_train"`` in Action Genome sgdet).

Optional, for a model that predicts with several heads: ``output_heads`` (a tuple of names) and
``rank_head`` (one of them). Its predictions then also carry ``"<head>/<key>"`` for each head's
version of the contract keys; the evaluator scores every head under ``"<head>/..."`` metric keys
and the rank head under the plain ones too (see :mod:`m3sgg.engine.evaluator`).

Optionally, ``train_handlers() -> list[Handler]``: engine handlers
(:class:`m3sgg.engine.handlers.base.Handler`) for the model's own epoch-level work, which the
:class:`~m3sgg.engine.trainer.Trainer` attaches to the train engine with the default ones (e.g.
TEMPURA's uncertainty pass at ``M3sggEvents.FORWARD_COMPLETED`` and its memory rebuild at
EPOCH_COMPLETED). The engine has no model-specific branch; the model file builds them in that
method (importing its handler module there, so the model itself does not import the engine).

Subclassing :class:`SceneGraphModel` is optional: :class:`ModelProtocol` is what is checked, so a
plugin may bring any module with these members. Register the factory with
:func:`m3sgg.models.register_model`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from m3sgg.errors import ConfigError

if TYPE_CHECKING:
    from m3sgg.data.collate import Batch

__all__ = ["AG_PREDICTION_KEYS", "ModelProtocol", "SceneGraphModel", "resolve_loss_weights"]

#: Keys an Action Genome model's predictions carry for the metrics (``docs/metrics.md``).
AG_PREDICTION_KEYS: tuple[str, ...] = (
    "boxes",
    "labels",
    "scores",
    "pred_labels",
    "pred_scores",
    "im_idx",
    "pair_idx",
    "attention_distribution",
    "spatial_distribution",
    "contacting_distribution",
)


def resolve_loss_weights(
    model: str, loss_weights: Mapping[str, float] | None, names: Sequence[str]
) -> dict[str, float]:
    """The multiplier of each loss in ``names`` (``loss_weights``'; a missing name weighs 1).

    Raises:
        ConfigError: ``loss_weights`` names a loss not in ``names`` (one line, naming ``model``).
    """
    weights = dict(loss_weights or {})
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ConfigError(f"{model}: unknown loss_weights {unknown}; the losses are {list(names)}")
    return {name: float(weights.get(name, 1.0)) for name in names}


@runtime_checkable
class ModelProtocol(Protocol):
    """What the engine relies on (structural: no subclassing needed)."""

    prediction_keys: tuple[str, ...]
    supported_datasets: frozenset[str]
    supported_modes: frozenset[str]
    input_section: str

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]: ...

    def loss(
        self, predictions: Mapping[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]: ...


class SceneGraphModel(nn.Module):
    """Convenience base class: declares the protocol's members; subclasses fill them in."""

    prediction_keys: ClassVar[tuple[str, ...]] = ()
    supported_datasets: ClassVar[frozenset[str]] = frozenset()
    supported_modes: ClassVar[frozenset[str]] = frozenset()
    #: The model's registered name, for messages.
    model_name: ClassVar[str] = ""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    @property
    def input_section(self) -> str:
        """Feature section to collate batches from: ``"det"`` in sgdet, ``"gt"`` otherwise."""
        return "det" if self.mode == "sgdet" else "gt"

    @property
    def train_section(self) -> str:
        """Feature section to collate training batches from: ``"det_train"`` in sgdet (the
        original STTran's training inputs: detections with assigned labels and the missed GT
        boxes supplied), else the input section."""
        return "det_train" if self.mode == "sgdet" else self.input_section

    def check_section(self, batch: Batch) -> None:
        """Refuse a batch collated from another section than this phase's (:attr:`train_section`
        in training, :attr:`input_section` in evaluation).

        Raises:
            ConfigError: one line naming the model, mode, phase and both sections.
        """
        wanted = self.train_section if self.training else self.input_section
        if batch.section != wanted:
            phase = "training" if self.training else "evaluation"
            raise ConfigError(
                f"{self.model_name} in {self.mode} ({phase}) needs batches collated with "
                f"section={wanted!r}, got {batch.section!r}"
            )

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(
        self, predictions: Mapping[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

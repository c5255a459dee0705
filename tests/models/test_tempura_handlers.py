"""TEMPURA's handlers on their own: the eval-mode pass feeds the sums; the rebuild installs them."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from m3sgg.models.tempura.handlers import MemoryRebuild, UncertaintyPass
from m3sgg.models.tempura.memory import MemoryAccumulator, MemoryFusion


class StubModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fusion = MemoryFusion(2, 3)
        self.calls: list[tuple[bool, bool, bool]] = []

    def memory_inputs(self, batch, uncertainty):
        self.calls.append((self.training, torch.is_grad_enabled(), uncertainty))
        features, targets = batch
        al = torch.full(targets.shape, 0.5) if uncertainty else None
        return features, targets, al, None

    def set_memory(self, memory: torch.Tensor) -> None:
        self.fusion.set_memory(memory)


def test_pass_runs_in_eval_mode_without_grad_and_rebuild_installs_the_mean() -> None:
    model = StubModel().train()
    accumulator = MemoryAccumulator(3, 2, "simple")
    uncertainty, rebuild = UncertaintyPass(model, accumulator), MemoryRebuild(model, accumulator)
    batches = [
        (torch.tensor([[1.0, 0.0], [3.0, 2.0]]), torch.tensor([[1, 0, 0], [1, 1, 0]])),
        (torch.tensor([[5.0, 4.0]]), torch.tensor([[0, 1, 0]])),
    ]
    for batch in batches:
        uncertainty(SimpleNamespace(state=SimpleNamespace(step_batch=batch)))
    assert model.calls == [(False, False, False), (False, False, False)]
    assert model.training
    assert not model.fusion.is_ready
    rebuild(SimpleNamespace(state=SimpleNamespace()))
    assert model.fusion.is_ready
    expected = torch.tensor([[2.0, 1.0], [4.0, 3.0], [0.0, 0.0]])
    torch.testing.assert_close(model.fusion.memory, expected)
    assert torch.equal(accumulator.compute(), torch.zeros(3, 2))  # cleared for the next epoch


def test_weighted_memory_asks_for_uncertainty_and_state_round_trips() -> None:
    model = StubModel()
    accumulator = MemoryAccumulator(3, 2, "al")
    handler = UncertaintyPass(model, accumulator)
    batch = (torch.tensor([[1.0, 2.0]]), torch.tensor([[0, 0, 1]]))
    handler(SimpleNamespace(state=SimpleNamespace(step_batch=batch)))
    assert model.calls[-1][2] is True
    other = UncertaintyPass(model, MemoryAccumulator(3, 2, "al"))
    other.load_state_dict(handler.state_dict())
    assert torch.equal(other.accumulator.compute(), accumulator.compute())
    assert UncertaintyPass.rank_local

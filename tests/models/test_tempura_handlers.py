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


class StubObjectModel(StubModel):
    """A stub with an object memory too: its inputs are the batch's third and fourth parts."""

    def __init__(self) -> None:
        super().__init__()
        self.objects = MemoryFusion(2, 2)
        self.object_calls: list[bool] = []

    def memory_inputs(self, batch, uncertainty):
        return super().memory_inputs(batch[:2], uncertainty)

    def object_memory_inputs(self, batch):
        self.object_calls.append(self.training)
        return batch[2], batch[3]

    def set_object_memory(self, memory: torch.Tensor) -> None:
        self.objects.set_memory(memory)


def test_object_memory_alongside_the_predicate_memory() -> None:
    """Object features [[2, 0], [4, 2]] of class 0 and [[1, 1]] of class 1 give the class means
    [[3, 1], [1, 1]]; the state carries both sums and resumes both."""
    model = StubObjectModel().train()
    relations, objects = MemoryAccumulator(3, 2, "simple"), MemoryAccumulator(2, 2, "simple")
    uncertainty = UncertaintyPass(model, relations, objects)
    rebuild = MemoryRebuild(model, relations, objects)
    batches = [
        (
            torch.tensor([[1.0, 0.0]]),
            torch.tensor([[1, 0, 0]]),
            torch.tensor([[2.0, 0.0], [1.0, 1.0]]),
            torch.tensor([[1, 0], [0, 1]]),
        ),
        (torch.zeros(0, 2), torch.zeros(0, 3), torch.tensor([[4.0, 2.0]]), torch.tensor([[1, 0]])),
    ]
    uncertainty(SimpleNamespace(state=SimpleNamespace(step_batch=batches[0])))
    state = uncertainty.state_dict()
    assert set(state) >= {"sums", "norm", "object"}
    resumed = UncertaintyPass(
        model, MemoryAccumulator(3, 2, "simple"), MemoryAccumulator(2, 2, "simple")
    )
    resumed.load_state_dict(state)
    resumed(SimpleNamespace(state=SimpleNamespace(step_batch=batches[1])))
    assert model.object_calls == [False, False] and model.training
    MemoryRebuild(model, resumed.accumulator, resumed.object_accumulator)(
        SimpleNamespace(state=SimpleNamespace())
    )
    torch.testing.assert_close(model.objects.memory, torch.tensor([[3.0, 1.0], [1.0, 1.0]]))
    torch.testing.assert_close(model.fusion.memory, torch.tensor([[1.0, 0.0], [0, 0], [0, 0]]))
    assert rebuild.object_accumulator is objects
    # an object memory alone (no predicate memory)
    alone = UncertaintyPass(model, None, MemoryAccumulator(2, 2, "simple"))
    alone(SimpleNamespace(state=SimpleNamespace(step_batch=batches[1])))
    assert set(alone.state_dict()) == {"object"}

"""BEFORE_OPTIMIZER_STEP: gradients present and unscaled, the pre-clip norm in the state, fired
once per optimizer step; hand-computed on a one-parameter model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from m3sgg.config import load_config
from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import FunctionHandler
from m3sgg.engine.trainer import Trainer


class Square(nn.Module):
    """loss = (w * x)^2, so d loss / d w = 2 w x^2: with w = 1, x = 2 the gradient is 8."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.unused = nn.Parameter(torch.ones(()))  # never gets a gradient

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": self.w * x}

    def loss(self, predictions: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"square": (predictions["y"] ** 2).sum()}


def run(
    *overrides: str, batches: int = 1, extra=None
) -> tuple[Trainer, list[tuple[float, float, int]]]:
    config = load_config(
        None,
        [
            "run.device=cpu",
            "optim.optimizer=sgd",
            "optim.momentum=0",
            "optim.lr=0.1",
            "train.epochs=1",
            "train.eval_every_epochs=0",
            "log.every_iters=1000",
            *overrides,
        ],
    )
    model = Square()
    data = [torch.tensor([2.0])] * batches
    trainer = Trainer(model, config, data, device="cpu")
    seen: list[tuple[float, float, int]] = []

    def look(engine):
        seen.append((float(model.w.grad), float(engine.state.grad_norm), engine.state.iteration))

    trainer.handlers.add(FunctionHandler(look, [M3sggEvents.BEFORE_OPTIMIZER_STEP], "grad_probe"))
    if extra is not None:
        trainer.handlers.add(
            FunctionHandler(
                lambda engine: extra(engine, model), [M3sggEvents.BEFORE_OPTIMIZER_STEP], "extra"
            )
        )
    trainer.train_loop()
    return trainer, seen


def test_gradients_and_pre_clip_norm_are_visible_before_the_step():
    trainer, seen = run("optim.grad_clip=1.0")
    assert seen == [(8.0, 8.0, 1)]  # unclipped gradient, its norm
    # then clipped to norm 1 (gradient 1.0) and stepped: w = 1 - 0.1 * 1.0
    assert float(trainer.model.w.detach()) == pytest.approx(0.9, abs=1e-6)
    assert trainer.model.w.grad is None  # zeroed after the step, as before


def test_without_clipping_the_step_uses_the_full_gradient():
    trainer, seen = run("optim.grad_clip=null")
    assert seen == [(8.0, 8.0, 1)]
    assert float(trainer.model.w.detach()) == pytest.approx(1 - 0.1 * 8, abs=1e-6)


def test_fired_once_per_optimizer_step_under_accumulation():
    # each batch's loss is divided by 2, so one batch adds w x^2 / 1 = 4 w: step 1 sees 4 + 4 = 8,
    # steps w to 1 - 0.1 * 8 = 0.2; step 2 sees 2 * 4 * 0.2 = 1.6
    _, seen = run("optim.accumulate_steps=2", "optim.grad_clip=null", batches=4)
    assert [it for *_, it in seen] == [2, 4]
    assert seen[0][:2] == (8.0, 8.0)
    assert seen[1][:2] == (pytest.approx(1.6, abs=1e-6), pytest.approx(1.6, abs=1e-6))


@pytest.mark.parametrize(("sets_norm", "w_after"), [(True, 0.9), (False, 0.95)])
def test_a_handler_that_changes_gradients_sets_the_norm_clipping_uses(sets_norm, w_after):
    def halve(engine, model):
        model.w.grad.mul_(0.5)  # gradient 4
        if sets_norm:
            engine.state.grad_norm = torch.nn.utils.get_total_norm([model.w.grad])

    # clipped by norm 4: gradient 1, w = 0.9; by the stale norm 8: gradient 0.5, w = 0.95
    trainer, seen = run("optim.grad_clip=1.0", extra=halve)
    assert seen == [(8.0, 8.0, 1)]  # the probe runs first (attached first, same priority)
    assert float(trainer.model.w.detach()) == pytest.approx(w_after, abs=1e-6)


def test_fp16_gradients_are_unscaled_for_the_handlers():
    trainer, seen = run("optim.amp=fp16", "optim.grad_clip=null")
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() >= 1.0
    assert seen == [(8.0, 8.0, 1)]  # not 8 * scale
    assert float(trainer.model.w.detach()) == pytest.approx(1 - 0.1 * 8, abs=1e-3)

"""Multi-head models: every head scored under its own keys, the rank head also under the plain."""

from __future__ import annotations

import pytest
import torch

from m3sgg.data.registry import get_dataset_spec
from m3sgg.engine.evaluator import Evaluator, head_view, output_heads
from m3sgg.engine.trainer import Trainer
from m3sgg.metrics import build_metrics

DISTRIBUTIONS = ("attention_distribution", "spatial_distribution", "contacting_distribution")


class Heads(torch.nn.Module):
    """Around a one-head model: head ``"model"`` is its output, head ``"flipped"`` the reversed
    scores; the plain keys are the rank head's (or one head only, for reference runs)."""

    def __init__(self, base, heads=("model", "flipped"), rank_head=None, only=None):
        super().__init__()
        self.base = base
        self.output_heads = heads
        self.rank_head = rank_head
        self.only = only
        self.input_section = base.input_section

    def loss(self, predictions, batch):
        return self.base.loss(predictions, batch)

    def forward(self, batch):
        out = dict(self.base(batch))
        versions = {
            "model": {k: out[k] for k in DISTRIBUTIONS},
            "flipped": {k: out[k].flip(1) for k in DISTRIBUTIONS},
        }
        if self.only is not None:
            return {**out, **versions[self.only]}
        for head in self.output_heads:
            out.update({f"{head}/{k}": v for k, v in versions[head].items()})
        out.update(versions[self.rank_head or self.output_heads[0]])
        return out


def _evaluate(built: Trainer, model: torch.nn.Module) -> dict:
    config = built.config
    spec = get_dataset_spec(config.data.dataset)
    metrics = build_metrics(config.data.dataset, config.data.mode, config.eval)
    return Evaluator(model, built.dataloader_test, metrics, spec.split).eval_loop()


def _scalars(metrics: dict, prefix: str = "") -> dict:
    return {
        k[len(prefix) :]: v
        for k, v in metrics.items()
        if k.startswith(prefix) and isinstance(v, float) and k[len(prefix) :].count("/") == 1
    }


@pytest.mark.parametrize("rank_head", ["model", "flipped"])
def test_each_head_equals_that_head_evaluated_alone(small_config, rank_head: str):
    built = Trainer.from_config(small_config("train.epochs=1"))
    built.train_epoch(1)
    base = built.model
    both = _evaluate(built, Heads(base, rank_head=rank_head))
    for head in ("model", "flipped"):
        alone = _scalars(_evaluate(built, Heads(base, only=head)))
        assert alone and _scalars(both, f"{head}/") == alone
    assert _scalars(both) == _scalars(both, f"{rank_head}/")  # plain keys: the rank head
    # the heads differ, so the test can tell them apart
    assert _scalars(both, "model/") != _scalars(both, "flipped/")
    assert both["model/with/per_predicate"] is not None


def test_head_view_and_declared_heads():
    preds = {"labels": 1, "a": 2, "x/a": 3, "y/a": 4, "y/b": 5}
    assert head_view(preds, "y") == {"labels": 1, "a": 4, "b": 5}
    assert head_view(preds, "x") == {"labels": 1, "a": 3}
    base = torch.nn.Linear(1, 1)
    assert output_heads(base) == ((), None)
    base.output_heads = ("s", "t")
    assert output_heads(base) == (("s", "t"), "s")
    base.rank_head = "t"
    assert output_heads(torch.nn.DataParallel(base)) == (("s", "t"), "t")
    base.rank_head = "e"
    with pytest.raises(ValueError, match="rank_head 'e'"):
        output_heads(base)

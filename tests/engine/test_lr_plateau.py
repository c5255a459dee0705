"""The plateau scheduler's improvement threshold: relative (torch's default) or absolute."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from m3sgg.config import load_config
from m3sgg.engine.handlers.lr import LRPlateau
from m3sgg.errors import ConfigError


def _lrs(scores: list[float], **options) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    plateau = LRPlateau(optimizer, "with/R@20", patience=0, **options)
    engine = SimpleNamespace(state=SimpleNamespace(eval_metrics={}))
    lrs = []
    for score in scores:
        engine.state.eval_metrics = {"with/R@20": score}
        plateau(engine)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_absolute_threshold_by_hand():
    # STKET's recipe: patience 0, threshold 1e-3 absolute. 0.5009 is not 1e-3 above the best
    # (0.5): the lr halves; 0.5020 is (0.5 + 1e-3 < 0.502): it stays; 0.5025 is not above
    # 0.502 + 1e-3: halves again
    assert _lrs([0.5, 0.5009, 0.502, 0.5025], threshold=1e-3, threshold_mode="abs") == [
        1.0,
        0.5,
        0.5,
        0.25,
    ]
    # torch's default (1e-4 relative): every step above counts
    assert _lrs([0.5, 0.5009, 0.502, 0.5025]) == [1.0, 1.0, 1.0, 1.0]


def test_config_validates_the_threshold():
    config = load_config(None, ["schedule.threshold=1e-3", "schedule.threshold_mode=abs"])
    assert config.schedule.threshold == 1e-3 and config.schedule.threshold_mode == "abs"
    with pytest.raises(ConfigError, match=r"schedule\.threshold_mode"):
        load_config(None, ["schedule.threshold_mode=absolute"])
    with pytest.raises(ConfigError, match=r"schedule\.threshold: must be >= 0"):
        load_config(None, ["schedule.threshold=-1"])


def test_a_watched_metric_the_evaluation_does_not_report_is_one_config_error(tmp_path):
    from ignite.engine import Engine

    from m3sgg.engine.handlers.checkpointing import BestCheckpoint
    from m3sgg.engine.handlers.early_stopping import EarlyStopping

    trainer = Engine(lambda engine, batch: None)
    trainer.state.eval_metrics = {"with/R@20": 0.5, "with/frames": 3, "loss": 1.0}
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    watchers = [
        LRPlateau(optimizer, "with/R@21"),
        BestCheckpoint(lambda name: tmp_path / name, tmp_path, ["with/R@21"]),
        EarlyStopping(trainer, "with/R@21", patience=2),  # a KeyError traceback before
    ]
    for handler in watchers:
        with pytest.raises(ConfigError) as err:
            handler(trainer)
        assert str(err.value) == (
            f"{handler.name} watches 'with/R@21', which the evaluation does not report; "
            "available: ['with/R@20', 'with/frames']"
        )

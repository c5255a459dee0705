"""STTran trains on the built-in toy Action Genome through the real reader and feature store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from m3sgg.data.action_genome import ActionGenome
from m3sgg.data.collate import collate, split_predictions
from m3sgg.data.registry import get_dataset_spec
from m3sgg.data.toy import make_toy_action_genome
from m3sgg.metrics.action_genome import ActionGenomeRecall
from m3sgg.models import build_model

DIM = 16


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_action_genome(
        tmp_path_factory.mktemp("toy") / "ag", videos=10, seed=0, object_dim=DIM, union_channels=4
    )


@pytest.mark.parametrize("mode", ["predcls", "sgcls", "sgdet"])
def test_few_steps_on_toy_data(toy_root: Path, mode: str) -> None:
    train = ActionGenome(toy_root, "train", features=toy_root / "features")
    test = ActionGenome(toy_root, "test", features=toy_root / "features")
    model = build_model(
        "sttran",
        "action_genome",
        mode,
        object_dim=DIM,
        union_channels=4,
        proj_dim=8,
        embed_dim=4,
        conv_dim=4,
        heads=4,
        ff_dim=32,
        dec_layers=1,
        dropout=0.0,
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_collate = get_dataset_spec("action_genome").train_collate
    assert train_collate is not None
    batch = train_collate(model)([train[i] for i in range(len(train))])
    assert batch.section == ("det_train" if mode == "sgdet" else "gt")
    history = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = sum(model.loss(model(batch), batch).values())
        loss.backward()
        optimiser.step()
        history.append(loss.item())
    assert history[-1] < history[0]

    model.eval()
    metric = ActionGenomeRecall(mode=mode)
    evaluation = collate([test[i] for i in range(len(test))], section=model.input_section)
    with torch.no_grad():
        for gt, pred in split_predictions(evaluation, model(evaluation)):
            metric.update((gt, pred))
    result = metric.compute()
    assert 0.0 <= result["R@20"] <= 1.0 and result["frames"] > 0

"""TEMPURA through the Trainer on toy data, in predcls and in sgdet (training on the det_train
section, evaluating on det, tracking and contrastive loss on): the memory's life cycle, exact
resume, evaluate from a checkpoint, and a toy run lifting mR@20."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Events

from m3sgg.config import load_config
from m3sgg.engine.builders import evaluate_checkpoint
from m3sgg.engine.checkpoint import load_checkpoint
from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import FunctionHandler
from m3sgg.engine.handlers.metrics_file import read_metrics_file
from m3sgg.engine.trainer import Trainer

RUN = [
    "model.name=tempura",
    "data.toy_videos=16",
    "train.epochs=3",
    "log.every_iters=1000",
    "checkpoint.keep=3",
    "checkpoint.every_iters=4",
]


#: Per mode: the options of the run (sgdet: the SGDET recipe's tracking and contrastive loss).
MODES = {
    "predcls": [],
    "sgdet": [
        "data.mode=sgdet",
        "model.options.tracking=true",
        "model.options.contrastive_weight=1.0",
    ],
    "sgcls_object_memory": [  # the original's -obj_mem_compute beside the predicate memory
        "data.mode=sgcls",
        "model.options.tracking=true",
        "model.options.object_memory=true",
    ],
}


def _config(output: Path, name: str, *extra: str) -> Any:
    return load_config(None, [*RUN, f"run.output={output}", f"run.name={name}", *extra])


class Recorder:
    """Probes: the memory state each step sees, and the memory inputs of every step (taken just
    before the uncertainty pass, the same way), to rebuild each epoch's memory by brute force."""

    def __init__(self, trainer: Trainer):
        self.model = trainer.core_model
        self.ready: dict[int, set[bool]] = {}
        self.inputs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.memories: dict[int, torch.Tensor] = {}
        self.sections: set[str] = set()
        add = trainer.handlers.add
        add(FunctionHandler(self.step, [Events.ITERATION_STARTED], "probe_ready"))
        add(FunctionHandler(self.take, [M3sggEvents.FORWARD_COMPLETED], "probe_inputs", 40))
        add(FunctionHandler(self.keep, [Events.EPOCH_COMPLETED], "probe_memory", 160))

    def step(self, engine: Any) -> None:
        self.ready.setdefault(engine.state.epoch, set()).add(self.model.memory_fusion.is_ready)

    def take(self, engine: Any) -> None:
        self.sections.add(engine.state.step_batch.section)
        self.model.eval()
        with torch.no_grad():
            features, targets, _, _ = self.model.memory_inputs(engine.state.step_batch, False)
        self.model.train()
        self.inputs.setdefault(engine.state.epoch, []).append((features, targets))

    def keep(self, engine: Any) -> None:
        self.memories[engine.state.epoch] = self.model.memory_fusion.memory.clone()


@pytest.fixture(scope="module", params=list(MODES))
def trained(
    request: pytest.FixtureRequest, toy_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("tempura-runs")
    mode = request.param
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests (conftest): the resume test compares bitwise
    try:
        trainer = Trainer.from_config(_config(out, "full", *MODES[mode]))
        recorder = Recorder(trainer)
        untrained = trainer.evaluator.eval_loop()
        trainer.train_loop()
    finally:
        torch.set_num_threads(threads)
    return {
        "out": out,
        "mode": mode,
        "trainer": trainer,
        "recorder": recorder,
        "untrained": untrained,
    }


def test_handlers_are_in_the_table(trained: dict[str, Any]) -> None:
    table = trained["trainer"].describe()
    assert "uncertainty_pass" in table and "memory_rebuild" in table
    names = trained["trainer"].handlers.names()
    assert names.index("evaluation") < names.index("memory_rebuild")
    assert names.index("memory_rebuild") < names.index("last_checkpoint")


def test_training_batches_come_from_the_models_train_section(trained: dict[str, Any]):
    model = trained["trainer"].core_model
    assert trained["recorder"].sections == {model.train_section}
    if trained["mode"] == "sgdet":
        assert (model.train_section, model.input_section) == ("det_train", "det")
        assert model.object_classifier.tracker is not None and model.contrastive_weight == 1.0


def test_object_memory_is_rebuilt_and_checkpointed(trained: dict[str, Any]) -> None:
    model = trained["trainer"].core_model
    objects = model._object_memory()
    if trained["mode"] != "sgcls_object_memory":
        assert objects is None
        return
    assert objects.is_ready
    run = trained["out"] / "full"
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    memory = last["model"]["object_classifier.memory_fusion.memory"]
    assert torch.equal(memory, objects.memory) and bool(memory.abs().sum() > 0)
    assert "object" in last["handlers"]["uncertainty_pass"]


def test_epoch_0_trains_without_memory_then_each_epoch_rebuilds_it(trained: dict[str, Any]):
    recorder = trained["recorder"]
    assert recorder.ready == {1: {False}, 2: {True}, 3: {True}}
    for epoch, steps in recorder.inputs.items():
        dim = steps[0][0].shape[1]
        sums, counts = torch.zeros(26, dim, dtype=torch.float64), torch.zeros(26)
        for features, targets in steps:  # brute force: a loop over pairs and predicates
            for i in range(features.shape[0]):
                for p in torch.nonzero(targets[i]).flatten().tolist():
                    sums[p] += features[i].double()
                    counts[p] += 1
        expected = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], 0.0)
        torch.testing.assert_close(recorder.memories[epoch], expected.float(), rtol=0, atol=1e-5)
    assert not torch.equal(recorder.memories[1], recorder.memories[2])


def test_checkpoints_carry_the_memory_they_were_evaluated_with(trained: dict[str, Any]):
    run = trained["out"] / "full"
    recorder = trained["recorder"]
    best = sorted((run / "checkpoints").glob("best_with-mR@20_e*"))
    assert [p.name.split("_e")[1].split("_")[0] for p in best] == ["1", "2", "3"]
    first = load_checkpoint(best[0])["model"]
    assert not bool(first["memory_fusion.ready"])  # epoch 1 was evaluated without memory
    second = load_checkpoint(best[1])["model"]
    assert torch.equal(second["memory_fusion.memory"], recorder.memories[1])
    last = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert torch.equal(last["memory_fusion.memory"], recorder.memories[3])


def test_evaluate_from_checkpoint_equals_the_in_training_evaluation(trained: dict[str, Any]):
    run = trained["out"] / "full"
    records = {r["epoch"]: r for r in read_metrics_file(run / "metrics.jsonl")}
    for path in sorted((run / "checkpoints").glob("best_with-mR@20_e*")):
        epoch = int(path.name.split("_e")[1].split("_")[0])
        again = evaluate_checkpoint(path)
        for key in ("with/R@20", "with/mR@20", "no/mR@50", "semi/R@10"):
            assert again[key] == records[epoch]["metrics"][key], (epoch, key)


def test_toy_run_lifts_mean_recall(trained: dict[str, Any]) -> None:
    before = trained["untrained"]["with/mR@20"]
    after = trained["trainer"].engine.state.eval_metrics["with/mR@20"]
    mode = trained["mode"]
    print(f"tempura toy {mode}: with/mR@20 untrained {before:.4f} -> trained {after:.4f}")
    assert after > before


def test_resume_mid_epoch_is_bitwise(trained: dict[str, Any], tmp_path: Path) -> None:
    extra = MODES[trained["mode"]]
    first = Trainer.from_config(_config(tmp_path, "resumed", *extra))

    def stop(engine: Any) -> None:
        if engine.state.iteration == engine.state.epoch_length + 4:  # mid-epoch 2, after last.pt
            engine.terminate()

    first.handlers.add(FunctionHandler(stop, [Events.ITERATION_COMPLETED], "stop", 1000))
    first.train_loop()
    mid = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert mid["handlers"]["uncertainty_pass"]["norm"].sum() > 0  # partial sums saved
    second = Trainer.from_config(_config(tmp_path, "resumed", *extra), resume="auto")
    second.train_loop()
    expected = trained["trainer"]
    for key, value in expected.core_model.state_dict().items():
        assert torch.equal(second.core_model.state_dict()[key], value), key
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == (
        trained["out"] / "full" / "metrics.jsonl"
    ).read_text()


def test_predcls_recipe_file_builds_the_published_setup(toy_cache: Path, tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[2] / "examples" / "configs" / "tempura_predcls.yaml"
    config = load_config(recipe, ["data.toy_videos=16", f"run.output={tmp_path}", "run.name=r"])
    assert (config.optim.optimizer, config.optim.lr, config.optim.grad_clip) == ("adamw", 1e-5, 5.0)
    assert (config.schedule.name, config.schedule.metric) == ("plateau", "with/mR@20")
    assert (config.schedule.threshold, config.schedule.threshold_mode) == (1e-4, "abs")
    assert config.optim.weight_decay == 0.01 and config.data.videos_per_batch == 1
    assert config.train.epochs == 10
    model = Trainer.from_config(config).core_model
    assert (model.k, model.fusion, model.memory_weighting) == (6, "late", "simple")
    assert model.memory_fusion.lam == 0.5 and model.memory_fusion.groups is None


def test_sgcls_recipe_file(toy_cache: Path, tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[2] / "examples" / "configs" / "tempura_sgcls.yaml"
    config = load_config(recipe, ["data.toy_videos=16", f"run.output={tmp_path}", "run.name=r"])
    assert config.data.mode == "sgcls" and config.optim.lr == 1e-5
    assert config.data.filter_small_boxes
    model = Trainer.from_config(config).core_model
    assert (model.k, model.memory_fusion.lam, model.contrastive_weight) == (4, 0.3, 1.0)
    assert model.object_classifier.tracker is not None


def test_sgdet_recipe_file(toy_cache: Path, tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[2] / "examples" / "configs" / "tempura_sgdet.yaml"
    config = load_config(recipe, ["data.toy_videos=16", f"run.output={tmp_path}", "run.name=r"])
    assert config.data.mode == "sgdet" and config.data.filter_small_boxes
    assert (config.optim.optimizer, config.optim.lr, config.optim.grad_clip) == ("adamw", 1e-5, 5.0)
    assert (config.schedule.name, config.schedule.metric) == ("plateau", "with/mR@20")
    assert config.optim.weight_decay == 0.01 and config.data.videos_per_batch == 1
    assert config.train.epochs == 10
    model = Trainer.from_config(config).core_model
    assert (model.mode, model.k, model.fusion, model.memory_weighting) == (
        "sgdet",
        4,
        "late",
        "simple",
    )
    assert (model.memory_fusion.lam, model.contrastive_weight, model.eos_coef) == (0.5, 1.0, 1.0)
    assert model.object_classifier.tracker is not None
    assert model.memory_fusion.groups is None

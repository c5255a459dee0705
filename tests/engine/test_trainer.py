"""The Trainer on the toy dataset: default handler order, each handler's effect, the step."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events

from m3sgg.engine.checkpoint import load_checkpoint
from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import FunctionHandler
from m3sgg.engine.handlers.metrics_file import read_metrics_file
from m3sgg.engine.trainer import Trainer


def test_default_order_runs_evaluation_scheduler_checkpoint_early_stop(small_config):
    trainer = Trainer.from_config(small_config("train.early_stop_patience=5"))
    names = trainer.handlers.names()
    assert names.index("evaluation") < names.index("lr_plateau") < names.index("best_checkpoint")
    assert names.index("best_checkpoint") < names.index("early_stopping")
    assert names.index("early_stopping") < names.index("metrics_file")
    assert names.index("evaluation") < names.index("last_checkpoint")

    # probes placed between the handlers see exactly the effects of those before them
    seen: list[tuple[str, object]] = []
    plateau = trainer.handlers.get("lr_plateau").scheduler
    best = trainer.handlers.get("best_checkpoint")
    stopper = trainer.handlers.get("early_stopping").stopper

    def probe(tag):
        def look(engine):
            seen.append(
                (
                    tag,
                    (
                        plateau.last_epoch,
                        len(best.kept["with/mR@20"]),
                        stopper.best_score is not None,
                    ),
                )
            )

        return look

    trainer.handlers.add(
        FunctionHandler(probe("before_lr"), [M3sggEvents.EVALUATION_COMPLETED], "probe_lr"),
        before="lr_plateau",
    )
    trainer.handlers.add(
        FunctionHandler(probe("before_best"), [M3sggEvents.EVALUATION_COMPLETED], "probe_best"),
        before="best_checkpoint",
    )
    trainer.handlers.add(
        FunctionHandler(probe("after_stop"), [M3sggEvents.EVALUATION_COMPLETED], "probe_stop"),
        after="early_stopping",
    )
    trainer.train_loop()
    first = dict(seen[:3])
    assert first["before_lr"] == (0, 0, False)
    assert first["before_best"] == (1, 0, False)
    assert first["after_stop"] == (1, 1, True)
    text = trainer.describe()
    assert text.index("probe_lr") < text.index("lr_plateau") < text.index("probe_best")


def test_training_writes_metrics_checkpoints_and_improves_loss(small_config):
    trainer = Trainer.from_config(small_config("train.epochs=3"))
    state = trainer.train_loop()
    run = trainer.run_dir
    records = read_metrics_file(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all("with/R@20" in r["metrics"] and "no/mR@50" in r["metrics"] for r in records)
    assert records[-1]["losses"]["loss"] < records[0]["losses"]["loss"]
    assert len(records[0]["metrics"]["with/per_predicate"]["20"]) == 26
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["engine"]["iteration"] == state.iteration
    assert set(last["handlers"]) >= {
        "loss_tracker",
        "lr_plateau",
        "best_checkpoint",
        "metrics_file",
    }
    for metric in ("with/mR@20", "with/R@20"):
        path = trainer.handlers.get("best_checkpoint").best(metric)
        assert path is not None and path.exists()
        kept = list(run.glob(f"checkpoints/best_{metric.replace('/', '-')}_*.pt"))
        assert kept == [path]  # keep=1
    assert (run / "config.yaml").is_file()


def test_nan_guard_saves_last_good_weights_and_names_the_term(small_config):
    trainer = Trainer.from_config(small_config())
    original = trainer.model.loss

    def poisoned(predictions, batch):
        losses = original(predictions, batch)
        if trainer.engine.state.iteration == 3:
            losses["spatial"] = losses["spatial"] * float("nan")
        return losses

    trainer.model.loss = poisoned
    state = trainer.train_loop()
    assert state.iteration == 3
    assert "iteration 3" in state.stop_reason and "spatial=nan" in state.stop_reason
    saved = load_checkpoint(trainer.run_dir / "checkpoints" / "nan_guard.pt")
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert saved["engine"]["iteration"] == 3


def test_early_stopping_stops_when_metric_is_flat(small_config):
    # the number of evaluated frames never changes: no evaluation after the first improves
    trainer = Trainer.from_config(
        small_config(
            "train.epochs=6", "train.early_stop_patience=2", "train.early_stop_metric=with/frames"
        )
    )
    state = trainer.train_loop()
    assert state.epoch == 3
    assert "early stopping: with/frames did not improve for 2" in state.stop_reason


def test_lr_plateau_halves_lr_without_improvement(small_config):
    trainer = Trainer.from_config(
        small_config("train.epochs=4", "schedule.metric=with/frames", "schedule.patience=0")
    )
    trainer.train_loop()
    lr = trainer.optimizer.param_groups[0]["lr"]
    assert math.isclose(lr, 1e-3 * 0.5**3, rel_tol=1e-9)  # evals 2, 3, 4 did not improve


def test_warmup_then_plateau(small_config):
    trainer = Trainer.from_config(small_config("schedule.warmup_iters=4", "train.epochs=1"))
    lrs = []
    trainer.handlers.add(
        FunctionHandler(
            lambda e: lrs.append(trainer.optimizer.param_groups[0]["lr"]),
            [Events.ITERATION_STARTED],
            "lr_probe",
            priority=40,
        )
    )
    trainer.train_loop()
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4:] == pytest.approx([1e-3] * (len(lrs) - 4))


def test_gradient_accumulation_steps_every_n(small_config):
    trainer = Trainer.from_config(
        small_config("optim.accumulate_steps=3", "train.epochs=1", "train.eval_every_epochs=0")
    )
    steps = []
    original = trainer.optimizer.step

    def counting(*args, **kwargs):
        steps.append(trainer.engine.state.iteration)
        return original(*args, **kwargs)

    trainer.optimizer.step = counting
    trainer.train_loop()
    length = trainer.engine.state.epoch_length
    expected = [i for i in range(1, length + 1) if i % 3 == 0 or i == length]
    assert steps == expected


def test_every_step_trains_in_training_mode(small_config):
    """A handler that leaves the model in eval mode does not leak into the next step; the
    evaluation restores training mode too."""
    trainer = Trainer.from_config(small_config("train.epochs=2"))
    modes = []
    forward = trainer.model.forward

    def recording(*args, **kwargs):
        if torch.is_grad_enabled():  # training steps, not the evaluation's no-grad forwards
            modes.append(all(m.training for m in trainer.model.modules()))
        return forward(*args, **kwargs)

    trainer.model.forward = recording
    trainer.engine.add_event_handler(Events.ITERATION_COMPLETED(every=3), trainer.model.eval)
    trainer.train_loop()
    assert len(modes) == trainer.engine.state.iteration
    assert all(modes)


def test_thin_views_train_epoch_and_evaluate(small_config):
    trainer = Trainer.from_config(small_config())
    trainer.train_epoch(1)
    assert trainer.engine.state.epoch == 1
    metrics = trainer.evaluate_epoch(1)
    assert 0.0 <= metrics["with/R@20"] <= 1.0
    with pytest.raises(ValueError, match="must follow"):
        trainer.train_epoch(3)
    saved = trainer.save_checkpoints(1, score=0.5, mrecall=0.25)
    assert any("best_with-mR@20" in p.name and "0.2500" in p.name for p in saved)


def test_plain_pytorch_components_are_accepted(small_config):
    """The seed's constructor: model, config, loaders, optimizer, scheduler given by hand."""
    built = Trainer.from_config(small_config())
    optimizer = torch.optim.SGD(built.model.parameters(), lr=0.01)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max")
    trainer = Trainer(
        model=built.model,
        config=built.config,
        dataloader_train=built.dataloader_train,
        dataloader_test=built.dataloader_test,
        optimizer=optimizer,
        scheduler=plateau,
        evaluator=built.evaluator,
    )
    trainer.train_loop()
    assert trainer.handlers.get("lr_plateau").scheduler is plateau
    assert "with/R@20" in trainer.engine.state.eval_metrics


def test_object_detector_runs_frozen_under_no_grad_every_step(small_config):
    """The classic online-detector path: a frozen module turns each raw batch into inputs."""
    import dataclasses

    calls: list[bool] = []

    class ScaleFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, batch):
            calls.append(torch.is_grad_enabled())
            return dataclasses.replace(batch, box_features=batch.box_features * self.scale)

    built = Trainer.from_config(small_config("train.epochs=1", "train.eval_every_epochs=0"))
    detector = ScaleFeatures()
    trainer = Trainer(
        model=built.model,
        config=built.config,
        dataloader_train=built.dataloader_train,
        object_detector=detector,
    )
    state = trainer.train_loop()
    assert len(calls) == state.iteration and not any(calls)
    assert not detector.scale.requires_grad and not detector.training


def _files(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_from_config_refuses_a_folder_that_holds_a_run_and_resumes_it_when_asked(small_config):
    """Issue 19, point 2: the API refuses an existing run like the CLI (it used to append to
    metrics.jsonl and overwrite the checkpoints), and ``resume="auto"`` of a finished run
    leaves every file as it was (issue 19, point 1)."""
    from m3sgg.errors import ConfigError

    first = Trainer.from_config(small_config())
    first.train_loop()
    run = first.run_dir
    before = _files(run)
    assert len(read_metrics_file(run / "metrics.jsonl")) == 2

    with pytest.raises(ConfigError, match=r"already holds a run.*resume"):
        Trainer.from_config(small_config())
    assert _files(run) == before

    again = Trainer.from_config(small_config(), resume="auto")
    assert again.complete
    state = again.train_loop()
    assert (state.epoch, state.iteration) == (2, 2 * state.epoch_length)
    assert _files(run) == before


def test_resume_of_a_finished_run_with_more_epochs_continues_exactly(small_config, tmp_path):
    """Raising train.epochs on a finished run trains only the new epochs, bitwise like an
    uninterrupted run of that length; lowering it below what was trained is a one-line error."""
    from m3sgg.config import load_config
    from m3sgg.errors import ConfigError

    Trainer.from_config(small_config()).train_loop()
    longer = Trainer.from_config(small_config("train.epochs=3"), resume="auto")
    assert not longer.complete
    longer.train_loop()
    epochs = [r["epoch"] for r in read_metrics_file(longer.run_dir / "metrics.jsonl")]
    assert epochs == [1, 2, 3]

    straight = Trainer.from_config(
        load_config(None, [*small_config_args(tmp_path, "straight"), "train.epochs=3"])
    )
    straight.train_loop()
    for key, value in straight.core_model.state_dict().items():
        assert torch.equal(longer.core_model.state_dict()[key], value), key
    assert (longer.run_dir / "metrics.jsonl").read_bytes() == (
        straight.run_dir / "metrics.jsonl"
    ).read_bytes()

    with pytest.raises(ConfigError, match=r"already at epoch 3 .*--epochs 3 or more"):
        Trainer.from_config(small_config("train.epochs=2"), resume="auto")


def small_config_args(tmp_path, name):
    from tests.conftest import SMALL_RUN

    return [*SMALL_RUN, f"run.output={tmp_path / 'runs'}", f"run.name={name}"]


def test_a_matcher_goes_to_a_model_that_declares_one(small_config):
    from m3sgg.models.matching import HungarianMatcher

    trainer = Trainer.from_config(small_config("train.epochs=1"))
    model, config, loader = trainer.model, trainer.config, trainer.dataloader_train
    with pytest.raises(TypeError, match="STTran takes no matcher"):
        Trainer(model, config, loader, matcher=HungarianMatcher())
    model.matcher = None  # the attribute is how a model declares that it takes one
    matcher = HungarianMatcher(cost_class=2.0)
    assert Trainer(model, config, loader, matcher=matcher).core_model.matcher is matcher
    assert Trainer(model, config, loader).core_model.matcher is matcher  # None keeps it

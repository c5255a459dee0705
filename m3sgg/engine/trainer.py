"""The Trainer: an ignite Engine running :meth:`Trainer.train_step`, with ordered handlers.

The loop and the default handler order are drawn in :mod:`m3sgg.engine.events`; print the live
table with ``trainer.describe()`` (or ``m3sgg train --describe``). The public methods keep the
names researchers know from the classic code and are thin views over the engine:

- :meth:`train_loop` runs the engine to ``config.train.epochs``;
- :meth:`train_epoch` runs it to the end of one epoch;
- :meth:`train_step` is the engine's process function;
- :meth:`evaluate_epoch` runs the evaluator engine;
- :meth:`save_checkpoints` writes ``last.pt`` and feeds the best-checkpoint ranking.

Nothing here knows a model or a dataset: the model brings ``forward`` and ``loss`` (see
:mod:`m3sgg.models.base`), the dataset its metrics and its prediction split.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers.param_scheduler import ParamScheduler

from m3sgg.config import Config, config_to_dict
from m3sgg.data.samplers import ResumableSampler
from m3sgg.engine.checkpoint import (
    FORMAT,
    atomic_save,
    capture_rng,
    checkpoint_manifest,
    load_checkpoint,
    remove_stale_temps,
    require_sections,
    restore_rng,
)
from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import FunctionHandler, Handler, HandlerList
from m3sgg.engine.handlers.checkpointing import BestCheckpoint, LastCheckpoint
from m3sgg.engine.handlers.console import ConsoleLogger
from m3sgg.engine.handlers.early_stopping import EarlyStopping
from m3sgg.engine.handlers.evaluation import Evaluation
from m3sgg.engine.handlers.loss_tracker import LossTracker
from m3sgg.engine.handlers.lr import LRPlateau, LRSchedule, cosine_schedule, warmup_schedule
from m3sgg.engine.handlers.metrics_file import MetricsFile
from m3sgg.engine.handlers.nan_guard import NanGuard
from m3sgg.engine.handlers.progress import ProgressBar
from m3sgg.engine.handlers.sampler_position import SamplerPosition
from m3sgg.errors import ConfigError, DataError

if TYPE_CHECKING:
    from m3sgg.engine.evaluator import Evaluator

__all__ = ["RankZeroPlaceholder", "Trainer", "rank_zero", "resolve_amp", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available (this process's local rank), else CPU.

    Raises:
        ConfigError: a name torch does not know, or a CUDA device this machine lacks.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", idist.get_local_rank())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"run.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"run.device: {name!r} asked for, but CUDA is not available here "
                "(torch.cuda.is_available() is False); use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"run.device: {name!r} asked for, but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible"
            )
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """``optim.amp`` → autocast dtype: "auto" is bf16 on CUDA and off on CPU."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


class Trainer:
    """Train a scene-graph model with an ignite engine and m3sgg's ordered handlers.

    Args:
        model: follows :mod:`m3sgg.models.base` (``forward(batch)``, ``loss(predictions, batch)``).
        config: the resolved :class:`~m3sgg.config.Config` (optimisation, schedule, handlers).
        dataloader_train: yields collated batches; with a :class:`ResumableSampler` as its
            sampler (or a ``BatchSampler`` over one), resume is exact mid-epoch.
        dataloader_test: batches for the evaluator (None: no evaluation handler).
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters.
        scheduler: None (built from ``config.schedule``), a ``ReduceLROnPlateau``, an ignite
            ``ParamScheduler`` (stepped per iteration) or a :class:`Handler`.
        logger: where console lines go (default: the ``m3sgg`` logger).
        object_detector: optional frozen module turning a raw batch into model inputs under
            ``no_grad`` at every step (the classic online-detector path).
        matcher: optional assignment module for a model that matches boxes (e.g.
            :class:`~m3sgg.models.matching.HungarianMatcher` for DSG-DETR's tracker); it becomes
            the model's ``matcher`` attribute, which the model must declare.
        evaluator: an :class:`~m3sgg.engine.evaluator.Evaluator`; built from ``dataloader_test``,
            ``metrics`` and ``split`` when omitted.
        metrics, split: what the evaluator needs when it is built here.
        run_dir: folder for checkpoints and ``metrics.jsonl`` (None: nothing is written).
        device: where the model trains (default ``config.run.device``).

    Example::

        trainer = Trainer.from_config(load_config(None, ["train.epochs=2"]))
        trainer.train_loop()
        print(trainer.engine.state.eval_metrics["with/mR@20"])
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: Config,
        dataloader_train: Any,
        dataloader_test: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        logger: logging.Logger | None = None,
        object_detector: torch.nn.Module | None = None,
        matcher: torch.nn.Module | None = None,
        *,
        evaluator: Evaluator | None = None,
        metrics: dict[str, Any] | None = None,
        split: Any = None,
        run_dir: str | Path | None = None,
        device: torch.device | str | None = None,
    ):
        self.config = config.validate()
        self.device = (
            torch.device(device) if device is not None else resolve_device(config.run.device)
        )
        if matcher is not None:
            core = unwrap_model(model)
            if not hasattr(core, "matcher"):
                raise TypeError(
                    f"{type(core).__name__} takes no matcher (it has no 'matcher' attribute)"
                )
            core.matcher = matcher
        self.model = model.to(self.device)
        #: the model itself, unwrapped from DistributedDataParallel and torch.compile
        self.core_model = unwrap_model(self.model)
        self.optimizer = optimizer or build_optimizer(self.model, config)
        self.dataloader_train = dataloader_train
        self.dataloader_test = dataloader_test
        self.logger = logger or logging.getLogger("m3sgg")
        self.object_detector = object_detector
        if object_detector is not None:
            object_detector.to(self.device).eval().requires_grad_(False)
        self.amp_dtype = resolve_amp(config.optim.amp, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype is torch.float16
        )
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.checkpoint_dir = self.run_dir / "checkpoints" if self.run_dir else None
        self.sampler = _find_sampler(dataloader_train)

        self.engine = Engine(self.train_step)
        self.engine.register_events(*M3sggEvents)
        self.handlers = HandlerList(self.engine, "train")
        self.evaluator = evaluator
        if self.evaluator is None and dataloader_test is not None and metrics is not None:
            from m3sgg.engine.evaluator import Evaluator

            self.evaluator = Evaluator(
                self.model,
                dataloader_test,
                metrics,
                split,
                device=self.device,
                amp_dtype=self.amp_dtype,
                object_detector=object_detector,
            )
        self._pending_rng: dict[str, Any] | None = None
        #: False from an iteration's start until its epoch's EPOCH_COMPLETED handlers ran: a
        #: checkpoint written at an epoch's last iteration (every_iters, a signal) says so, and
        #: the resumed run runs that epoch's end (evaluation, last.pt) before going on
        self._epoch_closed = True
        self._close_epoch_first = False
        #: True after :meth:`resume` of a run that already reached ``train.epochs``
        self.complete = False
        # engine bookkeeping, registered before (so run before) every ordered handler
        self.engine.add_event_handler(Events.ITERATION_STARTED, self._set_epoch_closed, False)
        self.engine.add_event_handler(Events.EPOCH_COMPLETED, self._set_epoch_closed, True)
        #: train handler name -> the plugin that attached it (filled by apply_plugins)
        self.plugin_handlers: dict[str, str] = {}
        self._add_default_handlers(scheduler)
        self._add_model_handlers()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        resume: str | Path | None = None,
        ignore_missing_plugins: bool = False,
        **overrides: Any,
    ) -> Trainer:
        """Assemble data, model, optimizer, evaluator and run folder from a config.

        Like ``m3sgg train``, a new trainer refuses a run folder that already holds a run
        (ConfigError); ``resume="auto"`` continues that run from its ``last.pt`` (a new run
        when there is none yet), a path resumes from that checkpoint. After resuming a run that
        already reached ``train.epochs``, ``trainer.complete`` is True and :meth:`train_loop`
        changes nothing. ``ignore_missing_plugins`` is passed to :meth:`resume`.
        """
        from m3sgg.engine.builders import build_training, check_new_run

        trainer = build_training(config, cls, **overrides)
        if trainer.run_dir is not None:
            check_new_run(trainer.run_dir, resume)
        if resume is not None and str(resume) == "auto":
            last = trainer.checkpoint_dir / LastCheckpoint.filename if trainer.run_dir else None
            if last is not None and last.is_file():
                trainer.resume(last, ignore_missing_plugins=ignore_missing_plugins)
            else:
                trainer.logger.info("no checkpoint in %s yet: starting a new run", trainer.run_dir)
        elif resume is not None:
            trainer.resume(resume, ignore_missing_plugins=ignore_missing_plugins)
        return trainer

    def _add_default_handlers(self, scheduler: Any) -> None:
        cfg = self.config
        add = self.handlers.add
        if self.sampler is not None:
            add(SamplerPosition(self.sampler, _batch_size(self.dataloader_train)))
        if self.run_dir is not None:  # on every rank, so the handler tables stay identical
            add(FunctionHandler(self._save_config, [Events.STARTED], "save_config", priority=-20))
        add(
            FunctionHandler(
                self._restore_pending_rng,
                [Events.ITERATION_STARTED],
                name="resume_rng",
                priority=-10,
            )
        )
        add(NanGuard(self.save_checkpoint if self.checkpoint_dir else None))
        tracker = add(LossTracker())
        for handler in self._lr_handlers(scheduler):
            add(handler)
        from m3sgg.metrics import extra_metric_names

        extra = tuple(extra_metric_names(cfg.data.dataset))
        add(rank_zero(ConsoleLogger, self.optimizer, every=cfg.log.every_iters, extra=extra))
        if cfg.log.progress_bar:
            add(rank_zero(ProgressBar))
        if self.evaluator is not None and (
            cfg.train.eval_every_epochs or cfg.train.eval_every_iters
        ):
            add(
                Evaluation(
                    self.evaluator,
                    every_epochs=cfg.train.eval_every_epochs,
                    every_iters=cfg.train.eval_every_iters,
                    loss_tracker=tracker,
                )
            )
            if self.checkpoint_dir is not None and cfg.checkpoint.best_metrics:
                add(
                    BestCheckpoint(
                        self.save_checkpoint,
                        self.checkpoint_dir,
                        cfg.checkpoint.best_metrics,
                        keep=cfg.checkpoint.keep,
                    )
                )
            if cfg.train.early_stop_patience:
                add(
                    EarlyStopping(
                        self.engine, cfg.train.early_stop_metric, cfg.train.early_stop_patience
                    )
                )
            if self.run_dir is not None:
                add(rank_zero(MetricsFile, self.run_dir / "metrics.jsonl", self.optimizer))
        if self.checkpoint_dir is not None:
            add(LastCheckpoint(self.save_checkpoint, every_iters=cfg.checkpoint.every_iters))
        if cfg.log.visdom:
            from m3sgg.engine.handlers.visdom import VisdomPlotter

            add(
                rank_zero(
                    VisdomPlotter,
                    cfg.log.visdom,
                    env=self.run_dir.name if self.run_dir else "m3sgg",
                    optimizer=self.optimizer,
                    every=cfg.log.every_iters,
                )
            )

    def _add_model_handlers(self) -> None:
        """The handlers the model contributes (``model.train_handlers()``, see
        :mod:`m3sgg.models.base`): its epoch-level work, in their own priorities."""
        contribute = getattr(self.core_model, "train_handlers", None)
        for handler in contribute() if callable(contribute) else ():
            self.handlers.add(handler)

    def _lr_handlers(self, scheduler: Any) -> list[Handler]:
        cfg, opt = self.config.schedule, self.optimizer
        if isinstance(scheduler, Handler):
            return [scheduler]
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            plateau = LRPlateau(opt, cfg.metric)
            plateau.scheduler = scheduler
            return [plateau]
        if isinstance(scheduler, ParamScheduler):
            return [LRSchedule(scheduler)]
        if scheduler is not None:
            raise TypeError(f"unsupported scheduler type {type(scheduler).__name__}")
        lr = self.config.optim.lr
        handlers: list[Handler] = []
        if cfg.name == "cosine":
            total = self.config.train.epochs * _length(self.dataloader_train)
            handlers.append(
                LRSchedule(cosine_schedule(opt, lr, cfg.min_lr, total, cfg.warmup_iters))
            )
            return handlers
        if cfg.warmup_iters:
            handlers.append(
                LRSchedule(warmup_schedule(opt, lr, cfg.warmup_iters), until=cfg.warmup_iters)
            )
        if cfg.name == "plateau" and self.evaluator is not None:
            handlers.append(
                LRPlateau(
                    opt,
                    cfg.metric,
                    patience=cfg.patience,
                    factor=cfg.factor,
                    min_lr=cfg.min_lr,
                    threshold=cfg.threshold,
                    threshold_mode=cfg.threshold_mode,
                )
            )
        return handlers

    # ------------------------------------------------------------------ the step

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, engine: Engine, batch: Any) -> dict[str, Any]:
        """Forward, the model's named losses, FORWARD_COMPLETED, their sum, backward, clip, step.

        With ``optim.accumulate_steps = n`` the optimizer steps every n batches (and at the end of
        an epoch). A non-finite total loss skips backward and step (one host sync per step reads
        it) and is reported as ``output["finite"] = False`` for the nan guard.

        Returns:
            ``{"loss": total, <term>: value, ..., "finite": bool}`` (detached tensors).
        """
        if not self.model.training:  # train() walks every submodule: only when needed
            self.model.train()
        if getattr(batch, "device", None) != self.device:
            batch = batch.to(self.device, non_blocking=True)
        if self.object_detector is not None:
            with torch.no_grad():
                batch = self.object_detector(batch)
        with self._autocast():
            predictions = self.model(batch)
            losses = self.core_model.loss(predictions, batch)
        engine.state.step_batch = batch  # model-contributed work between forward and backward
        engine.fire_event(M3sggEvents.FORWARD_COMPLETED)
        engine.state.step_batch = None
        total = torch.stack([v.float() for v in losses.values()]).sum()
        if idist.get_world_size() > 1:  # every rank skips the step together
            finite = bool(idist.all_reduce(torch.isfinite(total).to(torch.int32), op="MIN"))
        else:
            finite = bool(torch.isfinite(total))
        accumulate = self.config.optim.accumulate_steps
        if finite:
            scaled = total / accumulate if accumulate > 1 else total
            (self.scaler.scale(scaled) if self.scaler.is_enabled() else scaled).backward()
            epoch_length = engine.state.epoch_length or 0
            in_epoch = engine.state.iteration - (engine.state.epoch - 1) * epoch_length
            if in_epoch % accumulate == 0 or in_epoch == epoch_length:
                self._optimizer_step(engine)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        output: dict[str, Any] = {"loss": total.detach()}
        output.update({k: v.detach() for k, v in losses.items()})
        output["finite"] = finite
        return output

    def _optimizer_step(self, engine: Engine) -> None:
        """Unscale (fp16), measure the gradient norm, fire BEFORE_OPTIMIZER_STEP, clip, step.

        ``engine.state.grad_norm`` is the L2 norm of all gradients before clipping (a 0-dim float32
        tensor on the device: reading it syncs). Clipping scales by it (one norm computation per
        step), so a handler that changes the gradients sets it anew.
        """
        clip = self.config.optim.grad_clip
        scaling = self.scaler.is_enabled()  # fp16 only
        if scaling:  # handlers and clipping see the true gradients
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        norm = (
            torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        )
        engine.state.grad_norm = norm
        engine.fire_event(M3sggEvents.BEFORE_OPTIMIZER_STEP)
        if clip is not None and params:
            torch.nn.utils.clip_grads_with_norm_(params, clip, engine.state.grad_norm)
        if scaling:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ loops

    def train_loop(self) -> Any:
        """Train to ``config.train.epochs`` (continuing a resumed run); returns the engine state.

        A resumed run that had already reached ``train.epochs`` (``self.complete``) is left as it
        is. A checkpoint written at an epoch's last iteration, before that epoch's end handlers
        ran, first gets them run (evaluation, metrics line, ``last.pt``), as the uninterrupted
        run did.
        """
        if self._close_epoch_first:
            self._close_epoch_first = False
            self._restore_pending_rng(self.engine)
            self.engine.fire_event(Events.EPOCH_COMPLETED)
            state = self.engine.state
            self.complete = state.iteration >= self.config.train.epochs * (state.epoch_length or 0)
            if self.engine.should_terminate:  # e.g. early stopping at that epoch's end
                return state
        if self.complete:
            return self.engine.state
        return self.engine.run(self.dataloader_train, max_epochs=self.config.train.epochs)

    def train_epoch(self, epoch: int) -> Any:
        """Run the engine until epoch ``epoch`` (1-based) is complete."""
        if epoch != self.engine.state.epoch + 1:
            raise ValueError(
                f"the engine is at epoch {self.engine.state.epoch}; "
                f"train_epoch({epoch}) must follow it directly"
            )
        return self.engine.run(self.dataloader_train, max_epochs=epoch)

    def evaluate_epoch(self, epoch: int | None = None) -> dict[str, Any]:
        """Run the evaluator once; returns its metrics (``"with/R@20"``, ...)."""
        if self.evaluator is None:
            raise RuntimeError("this trainer has no evaluator (no dataloader_test was given)")
        metrics = self.evaluator.eval_loop()
        self.logger.info("evaluation at epoch %s done", epoch if epoch is not None else "-")
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as tensors and plain values."""
        return {
            "format": FORMAT,
            "manifest": checkpoint_manifest(self.config, idist.get_world_size()),
            "config": config_to_dict(self.config),
            "model": self.core_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "engine": {**self.engine.state_dict(), "epoch_closed": self._epoch_closed},
            "handlers": {h.name: h.state_dict() for h in self.handlers if hasattr(h, "state_dict")},
            "plugin_handlers": dict(self.plugin_handlers),
            "sampler": self.sampler.state_dict() if self.sampler is not None else None,
            "rng": capture_rng(),
        }

    def save_checkpoint(self, filename: str = "last.pt") -> Path:
        """Write the full resumable state to ``<run>/checkpoints/<filename>`` (rank 0 writes).

        With several processes this is a collective call (every rank calls it at the same
        point, as the built-in handlers do): each rank's random-generator states and rank-local
        handler states (``rank_local = True``, e.g. the loss tracker's sums) are gathered into
        the checkpoint's ``"ranks"`` list, so every rank resumes exactly; and no rank returns
        before the file is on disk.
        """
        if self.checkpoint_dir is None:
            raise RuntimeError("this trainer has no run_dir; give one to save checkpoints")
        path = self.checkpoint_dir / filename
        world = idist.get_world_size()
        ranks = idist.all_gather(self._rank_state()) if world > 1 else None
        if idist.get_rank() == 0:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.checkpoint_dir)
            state = self.state_dict()
            if ranks is not None:
                state["ranks"] = list(ranks)
            atomic_save(state, path)
        if world > 1:
            idist.barrier()
        self.engine.state.last_checkpoint = path
        self.engine.fire_event(M3sggEvents.CHECKPOINT_SAVED)
        return path

    def save_checkpoints(self, epoch: int, score: float, mrecall: float) -> list[Path]:
        """The classic entry point: ``last.pt``, and a best checkpoint when ``score`` (R@K) or
        ``mrecall`` (mR@K) beat the kept ones of the first two ``checkpoint.best_metrics``."""
        saved = [self.save_checkpoint("last.pt")]
        if "best_checkpoint" in self.handlers:
            best: BestCheckpoint = self.handlers.get("best_checkpoint")  # type: ignore[assignment]
            by_name = {m: (mrecall if "/mR@" in m else score) for m in best.metrics}
            state = self.engine.state
            previous = getattr(state, "eval_metrics", None)
            state.eval_metrics = {**(previous or {}), **by_name}
            state.epoch = epoch
            best(self.engine)
            saved += [p for m in best.metrics if (p := best.best(m)) is not None]
        return saved

    def _rank_state(self) -> dict[str, Any]:
        """This rank's part of a checkpoint: RNG states and rank-local handler states."""
        return {
            "rng": capture_rng(),
            "handlers": {
                h.name: h.state_dict() for h in self.handlers if getattr(h, "rank_local", False)
            },
        }

    def resume(self, path: str | Path, *, ignore_missing_plugins: bool = False) -> Path:
        """Load a checkpoint written by :meth:`save_checkpoint`; ``"auto"`` picks ``last.pt``.

        Everything is restored now except the random generators, which are restored right before
        the first resumed step (loading and data-iterator setup must not disturb them). Every
        rank of a distributed run loads the same file and takes its own RNG and rank-local
        handler states from it; the run must have as many processes as the one that saved it.

        A checkpoint holding the state of a handler a plugin attached (``plugin_handlers``) that
        this run lacks is refused, naming the plugin, unless ``ignore_missing_plugins`` (then that
        state is dropped with a warning).

        Raises:
            DataError: no checkpoint, an unreadable one, or one from another model/dataset/mode or
                with mismatched weight shapes, or with state of a plugin this run does not load.
        """
        if str(path) == "auto":
            if self.checkpoint_dir is None:
                raise DataError("--resume auto", "needs a run folder (run.output/run.name)")
            path = self.checkpoint_dir / LastCheckpoint.filename
            if not path.is_file():
                raise DataError(path, "nothing to resume: no last.pt in this run folder")
        path = Path(path)
        ckpt = load_checkpoint(path)
        require_sections(
            ckpt, path, "manifest", "model", "optimizer", "scaler", "engine", "handlers", "rng"
        )
        manifest = ckpt["manifest"]
        for key, ours in (
            ("model", self.config.model_name),
            ("dataset", self.config.data.dataset),
            ("mode", self.config.data.mode),
        ):
            if manifest.get(key) != ours:
                raise DataError(
                    path,
                    f"checkpoint is for {key} {manifest.get(key)!r}, this run uses {ours!r}",
                    field=f"manifest.{key}",
                )
        saved_world, world = int(manifest.get("world_size", 1)), idist.get_world_size()
        if saved_world != world:
            raise DataError(
                path,
                f"checkpoint was written by {saved_world} process(es), this run has {world}: "
                f"each rank's data shard and position depend on it; resume with "
                f"--nproc-per-node {saved_world} (or load only the weights)",
                field="manifest.world_size",
            )
        try:
            self.core_model.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
            raise DataError(
                path, f"weights do not fit this model ({first})", field="model"
            ) from None
        for name, target in (("optimizer", self.optimizer), ("scaler", self.scaler)):
            try:
                target.load_state_dict(ckpt[name])
            except (ValueError, KeyError, RuntimeError) as err:
                raise DataError(
                    path, f"does not fit this run ({type(err).__name__}: {err})", field=name
                ) from None
        self._check_plugin_state(path, ckpt, ignore_missing_plugins)
        mine = ckpt["ranks"][idist.get_rank()] if ckpt.get("ranks") else None
        for handler in self.handlers:
            states = ckpt["handlers"]
            if mine is not None and getattr(handler, "rank_local", False):
                states = mine["handlers"]
            if hasattr(handler, "load_state_dict") and handler.name in states:
                handler.load_state_dict(states[handler.name])
        if self.sampler is not None and ckpt.get("sampler") is not None:
            self.sampler.load_state_dict(ckpt["sampler"])
        foreign = self.checkpoint_dir is not None and (
            path.parent.resolve() != self.checkpoint_dir.resolve()
        )
        if foreign and "best_checkpoint" in self.handlers:  # another run's file: its best files
            self.handlers.get("best_checkpoint").adopt(path.parent)  # type: ignore[attr-defined]
        engine_state = dict(ckpt["engine"])
        closed = bool(engine_state.pop("epoch_closed", True))
        length = int(engine_state.get("epoch_length") or 0)
        iteration = int(engine_state.get("iteration") or 0)
        target = self.config.train.epochs
        if length and iteration > target * length:
            reached = -(-iteration // length)
            raise ConfigError(
                f"train.epochs {target}: the run in {path} is already at epoch {reached} "
                f"(iteration {iteration}); give --epochs {reached} or more"
            )
        engine_state["max_epochs"] = target
        self.engine.load_state_dict(engine_state)
        self._pending_rng = mine["rng"] if mine is not None else ckpt["rng"]
        at_epoch_end = bool(length) and iteration > 0 and iteration % length == 0
        self._close_epoch_first = at_epoch_end and not closed
        self._epoch_closed = closed
        self.complete = bool(length) and iteration == target * length and closed
        state = self.engine.state
        in_progress = 1 if length and state.iteration % length else 0  # mid-epoch: that epoch
        self.logger.info(
            "resumed from %s (epoch %d, iteration %d)",
            path,
            state.epoch + in_progress,
            state.iteration,
        )
        return path

    def _check_plugin_state(
        self, path: Path, ckpt: dict[str, Any], ignore_missing_plugins: bool
    ) -> None:
        """Handler state of a plugin missing from this run: an error, or dropped by request."""
        owners = ckpt.get("plugin_handlers") or {}
        missing = {
            name: owners[name]
            for name in ckpt["handlers"]
            if name in owners and name not in self.handlers
        }
        if not missing:
            return
        listing = ", ".join(f"{h!r} of plugin {p!r}" for h, p in missing.items())
        plugins = " ".join(f"--plugin {p}" for p in dict.fromkeys(missing.values()))
        if not ignore_missing_plugins:
            raise DataError(
                path,
                f"holds the state of handler {listing}, which this run does not load; add "
                f"{plugins} (or list it in plugins:), or pass --ignore-missing-plugins to drop it",
                field="handlers",
            )
        self.logger.warning("resume: dropped the state of handler %s (plugin not loaded)", listing)

    def _save_config(self, engine: Engine) -> None:
        """At STARTED (after any resume succeeded): the resolved config in the run folder."""
        from m3sgg.engine.builders import save_resolved_config

        if idist.get_rank() == 0:
            save_resolved_config(self.config, Path(self.run_dir))

    def _set_epoch_closed(self, engine: Engine, closed: bool) -> None:
        self._epoch_closed = closed

    def _restore_pending_rng(self, engine: Engine) -> None:
        if self._pending_rng is not None:
            restore_rng(self._pending_rng)
            self._pending_rng = None

    # ------------------------------------------------------------------ inspection

    def describe(self) -> str:
        """Tables of the handlers on the train and eval engines, per event, in run order."""
        parts = [self.handlers.describe()]
        if self.evaluator is not None:
            parts.append(self.evaluator.describe())
        return "\n\n".join(parts)


class RankZeroPlaceholder(Handler):
    """Stands on ranks > 0 for a handler that only rank 0 runs (console, progress bar, metrics
    file, visdom): same name and priority, no events, no state, so the handler table is the
    same on every rank and ``handlers.add(x, before="console")`` works everywhere."""

    def __init__(self, kind: type[Handler]):
        self.name = kind.name
        self.priority = kind.priority
        self.kind = kind.__name__

    def events(self) -> list[Any]:
        return []

    def __call__(self, engine: Engine) -> None:
        pass

    def __repr__(self) -> str:
        return f"RankZeroPlaceholder({self.kind}, name={self.name!r})"


def rank_zero(kind: type[Handler], *args: Any, **kwargs: Any) -> Handler:
    """``kind(*args, **kwargs)`` on rank 0; a :class:`RankZeroPlaceholder` on the other ranks
    (the handler is not even built there)."""
    if idist.get_rank() == 0:
        return kind(*args, **kwargs)
    return RankZeroPlaceholder(kind)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DistributedDataParallel/DataParallel and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def build_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """The optimizer ``config.optim`` names, over the trainable parameters."""
    cfg = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _find_sampler(loader: Any) -> ResumableSampler | None:
    for candidate in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        if isinstance(candidate, ResumableSampler):
            return candidate
    return None


def _batch_size(loader: Any) -> int:
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", 1)
    return int(size or 1)


def _length(loader: Any) -> int:
    try:
        return len(loader)
    except TypeError:
        return 1

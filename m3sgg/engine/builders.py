"""``Trainer.from_config``: data, model, optimizer, loaders, evaluator and run folder.

The common case in one place; every piece is also usable alone (pass your own model, loaders or
optimizer to :class:`~m3sgg.engine.trainer.Trainer`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.utils import manual_seed
from torch.utils.data import BatchSampler, DataLoader

from m3sgg.config import Config, config_to_dict
from m3sgg.data.batch_fields import with_batch_fields
from m3sgg.data.registry import get_dataset_spec, toy_dataset_path
from m3sgg.data.samplers import ResumableSampler
from m3sgg.errors import ConfigError
from m3sgg.metrics import build_metrics
from m3sgg.models.registry import build_model
from m3sgg.plugins import apply_plugins, load_plugins

__all__ = [
    "build_data",
    "build_loaders",
    "build_training",
    "check_new_run",
    "describe_model",
    "resolved_config",
    "run_folder",
]


def data_root(config: Config) -> Path:
    """``data.path``, or the toy dataset made in the cache when it is None."""
    if config.data.path is None:
        return toy_dataset_path(config)
    return Path(config.data.path)


def build_data(config: Config) -> tuple[Any, Any, Any]:
    """``(spec, train_dataset, test_dataset)`` for the config's dataset."""
    spec = get_dataset_spec(config.data.dataset)
    root = data_root(config)
    return (
        spec,
        spec.open(config, root, config.data.train_split),
        spec.open(config, root, config.test_split),
    )


def build_loaders(
    config: Config,
    train: Any,
    test: Any,
    collate_fn: Any,
    device: torch.device,
    train_collate_fn: Any = None,
) -> tuple[DataLoader, DataLoader]:
    """Train loader over a :class:`ResumableSampler` (exact resume) and a sharded test loader.

    ``train_collate_fn`` collates the training batches when it differs from ``collate_fn``.

    Both get their own seeded ``torch.Generator`` so building iterators never draws from the
    global RNG (which resume restores exactly).
    """
    seed = config.run.seed
    pin = device.type == "cuda"
    workers = config.data.num_workers
    sampler = ResumableSampler(len(train), shuffle=True, seed=seed)
    train_loader = DataLoader(
        train,
        batch_sampler=BatchSampler(sampler, config.data.videos_per_batch, drop_last=False),
        collate_fn=train_collate_fn or collate_fn,
        num_workers=workers,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
    )
    test_sampler = ResumableSampler(len(test), shuffle=False, seed=seed)
    test_loader = DataLoader(
        test,
        batch_size=config.data.eval_videos_per_batch,
        sampler=test_sampler,
        collate_fn=collate_fn,
        num_workers=workers,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
    )
    return train_loader, test_loader


def _build_model(config: Config, spec: Any, dataset: Any) -> torch.nn.Module:
    """The configured model, with the constructor arguments the data fixes (feature widths)."""
    kwargs = {**spec.model_inputs(dataset), **config.model_options()}
    try:
        return build_model(config.model_name, config.data.dataset, config.data.mode, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model.options: {config.model_name}: {err}") from None


def run_folder(config: Config) -> Path:
    """``run.output/run.name`` (a timestamped name when unset)."""
    name = config.run.name or (
        f"{config.data.dataset}-{config.data.mode}-{config.model_name}-"
        f"{time.strftime('%Y%m%d-%H%M%S')}"
    )
    return Path(config.run.output) / name


def resolved_config(config: Config) -> Config:
    """A copy of ``config`` that states what the run uses, so a run folder is self-contained:
    absolute ``data.path``, ``data.features`` and ``run.output``, the model name and the test
    split the defaults picked (``data.mode`` is filled by validation)."""
    import copy

    config = copy.deepcopy(config)
    if config.data.path is not None:
        config.data.path = str(Path(config.data.path).expanduser().resolve())
    if config.data.features is not None:
        config.data.features = str(Path(config.data.features).expanduser().resolve())
    config.run.output = str(Path(config.run.output).expanduser().resolve())
    config.model.name = config.model_name
    config.data.test_split = config.test_split
    return config


def describe_model(model: torch.nn.Module, optimizer: Any, config: Config) -> str:
    """``model sttran (action_genome predcls): 1,234 parameters; one checkpoint about 0.1 MB``:
    what the start of a run states, so a paper-width model on toy data is no surprise."""
    from m3sgg.engine.trainer import unwrap_model

    core = unwrap_model(model)
    count = sum(p.numel() for p in core.parameters())
    weights = sum(t.numel() * t.element_size() for t in core.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in core.parameters() if p.requires_grad)
    # optimizer state per trainable parameter: Adam's two moments, SGD's momentum buffer
    moments = {"adam": 2, "adamw": 2, "sgd": 1 if config.optim.momentum else 0}
    size = weights + moments.get(config.optim.optimizer, 0) * trainable
    preset = ", toy widths" if config.uses_toy_preset else ""
    return (
        f"model {config.model_name} ({config.data.dataset} {config.data.mode}{preset}): "
        f"{count:,} parameters; one checkpoint about {size / 1e6:.1f} MB"
    )


def check_new_run(run_dir: str | Path, resume: str | Path | None = None) -> None:
    """Refuse to start a new run in a folder that already holds one (its ``last.pt`` or its
    ``metrics.jsonl``): a new run there would append to its metrics and overwrite its
    checkpoints. Continuing it (``resume`` "auto", or a checkpoint of that folder) is allowed;
    branching from another run's checkpoint (``resume`` a file elsewhere) needs a new folder.

    Raises:
        ConfigError: the folder holds a run; the message says how to continue it.
    """
    run_dir = Path(run_dir)
    if resume is not None and (
        str(resume) == "auto" or Path(resume).resolve().parent.parent == run_dir.resolve()
    ):
        return
    if (run_dir / "checkpoints" / "last.pt").exists() or (run_dir / "metrics.jsonl").exists():
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume auto "
            "(Trainer.from_config(config, resume='auto')), or pick another --name"
        )


def build_training(config: Config, trainer_cls: Any, **overrides: Any) -> Any:
    """Everything ``Trainer.from_config`` assembles; ``overrides`` replace Trainer arguments."""
    from m3sgg.engine.trainer import resolve_device

    plugins = load_plugins(config.plugins)  # imports first: plugins may register models
    config = resolved_config(config)
    # each rank its own random stream (dropout); DDP broadcasts rank 0's initial weights
    manual_seed(config.run.seed + idist.get_rank())
    device = resolve_device(config.run.device)
    spec, train, test = build_data(config)
    model = _build_model(config, spec, train)
    # reads model attributes: before any wrapper hides them; then the plugins' batch fields
    collate_fn = with_batch_fields(spec.collate(model), config.data.dataset)
    train_collate = spec.train_collate or spec.collate
    train_collate_fn = with_batch_fields(train_collate(model), config.data.dataset)
    if idist.get_world_size() > 1:  # DistributedDataParallel over the process group
        model = idist.auto_model(model.to(device))
    if config.train.compile:
        model = torch.compile(model)
    train_loader, test_loader = build_loaders(
        config, train, test, collate_fn, device, train_collate_fn
    )
    run_dir = overrides.pop("run_dir", None) or run_folder(config)
    if idist.get_world_size() > 1:  # one folder for all ranks (a timestamped name may differ)
        run_dir = Path(idist.broadcast(str(run_dir), src=0, safe_mode=True))
    arguments: dict[str, Any] = {
        "model": model,
        "config": config,
        "dataloader_train": train_loader,
        "dataloader_test": test_loader,
        "metrics": build_metrics(config.data.dataset, config.data.mode, config.eval),
        "split": spec.split,
        "run_dir": run_dir,
        "device": device,
    }
    arguments.update(overrides)
    trainer = trainer_cls(**arguments)
    apply_plugins(trainer, plugins)
    return trainer


def save_resolved_config(config: Config, run_dir: Path) -> Path:
    """Write ``<run>/config.yaml`` (what ``m3sgg train --config`` reads back), atomically.

    Raises:
        WriteError: the disk is full or the folder is not writable; nothing is left behind.
    """
    import yaml

    from m3sgg.engine.checkpoint import atomic_write

    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    return atomic_write(run_dir / "config.yaml", text.encode(), "the run's config")


def evaluate_checkpoint(
    checkpoint: str | Path,
    overrides: list[str] | None = None,
    split: str | None = None,
    announce: Any = None,
) -> dict[str, Any]:
    """Evaluate a saved model: its own resolved config, then ``overrides`` (e.g. another
    ``data.path``), on ``split`` (default: the config's test split). Returns the flat metrics.

    ``announce`` (e.g. ``print``) gets one line first: which checkpoint (epoch, iteration), split,
    data folder, dataset and mode are scored."""
    from m3sgg.config import config_from_dict, load_config
    from m3sgg.engine.checkpoint import load_checkpoint, require_sections
    from m3sgg.engine.evaluator import Evaluator
    from m3sgg.engine.trainer import resolve_amp, resolve_device
    from m3sgg.errors import DataError

    ckpt = load_checkpoint(checkpoint)
    try:
        saved = config_from_dict(ckpt["config"], source=f"{checkpoint} (config)")
    except KeyError:
        raise DataError(checkpoint, "checkpoint holds no config", field="config") from None
    config = load_config(None, overrides, base=config_to_dict(saved))
    load_plugins(config.plugins)
    device = resolve_device(config.run.device)
    spec = get_dataset_spec(config.data.dataset)
    root = data_root(config)
    split = split or config.test_split
    dataset = spec.open(config, root, split)
    model = _build_model(config, spec, dataset)
    require_sections(ckpt, checkpoint, "model")
    if announce is not None:
        engine = ckpt.get("engine") if isinstance(ckpt.get("engine"), dict) else {}
        iteration, length = int(engine.get("iteration") or 0), int(engine.get("epoch_length") or 0)
        epoch = -(-iteration // length) if length else 0
        announce(
            f"evaluating {Path(checkpoint).resolve()} (epoch {epoch}, iteration {iteration}) on "
            f"split {split!r} of {Path(root).resolve()} ({config.data.dataset} {config.data.mode})"
        )
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        lines = str(err).splitlines()
        raise DataError(
            checkpoint, f"weights do not fit the model ({lines[-1].strip()})", field="model"
        ) from None
    loader = DataLoader(
        dataset,
        batch_size=config.data.eval_videos_per_batch,
        sampler=ResumableSampler(len(dataset), shuffle=False),
        collate_fn=with_batch_fields(spec.collate(model), config.data.dataset),
        num_workers=config.data.num_workers,
    )
    evaluator = Evaluator(
        model.to(device),
        loader,
        build_metrics(config.data.dataset, config.data.mode, config.eval),
        spec.split,
        device=device,
        amp_dtype=resolve_amp(config.optim.amp, device),
    )
    return evaluator.eval_loop()

"""One configuration tree: dataclasses, loaded from YAML/TOML and overridden from the command line.

Every key has a type, a default and a one-line meaning (the field's comment in this module,
rendered by ``m3sgg config-reference``). :func:`load_config` reads a file (or none: the
defaults), applies ``section.key=value`` overrides, and validates: unknown keys fail with the
closest valid name, wrong types and out-of-range values fail with the key path.

Example::

    cfg = load_config("my.yaml", ["optim.lr=1e-4", "train.epochs=3"])
    cfg.optim.lr  # 0.0001
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3sgg.errors import ConfigError

__all__ = [
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "LogConfig",
    "ModelConfig",
    "OptimConfig",
    "PluginConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
]


@dataclass
class RunConfig:
    output: str = "runs"  # folder that holds one sub-folder per run
    name: str | None = None  # run folder name; None: "<dataset>-<mode>-<model>-<timestamp>"
    seed: int = 0  # seeds Python, numpy, torch and the sampler: bitwise-reproducible on CPU
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...


@dataclass
class DataConfig:
    dataset: str = "action_genome"  # "action_genome", "easg", or one a plugin registers
    path: str | None = None  # dataset root; None: the built-in toy dataset (made on first use)
    mode: str | None = None  # AG: predcls|sgcls|sgdet; EASG: edgecls|sgcls|easgcls; None: the first
    train_split: str = "train"  # split trained on
    test_split: str | None = None  # split evaluated; None: the dataset's ("test" AG, "val" EASG)
    features: str | None = None  # AG feature store; None: <path>/features
    videos_per_batch: int = 1  # videos (AG) or graphs (EASG) per training step
    eval_videos_per_batch: int = 4  # videos or graphs per evaluation step
    num_workers: int = 0  # DataLoader worker processes
    filter_small_boxes: bool = False  # AG: drop objects whose box side is below min_box_size
    min_box_size: float = 16.0  # AG: pixels, used by filter_small_boxes
    toy_videos: int = 96  # size of the toy dataset made when path is None
    toy_seed: int = 0  # seed of the toy dataset made when path is None


@dataclass
class ModelConfig:
    name: str | None = None  # a registered model; None: sttran (AG) or easg_fc (EASG)
    options: dict[str, Any] | None = None  # constructor arguments (over the preset's widths)
    preset: str = "auto"  # "toy" widths, "none" (paper sizes), "auto": toy on toy-data folders


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # "adamw", "adam" or "sgd"
    lr: float = 1e-3  # initial learning rate
    weight_decay: float = 0.0  # decoupled (adamw) or L2 (adam, sgd) weight decay
    momentum: float = 0.9  # sgd only
    grad_clip: float | None = 5.0  # max L2 norm of all gradients (STTran: 5); None: no clipping
    accumulate_steps: int = 1  # optimizer step every N batches (gradient accumulation)
    amp: str = "auto"  # "auto" (bf16 on CUDA, off on CPU), "none", "bf16", "fp16" (with scaler)


@dataclass
class ScheduleConfig:
    name: str = "plateau"  # "plateau" (on metric), "cosine" (over all iterations) or "none"
    metric: str | None = None  # plateau: metric watched (mode max); None: with/R@20
    patience: int = 1  # plateau: evaluations without improvement before reducing
    factor: float = 0.5  # plateau: lr multiplier on reduction
    threshold: float = 1e-4  # plateau: least improvement that counts (torch's default)
    threshold_mode: str = "rel"  # plateau: "rel" (over best * (1 + threshold)) or "abs" (best + it)
    min_lr: float = 1e-7  # plateau and cosine: lower bound of the lr
    warmup_iters: int = 0  # linear warmup from 0 over this many iterations (0: none)


@dataclass
class TrainConfig:
    epochs: int = 8  # epochs to train
    eval_every_epochs: int = 1  # evaluate every N epochs (0: never at epoch ends)
    eval_every_iters: int = 0  # also evaluate every N iterations (0: never)
    early_stop_patience: int = 0  # stop after N evaluations without improvement (0: off)
    early_stop_metric: str | None = None  # watched (mode max); None: with/mR@20 (EASG: R@20)
    compile: bool = False  # wrap the model in torch.compile


@dataclass
class CheckpointConfig:
    best_metrics: list[str] | None = None  # None: with/mR@20, with/R@20 (EASG: with/R@20)
    keep: int = 1  # checkpoints kept per best metric (top-k)
    every_iters: int = 0  # also write "last" every N iterations (0: at epoch ends only)


@dataclass
class EvalConfig:
    constraints: list[str] = field(default_factory=lambda: ["with", "semi", "no"])  # AG constraints
    ks: list[int] = field(default_factory=lambda: [10, 20, 50, 100])  # AG recall cut-offs
    easg_ks: list[int] = field(default_factory=lambda: [10, 20, 50])  # EASG recall cut-offs
    semi_threshold: float = 0.9  # AG semi constraint: predicate score threshold (strict >)
    iou_threshold: float = 0.5  # AG: subject and object IoU needed for a match (>=)


@dataclass
class LogConfig:
    every_iters: int = 10  # console / visdom loss logging period in iterations
    progress_bar: bool = False  # ignite's ProgressBar over each epoch
    visdom: str | None = None  # visdom server URL, e.g. "http://127.0.0.1:8097"; None: off


@dataclass
class PluginConfig:
    """One entry of ``plugins:``; a plain string ``"name"`` is ``{name: "name"}``."""

    name: str  # "package.module:attr", or the name of an installed m3sgg.plugins entry point
    options: dict[str, Any] | None = None  # keyword arguments of its setup(trainer, **options)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    plugins: list[PluginConfig] = field(
        default_factory=list,
    )  # run with the trainer: "module:attr" or entry point names, or {name, options} entries

    @property
    def plugin_names(self) -> list[str]:
        """The names of ``plugins``, in order."""
        return [p.name for p in self.plugins]

    def validate(self) -> Config:
        """Check values that types alone cannot (ConfigError naming the key) and fill the
        dataset-dependent defaults (watched metrics), so the saved config is fully resolved."""
        spec = self.dataset_spec
        watched = spec.watched
        if self.checkpoint.best_metrics is None:
            self.checkpoint.best_metrics = list(watched["best"])
        if self.schedule.metric is None:
            self.schedule.metric = watched["schedule"]
        if self.train.early_stop_metric is None:
            self.train.early_stop_metric = watched["early_stop"]
        if self.data.mode is None:
            self.data.mode = spec.default_mode
        _choice("data.mode", self.data.mode, tuple(spec.modes))
        _choice("model.preset", self.model.preset, ("auto", "toy", "none"))
        seen: set[str] = set()
        for i, plugin in enumerate(self.plugins):
            if not plugin.name.strip():
                raise ConfigError(f"plugins[{i}].name: must not be empty")
            if plugin.name in seen:
                raise ConfigError(f"plugins[{i}].name: {plugin.name!r} is listed twice")
            seen.add(plugin.name)
        if self.model.name is None and spec.default_model is None:
            raise ConfigError(f"model.name: dataset {spec.name!r} has no default model; set one")
        _choice("optim.optimizer", self.optim.optimizer, ("adamw", "adam", "sgd"))
        _choice("optim.amp", self.optim.amp, ("auto", "none", "bf16", "fp16"))
        _choice("schedule.name", self.schedule.name, ("plateau", "cosine", "none"))
        _choice("schedule.threshold_mode", self.schedule.threshold_mode, ("rel", "abs"))
        for c in self.eval.constraints:
            _choice("eval.constraints[]", c, ("with", "semi", "no"))
        _positive("optim.lr", self.optim.lr)
        _positive("data.videos_per_batch", self.data.videos_per_batch)
        _positive("data.eval_videos_per_batch", self.data.eval_videos_per_batch)
        _positive("optim.accumulate_steps", self.optim.accumulate_steps)
        _positive("checkpoint.keep", self.checkpoint.keep)
        _positive("log.every_iters", self.log.every_iters)
        _positive("train.epochs", self.train.epochs)
        if self.optim.grad_clip is not None:
            _positive("optim.grad_clip", self.optim.grad_clip)
        for key in (
            "data.num_workers",
            "train.eval_every_epochs",
            "train.eval_every_iters",
            "train.early_stop_patience",
            "checkpoint.every_iters",
            "schedule.warmup_iters",
            "optim.weight_decay",
            "schedule.threshold",
        ):
            section, name = key.split(".")
            if getattr(getattr(self, section), name) < 0:
                raise ConfigError(
                    f"{key}: must be >= 0, got {getattr(getattr(self, section), name)}"
                )
        if not 0 < self.schedule.factor < 1:
            raise ConfigError(f"schedule.factor: must be in (0, 1), got {self.schedule.factor}")
        if any(k <= 0 for k in self.eval.ks + self.eval.easg_ks):
            raise ConfigError("eval.ks: every K must be a positive integer")
        return self

    @property
    def dataset_spec(self) -> Any:
        """The :class:`~m3sgg.data.registry.DatasetSpec` of ``data.dataset``.

        A dataset that is not registered yet may come from a plugin, which registers it when
        imported: the plugins (entry points and ``plugins``) are imported, then it is looked up
        again.
        """
        from m3sgg.data.registry import find_dataset_spec, registered_datasets

        spec = find_dataset_spec(self.data.dataset)
        if spec is None:
            from m3sgg.plugins import import_plugins

            import_plugins(self.plugin_names)
            spec = find_dataset_spec(self.data.dataset)
        if spec is None:
            options = ", ".join(repr(name) for name in registered_datasets())
            raise ConfigError(
                f"data.dataset: must be one of {options} or a dataset a plugin registers, "
                f"got {self.data.dataset!r}"
            )
        return spec

    @property
    def model_name(self) -> str:
        """``model.name``, or the dataset's default model."""
        return self.model.name or self.dataset_spec.default_model

    def model_options(self) -> dict[str, Any]:
        """The model's constructor arguments: ``model.options`` over the toy preset when
        ``model.preset`` asks for it ("toy", or "auto" on toy data: ``data.path`` unset or a
        folder ``m3sgg toy-data`` wrote), over nothing (the model's own defaults) otherwise."""
        from m3sgg.models.presets import toy_preset

        preset = toy_preset(self.model_name) if self.uses_toy_preset else {}
        return {**preset, **(self.model.options or {})}

    @property
    def uses_toy_preset(self) -> bool:
        """Whether the model starts from its toy widths (see :meth:`model_options`)."""
        if self.model.preset != "auto":
            return self.model.preset == "toy"
        return self.data.path is None or is_toy_data(self.data.path)

    @property
    def test_split(self) -> str:
        """The evaluation split, defaulting by dataset."""
        return self.data.test_split or self.dataset_spec.test_split


def is_toy_data(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a dataset ``m3sgg toy-data`` wrote (its README.txt says so)."""
    try:
        with open(Path(path) / "README.txt", encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return first.startswith("m3sgg toy ") or "written by m3sgg" in first


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"{key}: must be one of {options}, got {value!r}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")


# --------------------------------------------------------------------------- dict <-> dataclass


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (JSON/YAML-serialisable) of a config."""
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build and validate a Config from a nested dict; missing keys keep their defaults.

    Errors name ``source`` (the config file) unless it is the generic ``"config"``.
    """
    config = _build(Config, data, source, prefix="")
    try:
        return config.validate()
    except ConfigError as err:
        if source in ("config", "") or str(err).startswith(source):
            raise
        raise ConfigError(f"{source}: {err}") from None


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: {prefix or 'top level'}: expected a table/mapping, got "
            f"{type(data).__name__}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {prefix}{close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: unknown key {path!r}{hint}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key] = _build(hint_type, value, source, prefix=f"{path}.")
        else:
            kwargs[key] = _coerce(value, hint_type, source, path)
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            raise ConfigError(f"{source}: {prefix}{name}: required")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, source: str, path: str) -> Any:
    """Check ``value`` against a field's type.

    Conversions: int → float, and a numeric string → float (YAML 1.1 reads ``1e-4`` as a string).
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], source, path)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):  # a list of sections (plugins): "name" or a mapping
        if isinstance(value, str):
            value = {"name": value}
        return _build(hint, value, source, prefix=f"{path}.")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {path}: expected a list, got {value!r}")
        return [_coerce(v, args[0], source, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {path}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{source}: {path}: expected a number, got {value!r}") from None
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{source}: {path}: expected true or false, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{source}: {path}: expected an integer, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{source}: {path}: expected {hint.__name__}, got {value!r}")
    return value


# --------------------------------------------------------------------------- files and overrides


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 scalars: only true/false are booleans (``no`` stays the
    string the AG constraint needs) and ``1e-4`` is a float."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list("tTfF"),
    )
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    return yaml.load(text, Loader=Loader)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from None
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: invalid TOML ({err})") from None
    if path.suffix in (".yaml", ".yml", ".json"):
        import yaml

        try:
            data = _yaml_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
            where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            reason = getattr(err, "problem", None) or str(err).splitlines()[0]
            context, at = getattr(err, "context", None), getattr(err, "context_mark", None)
            if context and at is not None and at is not mark:
                reason = f"{context} at {at.line + 1}:{at.column + 1}: {reason}"
            raise ConfigError(f"{path}{where}: invalid YAML ({reason})") from None
        return data or {}
    raise ConfigError(f"{path}: unknown config format (use .yaml, .yml, .toml or .json)")


def _parse_override(item: str) -> tuple[list[str], Any]:
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected section.key=value")
    try:
        value = _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    *,
    base: dict[str, Any] | None = None,
    plugins: list[str] | tuple[str, ...] = (),
) -> Config:
    """Defaults ← file (YAML/TOML/JSON) ← ``section.key=value`` overrides, then validated.

    Override values are parsed as YAML scalars (``1e-4``, ``true``, ``[with, no]``, ``null``).
    ``model.options.d_model=128`` reaches into the model's options. ``base`` (a config dict,
    e.g. a checkpoint's) replaces the defaults. ``plugins`` (``--plugin``) are added to the
    ``plugins`` list (without options) unless it names them already.
    """
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = os.fspath(path)
        data = _read_file(Path(path))
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
    merged = config_to_dict(Config())
    if base is not None:
        _merge(merged, base, "base config", "")
    _merge(merged, data, source, "")
    for item in overrides or []:
        keys, value = _parse_override(item)
        node = merged
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node, dict) or key not in node:
                _unknown(f"--set {item}", keys[: depth + 1], node)
            if node[key] is None and keys[: depth + 1] == ["model", "options"]:
                node[key] = {}
            node = node[key]
        if not isinstance(node, dict) or (
            keys[-1] not in node and keys[:2] != ["model", "options"]
        ):
            _unknown(f"--set {item}", keys, node)
        node[keys[-1]] = value
    if plugins:
        listed = merged.get("plugins")
        if not isinstance(listed, list):
            raise ConfigError(f"{source}: plugins: expected a list, got {listed!r}")
        names = {p.get("name") if isinstance(p, dict) else p for p in listed}
        listed.extend(name for name in dict.fromkeys(plugins) if name not in names)
    return config_from_dict(merged, source)


def _merge(base: dict[str, Any], update: dict[str, Any], source: str, prefix: str) -> None:
    for key, value in update.items():
        if key not in base:
            _unknown(source, [*prefix.split(".")[:-1], key] if prefix else [key], base)
        if isinstance(base[key], dict) and isinstance(value, dict) and key != "options":
            _merge(base[key], value, source, f"{prefix}{key}.")
        else:
            base[key] = value


def _unknown(source: str, keys: list[str], node: Any) -> typing.NoReturn:
    valid = list(node) if isinstance(node, dict) else []
    close = difflib.get_close_matches(keys[-1], valid, n=1)
    hint = f"; did you mean {'.'.join([*keys[:-1], close[0]])!r}?" if close else ""
    raise ConfigError(f"{source}: unknown key {'.'.join(keys)!r}{hint}")

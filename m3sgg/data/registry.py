"""Datasets the engine can train on, each described by a :class:`DatasetSpec`.

The engine never branches on a dataset's name: it asks the spec how to open a split, how to
collate samples for a given model, how to cut predictions back into per-sample pairs for the
metrics, which constructor arguments the data implies for the model (feature widths, vocabulary
sizes), and how to make the built-in toy copy. A plugin registers a new dataset the same way.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the config looks datasets up here, so this module must not import it
    from m3sgg.config import Config

__all__ = [
    "DatasetSpec",
    "cache_dir",
    "find_dataset_spec",
    "get_dataset_spec",
    "register_dataset",
    "registered_datasets",
    "toy_dataset_path",
]

#: bump when the toy generators change what they write, so stale caches are not reused
TOY_VERSION = 2


@dataclass(frozen=True)
class DatasetSpec:
    """How the engine uses one dataset.

    Attributes:
        name: ``"action_genome"``, ``"easg"``, ...
        open: ``(config, root, split) -> dataset`` (a map-style dataset of samples).
        collate: ``(model) -> collate_fn`` (the model decides, e.g., which feature section).
        train_collate: ``(model) -> collate_fn`` for the training loader when it differs
            (STTran's sgdet trains on other inputs than it evaluates); None: ``collate``.
        split: ``(batch, predictions) -> [(gt, pred), ...]`` for the metrics.
        model_inputs: ``(dataset) -> dict`` of model constructor arguments the data fixes.
        make_toy: ``(folder, config) -> folder``: write the toy dataset.
        modes: the ``data.mode`` values it supports; the first is its default mode
            (``data.mode: null``), see :attr:`default_mode`.
        default_model: the model ``model.name: null`` picks (None: ``model.name`` is required).
        watched: metric keys the default handlers watch: ``{"best": (keys of the best
            checkpoints), "schedule": key of the plateau scheduler, "early_stop": key}``.
        test_split: the split evaluated when ``data.test_split`` is unset.
    """

    name: str
    open: Callable[[Config, Path, str], Any]
    collate: Callable[[Any], Callable[[list[Any]], Any]]
    split: Callable[[Any, Any], list[tuple[Any, Any]]]
    model_inputs: Callable[[Any], dict[str, Any]]
    make_toy: Callable[[Path, Config], Path]
    modes: tuple[str, ...] = field(kw_only=True)
    default_model: str | None = field(kw_only=True)
    watched: Mapping[str, Any] = field(kw_only=True)
    test_split: str = field(default="test", kw_only=True)
    train_collate: Callable[[Any], Callable[[list[Any]], Any]] | None = field(
        default=None, kw_only=True
    )

    @property
    def default_mode(self) -> str:
        """The mode ``data.mode: null`` picks: the first of :attr:`modes`."""
        return self.modes[0]

    def __post_init__(self) -> None:
        if not self.modes or not all(isinstance(m, str) for m in self.modes):
            raise ValueError(f"dataset {self.name!r}: modes must be a non-empty tuple of names")
        missing = {"best", "schedule", "early_stop"} - set(self.watched)
        if missing:
            raise ValueError(f"dataset {self.name!r}: watched lacks {sorted(missing)}")


_SPECS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec, *, override: bool = False) -> DatasetSpec:
    """Make ``data.dataset: <spec.name>`` usable; a taken name raises unless ``override``."""
    if spec.name in _SPECS and not override:
        raise ValueError(f"dataset {spec.name!r} is already registered (override=True replaces it)")
    _SPECS[spec.name] = spec
    return spec


def find_dataset_spec(name: str) -> DatasetSpec | None:
    """The spec registered as ``name``, or None."""
    return _SPECS.get(name)


def registered_datasets() -> list[str]:
    return sorted(_SPECS)


def get_dataset_spec(name: str) -> DatasetSpec:
    if name not in _SPECS:
        raise KeyError(f"unknown dataset {name!r}; registered: {sorted(_SPECS)}")
    return _SPECS[name]


def cache_dir() -> Path:
    """``$M3SGG_CACHE``, else ``~/.cache/m3sgg``."""
    return Path(os.environ.get("M3SGG_CACHE") or Path.home() / ".cache" / "m3sgg")


def toy_dataset_path(config: Config) -> Path:
    """The toy dataset for ``config`` in the cache, generated on first use (atomically: a
    concurrent run either finds the finished folder or builds its own and discards it)."""
    spec = get_dataset_spec(config.data.dataset)
    name = f"{spec.name}-v{TOY_VERSION}-n{config.data.toy_videos}-s{config.data.toy_seed}"
    path = cache_dir() / "toy" / name
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        spec.make_toy(tmp, config)
        os.rename(tmp, path)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return path


# ------------------------------------------------------------------------------ Action Genome


def _ag_open(config: Config, root: Path, split: str) -> Any:
    from m3sgg.data.action_genome import ActionGenome

    features = Path(config.data.features) if config.data.features else root / "features"
    return ActionGenome(
        root,
        split,
        filter_small_boxes=config.data.filter_small_boxes,
        min_box_size=config.data.min_box_size,
        features=features,
    )


def _ag_collate(model: Any) -> Callable[[list[Any]], Any]:
    from m3sgg.data.collate import collate

    return functools.partial(collate, section=getattr(model, "input_section", "gt"))


def _ag_train_collate(model: Any) -> Callable[[list[Any]], Any]:
    """The training loader's collate: the model's ``train_section`` when it has one."""
    from m3sgg.data.collate import collate

    section = getattr(model, "train_section", None) or getattr(model, "input_section", "gt")
    return functools.partial(collate, section=section)


def _ag_split(batch: Any, predictions: Any) -> list[tuple[Any, Any]]:
    from m3sgg.data.collate import split_predictions

    return split_predictions(batch, predictions)


def _ag_model_inputs(dataset: Any) -> dict[str, Any]:
    store = dataset.store
    return {"object_dim": store.object_dim, "union_channels": store.union_channels}


def _ag_toy(folder: Path, config: Config) -> Path:
    from m3sgg.data.toy import make_toy_action_genome

    return make_toy_action_genome(folder, videos=config.data.toy_videos, seed=config.data.toy_seed)


register_dataset(
    DatasetSpec(
        "action_genome",
        _ag_open,
        _ag_collate,
        _ag_split,
        _ag_model_inputs,
        _ag_toy,
        modes=("predcls", "sgcls", "sgdet"),
        default_model="sttran",
        watched={
            "best": ("with/mR@20", "with/R@20"),
            "schedule": "with/R@20",
            "early_stop": "with/mR@20",
        },
        test_split="test",
        train_collate=_ag_train_collate,
    )
)


# ------------------------------------------------------------------------------ EASG


def _easg_open(config: Config, root: Path, split: str) -> Any:
    import logging

    from m3sgg.data.easg import EASG

    dataset = EASG(root, split, source="sgg", features=True)
    # one line per split: what the release search found, what is unused
    logging.getLogger("m3sgg").info("EASG %s split: %s", split, dataset.files.summary())
    return dataset


def _easg_collate(model: Any) -> Callable[[list[Any]], Any]:
    from m3sgg.data.collate_easg import collate_easg

    return collate_easg


def _easg_split(batch: Any, predictions: Any) -> list[tuple[Any, Any]]:
    from m3sgg.data.collate_easg import split_easg_predictions

    return split_easg_predictions(batch, predictions)


def _easg_model_inputs(dataset: Any) -> dict[str, Any]:
    from m3sgg.data.easg import easg_model_inputs

    return easg_model_inputs(dataset)


def _easg_toy(folder: Path, config: Config) -> Path:
    from m3sgg.data.toy_easg import make_toy_easg

    return make_toy_easg(folder, clips=config.data.toy_videos, seed=config.data.toy_seed)


register_dataset(
    DatasetSpec(
        "easg",
        _easg_open,
        _easg_collate,
        _easg_split,
        _easg_model_inputs,
        _easg_toy,
        modes=("edgecls", "sgcls", "easgcls"),
        default_model="easg_fc",
        # EASG reports no mean recall
        watched={"best": ("with/R@20",), "schedule": "with/R@20", "early_stop": "with/R@20"},
        test_split="val",
    )
)

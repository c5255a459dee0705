"""Search-space files: which config keys a study varies, and over which values.

A space file maps config keys (any key of the configuration reference, or
``model.options.<argument>``) to one distribution each::

    optim.lr: {log_float: [1e-6, 1e-3]}          # log-uniform between the bounds
    optim.weight_decay: {float: [0.0, 0.1], step: 0.01}
    model.options.enc_layers: {int: [1, 3]}      # inclusive bounds; log_int for log-uniform
    optim.optimizer: {choice: [adamw, sgd]}      # categorical

The file is validated like a config: an unknown key fails with one line naming the closest valid
key, and both ends of every range (every choice) are checked against the config's own rules
(``optim.lr: {float: [0, 1e-3]}`` fails: ``optim.lr`` must be > 0) before any trial runs.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3sgg.errors import ConfigError

__all__ = ["KINDS", "Param", "SearchSpace", "load_space", "set_key"]

#: distribution kinds a space file may name
KINDS = ("float", "log_float", "int", "log_int", "choice")
#: keys the study itself sets for every trial
_RESERVED = ("run.output", "run.name")


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` over ``low``..``high`` (inclusive), or over ``choices``."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial (an enqueued trial gets its fixed value)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(
                self.key, self.low, self.high, step=self.step or 1, log=self.kind == "log_int"
            )
        return trial.suggest_float(
            self.key, self.low, self.high, step=self.step, log=self.kind == "log_float"
        )

    def grid_values(self) -> list[Any]:
        """Every value a grid search visits: the choices, each integer step, or each float step.

        Raises:
            ConfigError: a continuous range without ``step`` (a grid needs finite values).
        """
        if self.kind == "choice":
            return list(self.choices)
        if self.step is None and self.kind in ("float", "log_float"):
            raise ConfigError(
                f"{self.key}: the grid sampler needs finite values: give 'step' or use 'choice'"
            )
        if self.kind == "log_int" or self.kind == "log_float":
            raise ConfigError(f"{self.key}: the grid sampler cannot step a log range; use 'choice'")
        step = self.step or 1
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        if self.kind == "int":
            return [int(self.low + i * step) for i in range(count)]
        return [round(self.low + i * step, 12) for i in range(count)]

    def edge_values(self) -> list[Any]:
        """The values validated before a study starts: both bounds, or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


@dataclass
class SearchSpace:
    """The parameters of a space file, in file order."""

    params: list[Param] = field(default_factory=list)
    source: str = "space"

    def suggest(self, trial: Any) -> dict[str, Any]:
        """``{key: value}`` for one trial, drawn in file order."""
        return {p.key: p.suggest(trial) for p in self.params}

    def grid(self) -> dict[str, list[Any]]:
        """The search space of Optuna's ``GridSampler``."""
        return {p.key: p.grid_values() for p in self.params}

    def keys(self) -> list[str]:
        return [p.key for p in self.params]


def set_key(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a config dict; ``model.options.x`` creates the options mapping."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _config_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """Every leaf key of a config dict (``model.options`` counts as a leaf)."""
    keys = []
    for name, value in tree.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict) and path != "model.options":
            keys += _config_keys(value, f"{path}.")
        else:
            keys.append(path)
    return keys


def _model_option_names(base: Any) -> list[str] | None:
    """The keyword arguments ``model.options`` may set for the base config's model (None: the
    model's signature accepts anything)."""
    import inspect

    from m3sgg.config_reference import model_rows
    from m3sgg.models import get_model_spec
    from m3sgg.plugins import load_plugins

    load_plugins(base.plugins)
    factory = get_model_spec(base.model_name).factory  # ConfigError: no such model
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [row.key.removeprefix("model.options.") for row in model_rows(base.model_name)]


def _unknown(source: str, key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{source}: unknown key {key!r}{hint}")


def _number(source: str, key: str, value: Any, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{source}: {key}: expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{source}: {key}: expected a number, got {value!r}") from None
    if integer:
        if float(value) != int(value):
            raise ConfigError(f"{source}: {key}: expected an integer, got {value!r}")
        return int(value)
    return float(value)


def _parse_param(source: str, key: str, spec: Any) -> Param:
    where = f"{source}: {key}"
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: expected a mapping like {{log_float: [1e-6, 1e-3]}}, got {spec!r}"
        )
    kinds = [k for k in spec if k in KINDS]
    extra = [k for k in spec if k not in (*KINDS, "step")]
    if extra:
        valid = [*KINDS, "step"]
        close = difflib.get_close_matches(str(extra[0]), valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f" (one of {', '.join(KINDS)})"
        raise ConfigError(f"{where}: unknown distribution {extra[0]!r}{hint}")
    if len(kinds) != 1:
        raise ConfigError(f"{where}: name exactly one of {', '.join(KINDS)}")
    kind = kinds[0]
    values = spec[kind]
    if kind == "choice":
        if "step" in spec:
            raise ConfigError(f"{where}: 'step' does not apply to 'choice'")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: choice: expected a non-empty list, got {values!r}")
        for value in values:
            if not (value is None or isinstance(value, bool | int | float | str)):
                raise ConfigError(
                    f"{where}: choice: values must be numbers, strings, booleans or null, "
                    f"got {value!r}"
                )
        return Param(key, kind, choices=tuple(values))
    if not isinstance(values, list) or len(values) != 2:
        raise ConfigError(f"{where}: {kind}: expected [low, high], got {values!r}")
    integer = kind in ("int", "log_int")
    low = _number(source, f"{key}.{kind}[0]", values[0], integer)
    high = _number(source, f"{key}.{kind}[1]", values[1], integer)
    if not low < high:
        raise ConfigError(f"{where}: {kind}: low must be below high, got [{low}, {high}]")
    if kind.startswith("log_") and low <= 0:
        raise ConfigError(f"{where}: {kind}: a log range needs low > 0, got {low}")
    step = None
    if "step" in spec:
        step = _number(source, f"{key}.step", spec["step"], integer)
        if not step > 0:
            raise ConfigError(f"{where}: step must be > 0, got {step}")
        if kind.startswith("log_") and step != 1:
            raise ConfigError(f"{where}: a log range takes no step")
    return Param(key, kind, low, high, step)


def load_space(path: str | os.PathLike[str], base: Any) -> SearchSpace:
    """Read and validate a space file against ``base`` (the study's base :class:`Config`).

    Raises:
        ConfigError: unreadable file, unknown key (with the closest one), a malformed
            distribution, or a bound/choice the config itself refuses.
    """
    from m3sgg.config import _read_file, config_from_dict, config_to_dict

    source = os.fspath(path)
    data = _read_file(Path(path))
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: expected a mapping of config keys to distributions")
    tree = config_to_dict(base)
    valid = [k for k in _config_keys(tree) if k not in _RESERVED]
    options: list[str] | None = None
    params: list[Param] = []
    for key, spec in data.items():
        key = str(key)
        if key in _RESERVED:
            raise ConfigError(f"{source}: {key}: set by the study for each trial, not searchable")
        if key.startswith("model.options."):
            if options is None:
                options = _model_option_names(base) or []
            name = key.removeprefix("model.options.")
            if options and name not in options:
                raise _unknown(source, key, [f"model.options.{o}" for o in options])
        elif key not in valid:
            raise _unknown(source, key, [*valid, *(f"model.options.{o}" for o in options or [])])
        params.append(_parse_param(source, key, spec))
    for param in params:  # every bound and choice must be a config the config itself accepts
        if param.key.startswith("model.options."):
            continue  # checked by the model's constructor when a trial builds it
        for value in param.edge_values():
            trial_tree = copy.deepcopy(tree)
            set_key(trial_tree, param.key, value)
            try:
                config_from_dict(trial_tree)
            except ConfigError as err:
                raise ConfigError(f"{source}: {param.key} = {value!r}: {err}") from None
    return SearchSpace(params, source)

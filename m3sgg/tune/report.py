"""Reading a study back: ``m3sgg tune --show`` (table, best config, importances) and
``--export-best`` (the best trial's config, ready for ``m3sgg train --config``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from m3sgg.errors import ConfigError, DataError

__all__ = ["best_config", "export_best", "importances", "show"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def importances(study: Any) -> dict[str, float] | None:
    """Optuna's parameter importances (fANOVA) over the complete trials; None with fewer than
    two complete trials or a space of one value."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None
    try:
        return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):
        return None


def show(study: Any) -> str:
    """The table of trials (number, state, value, evaluations, parameters, note), the best
    trial with its run folder, and the parameter importances."""
    trials = study.get_trials(deepcopy=False)
    keys: list[str] = []
    for trial in trials:
        keys += [k for k in trial.params if k not in keys]
    metric = study.user_attrs.get("m3sgg:metric", "value")
    header = ["trial", "state", metric, "evals", *keys, "note"]
    rows = [header]
    for trial in trials:
        note = []
        if trial.user_attrs.get("m3sgg:killed"):
            note.append("killed, retried")
        if "m3sgg:retry_of" in trial.user_attrs:
            note.append(f"retry of {trial.user_attrs['m3sgg:retry_of']}")
        if "m3sgg:error" in trial.user_attrs:
            note.append(trial.user_attrs["m3sgg:error"])
        value = trial.value
        if value is None and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        rows.append(
            [
                str(trial.number),
                trial.state.name.lower(),
                _fmt(value),
                str(len(trial.intermediate_values)),
                *(_fmt(trial.params.get(k)) for k in keys),
                "; ".join(note),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ]
    lines = [line.rstrip() for line in lines]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  ----")
    out = [f"study {study.study_name} ({study.direction.name.lower()} {metric})", "", *lines, ""]
    try:
        best = study.best_trial
    except ValueError:
        out.append("best: no complete trial yet")
        return "\n".join(out) + "\n"
    out.append(f"best: trial {best.number}, {metric} {best.value:.4f}")
    for key, value in best.params.items():
        out.append(f"  {key}: {json.dumps(value)}")
    if "m3sgg:run_dir" in best.user_attrs:
        out.append(f"  run folder: {best.user_attrs['m3sgg:run_dir']}")
    ranking = importances(study)
    out.append("")
    if ranking is None:
        out.append("importances: need at least two complete trials")
    else:
        out.append("importances (fANOVA):")
        for key, value in ranking.items():
            out.append(f"  {key:<{max(map(len, ranking))}}  {value:.3f}")
    return "\n".join(out) + "\n"


def best_config(study: Any) -> dict[str, Any]:
    """The best trial's resolved config (its run folder's ``config.yaml``, else the study's base
    config with its parameters), with ``run.name`` cleared and ``run.output`` the study's
    parent folder, so that training it again starts a new run.

    Raises:
        ConfigError: the study has no complete trial.
    """
    from m3sgg.config import _read_file
    from m3sgg.tune.runner import trial_config

    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"study {study.study_name!r} has no complete trial yet") from None
    base = study.user_attrs.get("m3sgg:base_config")
    run_dir = best.user_attrs.get("m3sgg:run_dir")
    saved = Path(run_dir) / "config.yaml" if run_dir else None
    if saved is not None and saved.is_file():
        tree = _read_file(saved)
    elif base is not None:
        from m3sgg.config import config_to_dict

        tree = config_to_dict(trial_config(base, dict(best.params), Path("runs") / "best"))
    else:
        raise DataError(str(saved), "the best trial's config is missing")
    tree["run"]["name"] = None
    if base is not None:
        tree["run"]["output"] = base["run"]["output"]
    return tree


def export_best(study: Any, path: str | os.PathLike[str]) -> Path:
    """Write :func:`best_config` as YAML to ``path`` (atomically)."""
    import yaml

    from m3sgg.config import config_from_dict
    from m3sgg.engine.checkpoint import atomic_write

    tree = best_config(study)
    config_from_dict(tree, "best config")  # it must load as it is written
    text = yaml.safe_dump(tree, sort_keys=False)
    return atomic_write(path, text.encode(), "the best config")

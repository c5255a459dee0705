"""``m3sgg tune``: search hyperparameters with Optuna (the optional ``tune`` extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from m3sgg.errors import ConfigError, M3sggError

__all__ = ["INSTALL_HINT", "register_commands", "require_optuna"]

INSTALL_HINT = "pip install -e '.[tune]' (or pip install 'optuna>=5,<6')"


def require_optuna() -> None:
    """Raise a one-line user error when Optuna is not installed."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise M3sggError(f"needs Optuna, which is not installed: {INSTALL_HINT}") from None


def _base(args: argparse.Namespace) -> Any:
    from m3sgg.config import load_config

    overrides = list(args.set or [])
    if args.output is not None:
        overrides.insert(0, f"run.output={json.dumps(str(args.output))}")
    return load_config(args.config, overrides, plugins=args.plugin or ())


def _storage_for_reading(args: argparse.Namespace, study_dir: Path) -> str:
    from m3sgg.tune.study import default_storage

    if args.storage is not None:
        return args.storage
    storage = default_storage(study_dir, 1)
    if not (study_dir / "study.db").exists() and not (study_dir / "study.journal").exists():
        raise ConfigError(
            f"--study {args.study}: no study database in {study_dir} (study.db or study.journal); "
            "give --output or --storage"
        )
    return storage


def _cmd_tune(args: argparse.Namespace) -> int:
    from m3sgg.cli import _setup_logging

    require_optuna()
    _setup_logging(args.verbose)
    from m3sgg.config import config_to_dict

    base = _base(args)
    study_dir = Path(base.run.output) / args.study
    if args.show or args.export_best:
        import optuna

        from m3sgg.tune.report import export_best, show
        from m3sgg.tune.study import load_existing, open_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = load_existing(args.study, open_storage(_storage_for_reading(args, study_dir)))
        if args.show:
            print(show(study), end="")
        if args.export_best:
            path = export_best(study, args.export_best)
            print(f"wrote the best trial's config to {path} (m3sgg train --config {path})")
        return 0
    if args.space is None:
        raise ConfigError("--space is needed to run a study (or give --show / --export-best)")
    from m3sgg.tune.runner import TuneSettings, tune

    settings = TuneSettings(
        study=args.study,
        space=str(args.space),
        base=config_to_dict(base),
        n_trials=args.n_trials,
        metric=args.metric,
        direction=args.direction,
        storage=args.storage,
        timeout=args.timeout,
        pruner=args.pruner,
        sampler=args.sampler,
        seed=args.seed,
        workers=args.workers,
        visdom=args.visdom,
        verbose=args.verbose,
    )
    summary = tune(settings)
    best = (
        f"best {summary['best_value']:.4f} (trial {summary['best_trial']})"
        if summary["best_trial"] is not None
        else "no complete trial"
    )
    print(
        f"study {summary['study']}: {summary['complete']} complete, {summary['pruned']} pruned, "
        f"{summary['failed']} failed; {best}; storage {summary['storage']}"
    )
    return int(summary["exit_code"])


def register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tune`` to the CLI's subcommands."""
    tune = subparsers.add_parser(
        "tune",
        help="search hyperparameters with Optuna (pruning, study database, crash-safe resume)",
        description="Run a hyperparameter study: each trial is an m3sgg run in "
        "<output>/<study>/trial-NNNN. The same command continues a stopped or killed study. "
        f"Needs the tune extra: {INSTALL_HINT}.",
    )
    tune.add_argument("--study", required=True, help="study name (its folder: <output>/<study>)")
    tune.add_argument("--space", type=Path, help="search-space YAML/TOML (config key: range)")
    tune.add_argument("--config", type=Path, help="base config file of every trial")
    tune.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a base config key"
    )
    tune.add_argument("--output", type=Path, help="folder of run folders (run.output)")
    tune.add_argument(
        "--plugin", action="append", metavar="MODULE:ATTR", help="load a plugin (repeatable)"
    )
    tune.add_argument(
        "--storage",
        help="SQLAlchemy URL or journal file (default: <output>/<study>/study.db; "
        "study.journal with --workers > 1)",
    )
    tune.add_argument(
        "--metric", help="evaluation metric optimised (default: the first best-checkpoint metric)"
    )
    tune.add_argument("--direction", choices=("maximize", "minimize"), default="maximize")
    tune.add_argument(
        "--n-trials", type=int, default=20, help="trials the study ends with (default 20)"
    )
    tune.add_argument("--timeout", type=float, help="start no trial after this many seconds")
    tune.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    tune.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe")
    tune.add_argument("--seed", type=int, help="sampler seed (worker w uses seed + w)")
    tune.add_argument("--workers", type=int, default=1, help="trial processes on this machine")
    tune.add_argument(
        "--visdom",
        nargs="?",
        const="http://127.0.0.1:8097",
        metavar="URL",
        help="plot the study (value per trial, best so far) to a visdom server",
    )
    tune.add_argument(
        "--show", action="store_true", help="print the trials, the best config, importances"
    )
    tune.add_argument(
        "--export-best", type=Path, metavar="PATH", help="write the best trial's config (YAML)"
    )
    tune.add_argument("--verbose", action="store_true", help="also show each trial's run lines")
    tune.set_defaults(func=_cmd_tune)

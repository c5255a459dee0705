"""Command-line interface: ``m3sgg <command> …`` (also ``python -m m3sgg``).

Every command turns user errors (:class:`~m3sgg.errors.M3sggError`: bad files, configs or
arguments) into one line on stderr and exit code 2; a traceback means a bug in m3sgg.
Heavy imports (torch, ignite) happen inside the commands so ``m3sgg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from m3sgg import __version__
from m3sgg.errors import M3sggError

__all__ = ["build_parser", "main"]

DATASETS = ("action_genome", "easg")


def _setup_logging(verbose: bool = False) -> None:
    """m3sgg's lines on stdout; ignite's per-run chatter only with --verbose."""
    import logging

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("m3sgg")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    # ignite logs an ERROR for every exception it re-raises; the CLI already prints one line
    logging.getLogger("ignite").setLevel(logging.INFO if verbose else logging.CRITICAL)


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """Convenience flags → config overrides (``--set`` items come last and win)."""
    flags = {
        "run.output": args.output,
        "run.name": args.name,
        "run.seed": args.seed,
        "run.device": args.device,
        "train.epochs": args.epochs,
        "data.dataset": args.dataset,
        "data.path": args.data_path,
        "data.mode": args.mode,
        "data.videos_per_batch": args.videos_per_batch,
        "model.name": args.model,
        "log.visdom": args.visdom,
    }
    items = [
        f"{key}={json.dumps(str(v) if isinstance(v, Path) else v)}"
        for key, v in flags.items()
        if v is not None
    ]
    if args.progress:
        items.append("log.progress_bar=true")
    return items + list(args.set or [])


def _cmd_train(args: argparse.Namespace) -> int:
    import tempfile

    from m3sgg.config import load_config
    from m3sgg.engine.builders import check_new_run, run_folder
    from m3sgg.engine.trainer import Trainer
    from m3sgg.errors import ConfigError

    _setup_logging(args.verbose)
    config = load_config(args.config, _train_overrides(args), plugins=args.plugin or ())
    if args.describe:
        with tempfile.TemporaryDirectory() as tmp:
            print(Trainer.from_config(config, run_dir=Path(tmp) / "run").describe())
        return 0
    if args.resume == "auto" and config.run.name is None:
        raise ConfigError("--resume auto needs --name (the run folder to continue)")
    run_dir = run_folder(config).expanduser().resolve()  # absolute: the hint works anywhere
    # the saved config names its own folder, so `--config <run>/config.yaml --resume auto` works
    config.run.name, config.run.output = run_dir.name, str(run_dir.parent)
    resume = None if args.resume is None else _resume_target(args.resume)
    check_new_run(run_dir, resume)
    from m3sgg.config import config_to_dict
    from m3sgg.engine.distributed import launch, launched_by_torchrun, train_worker

    # the run's own resolved config carries every --set/--plugin/--epochs given at the start
    hint = f"m3sgg train --config {run_dir / 'config.yaml'} --resume auto"
    if args.nproc_per_node:
        hint += f" --nproc-per-node {args.nproc_per_node}"
    if args.backend:
        hint += f" --backend {args.backend}"
    if launched_by_torchrun():
        hint = f"torchrun ... -m {hint}"
    summary = launch(
        train_worker,
        config_to_dict(config),
        resume,
        nproc_per_node=args.nproc_per_node,
        backend=args.backend,
        run_dir=str(run_dir),
        resume_hint=hint,
        verbose=args.verbose,
        ignore_missing_plugins=args.ignore_missing_plugins,
    )
    if summary is None:  # ranks > 0 under torchrun
        return 0
    if summary["stop_reason"]:
        print(f"m3sgg train: {summary['stop_reason']}", file=sys.stderr)
    return int(summary["exit_code"])


def _resume_target(resume: str) -> str:
    """``--resume``'s value as a checkpoint file (a run folder means its last.pt), or "auto"."""
    return resume if resume == "auto" else str(_checkpoint_path(Path(resume)))


def _checkpoint_path(path: Path) -> Path:
    """A checkpoint file, or a run folder (its ``checkpoints/last.pt``)."""
    return path / "checkpoints" / "last.pt" if path.is_dir() else path


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from m3sgg.engine.builders import evaluate_checkpoint
    from m3sgg.engine.handlers.console import headline
    from m3sgg.engine.handlers.metrics_file import jsonable
    from m3sgg.errors import ConfigError

    _setup_logging(args.verbose)
    overrides = []
    for key, value in (
        ("data.dataset", args.dataset),
        ("data.path", args.data_path),
        ("run.device", args.device),
    ):
        if value is not None:
            overrides.append(f"{key}={json.dumps(str(value))}")
    overrides += list(args.set or [])
    target = args.checkpoint or args.checkpoint_flag
    if target is None:
        raise ConfigError("evaluate needs a checkpoint file or a run folder (RUN)")
    stream = sys.stderr if args.json else sys.stdout  # --json: stdout holds only the JSON
    metrics = evaluate_checkpoint(
        _checkpoint_path(target),
        overrides,
        args.split,
        announce=lambda line: print(line, file=stream, flush=True),
    )
    if args.json:
        print(json.dumps(jsonable(metrics), sort_keys=True))
    else:
        for k in (10, 20, 50, 100):
            if any(key.endswith(f"R@{k}") for key in metrics):
                print(f"@{k:<3} {headline(metrics, k)}")
    return 0


def _cmd_config_reference(args: argparse.Namespace) -> int:
    from m3sgg.config_reference import render_config_reference

    print(render_config_reference(), end="")
    return 0


def _cmd_toy_data(args: argparse.Namespace) -> int:
    if args.dataset == "action_genome":
        from m3sgg.data.toy import make_toy_action_genome

        out = make_toy_action_genome(
            args.out, videos=args.videos, seed=args.seed, overwrite=args.overwrite
        )
    else:
        from m3sgg.data.toy_easg import make_toy_easg

        kwargs = {} if args.videos is None else {"clips": args.videos}
        out = make_toy_easg(args.out, seed=args.seed, overwrite=args.overwrite, **kwargs)
    print(f"wrote toy {args.dataset} dataset to {out}")
    return 0


def _cmd_inspect_data(args: argparse.Namespace) -> int:
    if args.dataset == "action_genome":
        from m3sgg.data.action_genome import ActionGenome

        if args.source is not None or args.vocab is not None:
            from m3sgg.errors import ConfigError

            raise ConfigError("--source/--vocab: EASG only (Action Genome has one view)")

        split = args.split or "train"
        store = args.data_path / "features"
        if store.is_dir():  # the store must match the annotations, checksums included
            from m3sgg.data.features import FeatureStore

            FeatureStore(store, verify=True)
            stats = ActionGenome(args.data_path, split, features=store).stats()
        else:
            stats = ActionGenome(args.data_path, split).stats()
    else:
        from m3sgg.data.easg import EASG

        split = args.split or "train"
        source = args.source or "sgg"
        vocab = args.vocab if source == "master" else None
        if args.vocab is not None and source != "master":
            from m3sgg.errors import ConfigError

            raise ConfigError("--vocab: applies to --source master only")
        dataset = EASG(args.data_path, split, source=source, features=False, vocab=vocab)
        print(f"EASG files: {dataset.files.summary()}", file=sys.stderr)
        stats = dataset.stats()
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=False))
    else:
        print(_format_stats(args.dataset, split, stats))
    return 0


def _cmd_build_priors(args: argparse.Namespace) -> int:
    from m3sgg.errors import ConfigError
    from m3sgg.models.stket.priors import count_priors, load_priors, save_priors

    if (args.data_path is None) == (args.import_original is None):
        raise ConfigError("build-priors: give exactly one of --data-path and --import-original")
    if args.import_original is not None:
        priors = load_priors(args.import_original)
        source = str(args.import_original)
    else:
        from m3sgg.data.action_genome import ActionGenome

        train = ActionGenome(
            args.data_path,
            "train",
            filter_small_boxes=args.filter_small_boxes,
            min_box_size=args.min_box_size,
        )
        priors = count_priors(train.video_gt(i) for i in range(len(train)))
        source = f"{len(train)} training videos of {args.data_path}"
    save_priors(priors, args.output)
    print(f"wrote STKET priors of {sum(priors.present)} object classes ({source}) to {args.output}")
    return 0


def _cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from m3sgg.config import config_to_dict, load_config
    from m3sgg.engine.checkpoint import FORMAT, atomic_save, checkpoint_manifest
    from m3sgg.errors import ConfigError
    from m3sgg.models import import_original

    options: dict[str, object] = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    model = import_original(args.source_model, str(args.source), mode=args.mode, **options)
    recorded = getattr(model, "config_options", None)
    if not isinstance(recorded, dict):
        raise ConfigError(
            f"import-checkpoint: the {args.source_model!r} importer does not say which model "
            "options it used (model.config_options), so no config can be written"
        )
    overrides = [f"model.name={json.dumps(args.source_model)}", f"data.mode={args.mode}"]
    overrides += [f"model.options.{k}={json.dumps(v)}" for k, v in recorded.items()]
    config = load_config(None, overrides)
    atomic_save(
        {
            "format": FORMAT,
            "manifest": checkpoint_manifest(config, imported_from=str(args.source)),
            "config": config_to_dict(config),
            "model": model.state_dict(),
        },
        args.output,
    )
    print(
        f"wrote {args.output}: {args.source_model} {args.mode} with the weights of {args.source}; "
        f"evaluate with: m3sgg evaluate --checkpoint {args.output} --data-path ..."
    )
    return 0


def _format_stats(dataset: str, split: str, stats: dict) -> str:
    """Human-readable summary: totals first, then each histogram sorted by count."""
    lines = [f"{dataset} ({split} split) after the protocol's filtering:"]
    histograms = {k: v for k, v in stats.items() if isinstance(v, dict)}
    for key, value in stats.items():
        if key not in histograms:
            lines.append(f"  {key:<22} {value}")
    for key, hist in histograms.items():
        if hist and all(isinstance(v, int) for v in hist.values()):
            lines.append(f"  {key}:")
            for name, count in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"    {name:<24} {count}")
        else:
            lines.append(f"  {key:<22} {json.dumps(hist)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (kept separate so docs and tests can inspect it)."""
    parser = argparse.ArgumentParser(
        prog="m3sgg",
        description="Train and evaluate video scene graph generation models (Action Genome, EASG).",
    )
    parser.add_argument("--version", action="version", version=f"m3sgg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a model (default: STTran predcls on the built-in toy dataset)"
    )
    train.add_argument("--config", type=Path, help="YAML/TOML config file")
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=1e-4 (repeatable)",
    )
    train.add_argument("--output", type=Path, help="folder of run folders (run.output)")
    train.add_argument("--name", help="run folder name (run.name)")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    train.add_argument("--epochs", type=int)
    train.add_argument(
        "--dataset", metavar="NAME", help=f"{' | '.join(DATASETS)} or a dataset a plugin registers"
    )
    train.add_argument("--data-path", type=Path, help="dataset root (default: the toy dataset)")
    train.add_argument("--mode", help="predcls | sgcls | sgdet (AG); edgecls | sgcls | easgcls")
    train.add_argument("--model", help="a registered model name")
    train.add_argument("--videos-per-batch", type=int)
    train.add_argument(
        "--resume",
        metavar="PATH|auto",
        help="continue from a checkpoint or run folder; auto: this run's last.pt",
    )
    train.add_argument(
        "--plugin",
        action="append",
        metavar="NAME",
        help="run a plugin: MODULE:ATTR or an installed entry point's name (repeatable; added "
        "to the config's plugins)",
    )
    train.add_argument(
        "--ignore-missing-plugins",
        action="store_true",
        help="resume even though the checkpoint holds handler state of plugins this run does "
        "not load (that state is dropped, with a warning)",
    )
    train.add_argument(
        "--visdom",
        nargs="?",
        const="http://127.0.0.1:8097",
        metavar="URL",
        help="plot to a visdom server",
    )
    train.add_argument("--progress", action="store_true", help="show ignite's progress bar")
    train.add_argument(
        "--nproc-per-node",
        type=int,
        metavar="N",
        help="train with N local processes (DDP via ignite.distributed); leave out under torchrun",
    )
    train.add_argument(
        "--backend",
        choices=("gloo", "nccl"),
        help="process-group backend (default: nccl with CUDA, else gloo)",
    )
    train.add_argument(
        "--describe", action="store_true", help="print the handler order per event and exit"
    )
    train.add_argument("--verbose", action="store_true", help="also show ignite's run messages")
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a checkpoint (a run folder: its last.pt)"
    )
    evaluate.add_argument(
        "checkpoint", type=Path, nargs="?", metavar="RUN", help="a run folder or checkpoint file"
    )
    evaluate.add_argument(
        "--checkpoint", dest="checkpoint_flag", type=Path, metavar="RUN", help="the same, as a flag"
    )
    evaluate.add_argument(
        "--dataset", metavar="NAME", help=f"{' | '.join(DATASETS)} or a dataset a plugin registers"
    )
    evaluate.add_argument("--data-path", type=Path)
    evaluate.add_argument("--split", help="default: the run's test split")
    evaluate.add_argument("--device")
    evaluate.add_argument("--set", action="append", metavar="KEY=VALUE")
    evaluate.add_argument(
        "--json", action="store_true", help="print the metrics as JSON (the keys of metrics.jsonl)"
    )
    evaluate.add_argument("--verbose", action="store_true")
    evaluate.set_defaults(func=_cmd_evaluate)

    from m3sgg.dashboard import register_commands as register_dashboard_commands
    from m3sgg.detection.cli import register_commands as register_extraction_commands
    from m3sgg.tune.cli import register_commands as register_tune_commands

    register_dashboard_commands(commands)
    register_extraction_commands(commands)
    register_tune_commands(commands)

    reference = commands.add_parser(
        "config-reference", help="print every config key with its type, default and meaning"
    )
    reference.set_defaults(func=_cmd_config_reference)

    toy = commands.add_parser(
        "toy-data", help="write the built-in toy dataset in the real on-disk format"
    )
    toy.add_argument("out", type=Path, help="output folder")
    toy.add_argument("--dataset", choices=DATASETS, default="action_genome")
    toy.add_argument("--videos", type=int, default=None, help="videos (AG) or clips (EASG)")
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    toy.set_defaults(func=_cmd_toy_data)

    inspect = commands.add_parser(
        "inspect-data", help="print what the reader keeps after the protocol's filtering"
    )
    inspect.add_argument("--dataset", choices=DATASETS, default="action_genome")
    inspect.add_argument("--data-path", type=Path, required=True)
    inspect.add_argument("--split", choices=("train", "test", "val"), default=None)
    inspect.add_argument(
        "--source",
        choices=("sgg", "master"),
        default=None,
        help="EASG view: the SGG-format pickles (default) or the master JSON",
    )
    inspect.add_argument(
        "--vocab",
        choices=("annotations", "files"),
        default=None,
        help="EASG master view: verbs and edges by first appearance (default, like the "
        "release's reader) or from verbs.txt/relationships.txt (unknown names dropped, counted)",
    )
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=_cmd_inspect_data)

    priors = commands.add_parser(
        "build-priors",
        help="count STKET's knowledge priors from the Action Genome training split",
    )
    priors.add_argument("--data-path", type=Path, help="Action Genome root (annotations/)")
    priors.add_argument(
        "--import-original",
        type=Path,
        metavar="FILE",
        help="instead of counting: check and copy the original's TrainPrior.json",
    )
    priors.add_argument("--output", type=Path, required=True, help="the JSON file to write")
    priors.add_argument(
        "--filter-small-boxes",
        action="store_true",
        help="count after the small-box filter (the sgcls/sgdet protocol)",
    )
    priors.add_argument("--min-box-size", type=float, default=16.0)
    priors.set_defaults(func=_cmd_build_priors)

    imports = commands.add_parser(
        "import-checkpoint",
        help="convert an original author's checkpoint into an m3sgg checkpoint",
    )
    imports.add_argument(
        "--from",
        dest="source_model",
        required=True,
        metavar="MODEL",
        help="the model whose original checkpoint SOURCE is (e.g. sttran)",
    )
    imports.add_argument("source", type=Path, metavar="SOURCE", help="the original's checkpoint")
    imports.add_argument("--output", type=Path, required=True, help="the m3sgg checkpoint to write")
    imports.add_argument("--mode", default="predcls", help="predcls (default), sgcls, ...")
    imports.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="a model option the checkpoint cannot tell (e.g. heads=8); JSON values",
    )
    imports.set_defaults(func=_cmd_import_checkpoint)
    return parser


def _unrecognized(parser: argparse.ArgumentParser, command: str, extra: list[str]) -> str:
    """One line for arguments no parser took, naming the closest flag of ``command``."""
    import difflib

    commands = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    sub = commands.choices.get(command) if commands is not None else None
    flags = [flag for action in (sub or parser)._actions for flag in action.option_strings]
    first = extra[0].split("=", 1)[0]
    if not first.startswith("-"):
        return f"unrecognized arguments: {' '.join(extra)} (see m3sgg {command} --help)"
    close = difflib.get_close_matches(first, flags, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f" (see m3sgg {command} --help)"
    return f"unrecognized argument {first}{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors print one line and return 2."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        print(
            f"m3sgg {args.command}: error: {_unrecognized(parser, args.command, extra)}",
            file=sys.stderr,
        )
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except M3sggError as err:
        print(f"m3sgg {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"m3sgg {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

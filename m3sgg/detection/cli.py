"""``m3sgg extract-features``: the command line of :mod:`m3sgg.detection.extraction` and of
the AG detector (:mod:`m3sgg.detection.ag_extraction`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from m3sgg.data.action_genome import SPLITS
from m3sgg.data.features import FEATURE_DTYPES
from m3sgg.errors import ConfigError


def _cmd_extract_features(args: argparse.Namespace) -> int:
    if args.detector == "ag-faster-rcnn":
        from m3sgg.detection.ag_extraction import extract_with_detector

        if args.weights is None:
            raise ConfigError("--detector ag-faster-rcnn needs --weights faster_rcnn_ag.pth")
        extract_with_detector(
            args.data_path,
            args.out,
            args.weights,
            mode=args.mode,
            splits=args.splits,
            device=args.device,
            precision=args.precision,
            dtype=args.dtype,
            batch_frames=args.batch_frames,
            workers=args.workers,
            skip_missing_frames=args.skip_missing_frames,
            overwrite=args.overwrite,
            progress=lambda line: print(line, flush=True),
        )
        return 0
    from m3sgg.detection.extraction import extract_features

    extract_features(
        args.data_path,
        args.out,
        backbone=args.backbone,
        stride=args.stride,
        pool_size=args.pool_size,
        sampling_ratio=args.sampling_ratio,
        dtype=args.dtype,
        splits=args.splits,
        detections=args.detections,
        device=args.device,
        batch_frames=args.batch_frames,
        workers=args.workers,
        skip_missing_frames=args.skip_missing_frames,
        overwrite=args.overwrite,
        progress=lambda line: print(line, flush=True),
        progress_every=args.progress_every,
    )
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _stride(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``extract-features`` to the CLI's subcommands (sets ``func``)."""
    cmd = subparsers.add_parser(
        "extract-features",
        help="compute a feature store from an Action Genome dataset's frame images",
        description="Run a backbone (default: a small built-in CNN, no download) and RoIAlign "
        "over the frames <data-path>/frames/<video>/<frame> that the reader keeps, and write an "
        "m3sgg feature store (gt boxes and pairs; with --detections also the det section).",
    )
    cmd.add_argument("--data-path", type=Path, required=True, help="Action Genome root folder")
    cmd.add_argument("--out", type=Path, required=True, help="feature store folder to write")
    cmd.add_argument(
        "--backbone",
        default="builtin",
        metavar="builtin|MODULE:ATTR",
        help="a torch.nn.Module instance or zero-arg factory (default: builtin, stride 8)",
    )
    cmd.add_argument(
        "--stride", type=_stride, default=None, help="backbone output stride (default: its .stride)"
    )
    cmd.add_argument("--pool-size", type=_positive_int, default=7, help="RoIAlign bins (7)")
    cmd.add_argument("--sampling-ratio", type=_positive_int, default=2, help="samples per bin (2)")
    cmd.add_argument("--dtype", choices=FEATURE_DTYPES, default="float16", help="storage dtype")
    cmd.add_argument(
        "--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="splits (both)"
    )
    cmd.add_argument(
        "--detections", type=Path, default=None, help="detections .json/.npz for the det section"
    )
    cmd.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    cmd.add_argument("--batch-frames", type=_positive_int, default=8, help="frames per call (8)")
    cmd.add_argument(
        "--workers", type=int, default=2, help="image-decoding threads, 0 for none (2)"
    )
    cmd.add_argument(
        "--skip-missing-frames",
        action="store_true",
        help="leave out frames without an image (read the store with require_frames=True)",
    )
    cmd.add_argument(
        "--progress-every", type=_positive_int, default=200, help="frames per progress line"
    )
    cmd.add_argument("--overwrite", action="store_true", help="replace an existing store")
    ag = cmd.add_argument_group(
        "the Action Genome detector (STTran's faster_rcnn_ag.pth, in plain torch; docs/detector.md)"
    )
    ag.add_argument(
        "--detector",
        choices=["backbone", "ag-faster-rcnn"],
        default="backbone",
        help="backbone: --backbone + RoIAlign (default); ag-faster-rcnn: STTran's exact features",
    )
    ag.add_argument("--weights", type=Path, default=None, help="faster_rcnn_ag.pth")
    ag.add_argument(
        "--mode",
        choices=["predcls", "sgcls", "sgdet"],
        default="predcls",
        help="sections to write: predcls gt; sgcls gt + class distributions; sgdet also det and "
        "det_train (default predcls)",
    )
    ag.add_argument(
        "--precision",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="network precision (autocast, CUDA only; box arithmetic stays float32)",
    )
    cmd.set_defaults(func=_cmd_extract_features)

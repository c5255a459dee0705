"""Frames per second of the Action Genome detector (ResNet-101 widths, random weights).

What is timed is what extraction runs per frame: a 480x270 AG frame is resized to 1067x600
(STTran's preprocessing), then the base map, the RPN (6000 -> 100 proposals), RoIAlign and the
layer4 head of the 100 proposals, the class-specific boxes and the sgdet per-class NMS
(:func:`m3sgg.detection.modes.detect`), and the GT-box features and union maps of a frame with 4
boxes (6 unordered pairs). Weights are random (the cost does not depend on them) with a
classifier scaled so that sgdet keeps boxes, as with trained weights. Stages are timed
separately too (median of ``--repeats`` after one warm-up).

Run: ``python benchmarks/detector_speed.py [--device cpu|cuda] [--dtype float32|bfloat16|float16]
[--batch 1] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from m3sgg.detection import modes
from m3sgg.detection.faster_rcnn import ActionGenomeDetector


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=1, help="frames per call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = ActionGenomeDetector().eval()
    for module in model.modules():  # keep a 101-layer random ResNet's activations O(1)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.05, 0.2)
    torch.nn.init.normal_(model.rpn.cls_score.weight, 0, 0.02)
    torch.nn.init.normal_(model.rpn.bbox_pred.weight, 0, 0.005)
    torch.nn.init.normal_(model.cls_score.weight, 0, 0.05)
    model = model.to(device)
    images = (torch.randn(args.batch, 3, 600, 1067) * 50).to(device)
    im_info = torch.tensor([[600.0, 1067.0, 600 / 270]] * args.batch, device=device)
    boxes = torch.tensor(
        [[20.0, 30, 200, 260], [150, 100, 260, 200], [300, 40, 420, 120], [5, 5, 60, 60]]
    )
    boxes = boxes.repeat(args.batch, 1).to(device)
    frame = torch.arange(args.batch).repeat_interleave(4).to(device)
    pairs = torch.cat([modes.all_pairs(4) + 4 * f for f in range(args.batch)]).to(device)
    scale = im_info[0, 2]
    dtype = getattr(torch, args.dtype)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def stage(fn: Callable[[], object]) -> float:
        with torch.inference_mode(), autocast:
            return _median_seconds(fn, args.repeats, device)

    with torch.inference_mode(), autocast:
        base = model.base(images)
        rois = model.rpn(base, im_info)
    times = {
        "base map (conv1..layer3)": stage(lambda: model.base(images)),
        "RPN + proposals": stage(lambda: model.rpn(base, im_info)),
        "RoIAlign + head (100 rois)": stage(lambda: model.box_features(base, rois.reshape(-1, 5))),
        "sgdet: detect() whole": stage(lambda: modes.detect(model, images, im_info)),
        "GT: base + 4 boxes + 6 unions": stage(
            lambda: (
                modes.gt_box_outputs(model, model.base(images), boxes, frame, scale, True),
                modes.union_maps(model, base, boxes, frame, pairs, scale),
            )
        ),
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, {torch.get_num_threads()} threads, {args.dtype}, batch {args.batch}")
    for label, seconds in times.items():
        per_frame = seconds / args.batch
        print(f"  {label:32s} {per_frame * 1000:9.1f} ms/frame  {1 / per_frame:7.2f} frames/s")


if __name__ == "__main__":
    main()

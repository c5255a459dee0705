"""Speed and memory of ``m3sgg.ops.roi_align`` against the slow loop reference, side by side.

The input is realistic for scene-graph models: ResNet C4 features of 600x1000 frames (stride 16,
``[N, 1024, 38, 63]``), boxes in image coordinates, 7x7 output, sampling ratio 2. The reference is
the loop-by-loop implementation of ``tests/ops/test_roi_align.py`` (loaded from that file) on
numpy arrays, its fastest form. Each method is timed in a fresh process (median after a warm-up),
and its memory measured on one cold call in another: the growth of the peak resident set over the
resident set once the inputs exist (Linux: the peak is reset through ``/proc/self/clear_refs``,
which slows the process afterwards, hence the separate process), or the growth of
``torch.cuda.max_memory_allocated`` on CUDA.

Run: ``python benchmarks/roi_align.py [--rois 64] [--images 4] [--channels-last]
[--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from m3sgg.ops import roi_align

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def _reference_module() -> ModuleType:
    path = REPO_ROOT / "tests" / "ops" / "test_roi_align.py"
    spec = importlib.util.spec_from_file_location("roi_align_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the peak resident set to the current one (Linux) and return the current one."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def _inputs(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(args.images, args.channels, 38, 63, generator=gen)
    xy = torch.rand(args.rois, 2, generator=gen) * torch.tensor([1000.0, 600.0])
    wh = 16 + torch.rand(args.rois, 2, generator=gen) * torch.tensor([400.0, 300.0])
    batch = torch.randint(0, args.images, (args.rois, 1), generator=gen).float()
    rois = torch.cat([batch, xy, xy + wh], dim=1)
    if args.channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    return features.to(args.device), rois.to(args.device)


def _measure(method: str, mode: str, args: argparse.Namespace, queue: Any) -> None:
    """Put the median time (``mode="time"``) or the peak extra bytes (``"memory"``) of a method."""
    torch.set_num_threads(args.threads)
    features, rois = _inputs(args)
    kwargs = dict(output_size=7, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
    if method == "reference":
        reference = _reference_module()
        features_np = features.cpu().numpy()
        rois_list = rois.cpu().double().tolist()

        def call() -> Any:
            return reference.reference_roi_align(
                features_np, rois_list, (7, 7), 1 / 16, 2, True, stack=np.stack
            )

    elif method == "ours":

        def call() -> Any:
            return roi_align(features, rois, **kwargs)

    else:  # ours, forward and backward
        leaf = features.clone().requires_grad_(True)

        def call() -> Any:
            leaf.grad = None  # time the operator, not the accumulation into an old gradient
            out = roi_align(leaf, rois, **kwargs)
            out.backward(torch.ones_like(out))
            return out

    def sync() -> None:
        if features.is_cuda:
            torch.cuda.synchronize()

    if mode == "memory":  # one cold call
        if features.is_cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        rss_before = _reset_peak_rss()
        call()
        sync()
        if features.is_cuda:
            queue.put(torch.cuda.max_memory_allocated() - base)
        else:
            queue.put(_status_bytes("VmHWM") - rss_before)
        return
    call()  # warm-up
    sync()
    times = []
    for _ in range(args.repeats if method != "reference" else 1):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    queue.put(statistics.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rois", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--channels-last", action="store_true", help="features in channels_last memory format"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    print(
        f"features [{args.images}, {args.channels}, 38, 63] float32 on {args.device}"
        f"{' (channels_last)' if args.channels_last else ''}, "
        f"{args.rois} rois, 7x7 output, sampling ratio 2, spatial scale 1/16"
    )
    print(f"{'method':<28}{'time (median)':>16}{'peak extra memory':>20}")
    ctx = mp.get_context("spawn")
    for method, label in [
        ("reference", "reference (python loops)"),
        ("ours", "ours, forward"),
        ("ours_backward", "ours, forward + backward"),
    ]:
        results = []
        for mode in ("time", "memory"):
            queue = ctx.Queue()
            proc = ctx.Process(target=_measure, args=(method, mode, args, queue))
            proc.start()
            results.append(queue.get())
            proc.join()
        seconds, peak = results
        print(f"{label:<28}{seconds * 1000:>13.1f} ms{peak / MIB:>16.1f} MiB")

    # Checked after the measurements: a spawned child starts with its parent's peak RSS.
    features, rois = _inputs(args)
    ours = roi_align(features, rois, 7, spatial_scale=1 / 16, sampling_ratio=2)
    reference = _reference_module().reference_numpy(
        features.cpu(),
        rois.cpu(),
        output_size=(7, 7),
        spatial_scale=1 / 16,
        sampling_ratio=2,
        aligned=True,
    )
    error = float(np.abs(ours.double().cpu().numpy() - reference).max())
    print(f"max |ours - reference| = {error:.2e}")


if __name__ == "__main__":
    main()

"""Speed of :class:`m3sgg.metrics.easg.EASGRecall` against a plain per-object Python loop.

The loop is a direct transcription of the EASG candidate table of the metric design (per object, per
class, per edge), written here as a yardstick; both run in one process on the same seeded graphs
(EASG label spaces: 198 verbs, 391 objects, 13 edges) and must give the same recall. Prints graphs
per second of each and the ratio, per task and constraint.

    python benchmarks/easg_metrics_speed.py --graphs 2000
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from m3sgg.data.structures import GraphGT
from m3sgg.metrics.easg import EASGRecall

KS = (10, 20, 50)
K_MAX = 50


def make_graphs(count: int, seed: int) -> tuple[list[GraphGT], list[dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    gts, preds = [], []
    for i in range(count):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        edges = torch.rand(n, 13, generator=gen) < 0.15
        edges[:, 1] |= ~edges.any(dim=1)
        objects = torch.randperm(391, generator=gen)[:n].numpy()
        gts.append(GraphGT(f"g{i}", verb=i % 198, objects=objects, edges=edges.numpy()))
        preds.append(
            {
                "verb_logits": torch.randn(198, generator=gen) * 2,
                "obj_logits": torch.randn(n, 391, generator=gen) * 2,
                "rel_logits": torch.randn(n, 13, generator=gen) * 2,
            }
        )
    return gts, preds


def _top(values: list[float], k: int) -> list[tuple[int, float]]:
    order = sorted(range(len(values)), key=lambda j: -values[j])[:k]
    return [(j, values[j]) for j in order]


def loop_recall(mode: str, constraint: str, gt: GraphGT, pred: dict[str, torch.Tensor]) -> list:
    """Per-graph R@K with Python loops over objects and candidates (float32 score sums)."""
    n = len(gt.objects)
    rel = torch.sigmoid(pred["rel_logits"]).tolist()
    f32 = np.float32
    candidates: list[tuple[float, tuple[int, int, int]]] = []
    if mode == "edgecls":
        per_slot = 1 if constraint == "with" else math.ceil(K_MAX / n)
        for i in range(n):
            for r, s in _top(rel[i], per_slot):
                candidates.append((float(f32(s)), (gt.verb, int(gt.objects[i]), r)))
    else:
        cls = torch.softmax(pred["obj_logits"], dim=1).tolist()
        n_edges = 1 if constraint == "with" else 5
        n_verbs = 5 if mode == "easgcls" else 1
        if mode == "easgcls":
            verbs = _top(torch.softmax(pred["verb_logits"], dim=0).tolist(), 5)
        else:
            verbs = [(gt.verb, None)]
        per_slot = math.ceil(K_MAX / (n_verbs * n * n_edges))
        for v, vs in verbs:
            for i in range(n):
                for c, cs in _top(cls[i], per_slot):
                    head = f32(cs) if vs is None else f32(vs) + f32(cs)
                    for r, rs in _top(rel[i], n_edges):
                        candidates.append((float(head + f32(rs)), (v, c, r)))
    ranked = [t for _, t in sorted(candidates, key=lambda item: -item[0])][:K_MAX]
    truth = {(gt.verb, int(gt.objects[i]), int(r)) for i, r in np.argwhere(gt.edges)}
    return [len(truth & set(ranked[:k])) / len(truth) for k in KS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gts, preds = make_graphs(args.graphs, args.seed)
    batch = {key: [p[key] for p in preds] for key in preds[0]}
    print(f"{args.graphs} graphs, 1 thread; graphs/s")
    print(f"{'task':<8} {'constraint':<10} {'EASGRecall':>11} {'loop':>9} {'ratio':>7}")
    for mode in ("edgecls", "sgcls", "easgcls"):
        for constraint in ("with", "no"):
            start = time.perf_counter()
            metric = EASGRecall(mode, constraint, ks=KS, k_max=K_MAX)
            metric.update((gts, batch))
            ours = metric.compute()
            ours_s = time.perf_counter() - start
            start = time.perf_counter()
            rows = [loop_recall(mode, constraint, g, p) for g, p in zip(gts, preds, strict=True)]
            loop_s = time.perf_counter() - start
            for j, k in enumerate(KS):
                loop_value = math.fsum(r[j] for r in rows) / len(rows)
                if abs(loop_value - ours[f"R@{k}"]) > 1e-9:
                    raise SystemExit(f"{mode}/{constraint} R@{k}: {ours[f'R@{k}']} != {loop_value}")
            print(
                f"{mode:<8} {constraint:<10} {args.graphs / ours_s:>11.0f} "
                f"{args.graphs / loop_s:>9.0f} {loop_s / ours_s:>6.1f}x"
            )


if __name__ == "__main__":
    main()

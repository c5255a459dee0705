"""EASGRecall over two gloo processes equals one process, with a graph padded onto both ranks."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import pytest
import torch

from m3sgg.data.structures import GraphGT
from m3sgg.metrics.easg import EASGRecall

N_GRAPHS = 7  # odd: a DistributedSampler pads it to 8, so one graph is evaluated on both ranks
SETTINGS = [(task, c) for task in ("edgecls", "sgcls", "easgcls") for c in ("with", "no")]


def _graphs() -> tuple[list[GraphGT], list[dict[str, torch.Tensor]]]:
    """Seeded graphs (one without a GT triplet) and their logits, the same in every process."""
    gen = torch.Generator().manual_seed(11)
    gts, preds = [], []
    for i in range(N_GRAPHS):
        n = 1 + i % 4
        edges = torch.rand(n, 13, generator=gen) < 0.3
        if i == 3:
            edges[:] = False
        objects = torch.randperm(40, generator=gen)[:n].numpy()
        gts.append(GraphGT(f"graph-{i}", verb=i % 9, objects=objects, edges=edges.numpy()))
        preds.append(
            {
                "verb_logits": torch.randn(9, generator=gen),
                "obj_logits": torch.randn(n, 40, generator=gen),
                "rel_logits": torch.randn(n, 13, generator=gen),
            }
        )
    return gts, preds


def _evaluate(indices: list[int], batch_size: int = 2) -> dict[str, Any]:
    """Every task × constraint on the graphs at ``indices``; also the id-less dict variant."""
    gts, preds = _graphs()
    results: dict[str, Any] = {}
    for task, constraint in SETTINGS:
        metric = EASGRecall(task, constraint, ks=(1, 5, 20), k_max=20, per_graph=True)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            pred = {key: [preds[i][key] for i in chunk] for key in preds[0]}
            metric.update(([gts[i] for i in chunk], pred))
        results[f"{task}/{constraint}"] = metric.compute()
    anonymous = EASGRecall("edgecls", "no", ks=(1,), k_max=20)
    for i in indices:
        gt = {"verb_idx": gts[i].verb, "obj_indices": gts[i].objects, "rels_vecs": gts[i].edges}
        anonymous.update((gt, {"rel_logits": preds[i]["rel_logits"]}))
    counts = anonymous.compute()
    results["anonymous_graphs"] = counts["graphs"] + counts["graphs_without_gt"]
    return results


def _worker(local_rank: int, out_dir: str) -> None:
    rank, world = idist.get_rank(), idist.get_world_size()
    padded = [*range(N_GRAPHS), 0]  # DistributedSampler(shuffle=False) padding
    mine = padded[rank::world]  # rank 0: 0 2 4 6, rank 1: 1 3 5 0
    results = _evaluate(mine)
    results["world_size"] = world
    results["local_graphs"] = mine
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results, sort_keys=True))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=_free_port()) as parallel:
        parallel.run(_worker, str(tmp_path))

    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert 0 in rank0["local_graphs"] and 0 in rank1["local_graphs"]

    single = json.loads(json.dumps(_evaluate(list(range(N_GRAPHS))), sort_keys=True))
    for task, constraint in SETTINGS:
        key = f"{task}/{constraint}"
        # exact equality, per-graph entries included; every rank computes the same result
        assert rank0[key] == single[key], key
        assert rank1[key] == single[key], key
        assert rank0[key]["graphs"] == N_GRAPHS - 1
        assert rank0[key]["graphs_without_gt"] == 1
        assert sorted(rank0[key]["per_graph"]) == sorted(
            f"graph-{i}" for i in range(N_GRAPHS) if i != 3
        )
    # graphs without an id cannot be deduplicated: the padded graph counts twice
    assert single["anonymous_graphs"] == N_GRAPHS
    assert rank0["anonymous_graphs"] == rank1["anonymous_graphs"] == N_GRAPHS + 1

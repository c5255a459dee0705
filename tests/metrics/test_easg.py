"""EASGRecall: the reference vectors, hand-computed graphs, input handling and invariants."""

from __future__ import annotations

import copy
import gzip
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ignite.engine import Engine
from ignite.exceptions import NotComputableError

from m3sgg.data.structures import GraphGT
from m3sgg.errors import ConfigError
from m3sgg.metrics.easg import EASGRecall, ranked_triplets

CASES = [f"case_{i:03d}" for i in range(8)]
TASKS = ("edgecls", "sgcls", "easgcls")
CONSTRAINTS = ("with", "no")
KS = (10, 20, 50)


# --------------------------------------------------------------------------- reference vectors


def _load_case(vectors_dir: Path, case: str) -> dict[str, Any]:
    folder = vectors_dir / "easg"
    plain, packed = folder / f"{case}.json", folder / f"{case}.json.gz"
    if packed.is_file():
        with gzip.open(packed, "rt") as f:
            return json.load(f)
    return json.loads(plain.read_text())


def _case_inputs(case: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The vector graphs as dict ground truth with ids, and the batch's logits (float32)."""
    gts, verbs, objs, rels = [], [], [], []
    for i, g in enumerate(case["graphs"]):
        n = len(g["obj_indices"])
        gts.append(
            {
                "graph_id": f"{case['case']}/{i}",
                "verb_idx": g["verb_idx"],
                "obj_indices": g["obj_indices"],
                "rels_vecs": g["rels_vecs"],
            }
        )
        verbs.append(torch.tensor(g["verb_logits"], dtype=torch.float32))
        objs.append(torch.tensor(g["obj_logits"], dtype=torch.float32).reshape(n, -1))
        rels.append(torch.tensor(g["rel_logits"], dtype=torch.float32).reshape(n, -1))
    return gts, {"verb_logits": verbs, "obj_logits": objs, "rel_logits": rels}


@pytest.fixture(scope="module")
def easg_expected(vectors_dir: Path) -> dict[str, Any]:
    return json.loads((vectors_dir / "easg_expected.json").read_text())


@pytest.fixture(scope="module")
def easg_results(vectors_dir: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Our result for every (case, task, constraint), computed once."""
    results = {}
    for name in CASES:
        gts, pred = _case_inputs(_load_case(vectors_dir, name))
        for task in TASKS:
            for constraint in CONSTRAINTS:
                metric = EASGRecall(task, constraint)
                metric.update((gts, pred))
                results[name, task, constraint] = metric.compute()
    return results


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("case", CASES)
def test_reference_vectors(easg_expected, easg_results, case, task, constraint, k):
    expected = easg_expected[case][task][constraint]
    ties = expected["tie_sensitive_graphs"][str(k)]
    if ties > 0:
        pytest.skip(f"tie-sensitive: {ties} graph(s) of {case} {task}/{constraint} at K={k}")
    got = easg_results[case, task, constraint][f"R@{k}"]
    assert got == pytest.approx(expected["R"][str(k)], abs=1e-6)


def test_reference_vectors_coverage(vectors_dir, easg_expected, easg_results):
    """All 8 cases load, every graph has a GT triplet, and 34 of the 144 entries are tie-flagged."""
    flagged = 0
    for case in CASES:
        n_graphs = _load_case(vectors_dir, case)["n_graphs"]
        for task in TASKS:
            for constraint in CONSTRAINTS:
                result = easg_results[case, task, constraint]
                assert result["graphs"] == n_graphs
                assert result["graphs_without_gt"] == 0
                ties = easg_expected[case][task][constraint]["tie_sensitive_graphs"]
                flagged += sum(ties[str(k)] > 0 for k in KS)
    assert flagged == 34


def test_reference_case_graph_gt_and_single_updates_agree(vectors_dir, easg_results):
    """GraphGT inputs fed one graph per update give the batched dict result exactly."""
    case = _load_case(vectors_dir, "case_000")
    gts, pred = _case_inputs(case)
    metric = EASGRecall("easgcls", "no")
    for i, gt in enumerate(gts):
        graph = GraphGT(
            graph_id=gt["graph_id"],
            verb=gt["verb_idx"],
            objects=np.asarray(gt["obj_indices"], dtype=np.int64),
            edges=np.asarray(gt["rels_vecs"]) == 1,
        )
        one = {key: value[i] for key, value in pred.items()}
        metric.update((graph, one))
    assert metric.compute() == easg_results["case_000", "easgcls", "no"]


# --------------------------------------------------------------------------- hand-made graphs


def _log(probs: list[list[float]] | list[float]) -> torch.Tensor:
    """Logits whose softmax gives back ``probs``."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


def _logit(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose sigmoid gives back ``probs``."""
    p = torch.tensor(probs, dtype=torch.float64)
    return (p / (1 - p)).log().float()


# verb 1, objects [2, 3]; GT triplets (1, 2, 1), (1, 3, 0), (1, 3, 2).
HAND_GT = GraphGT(
    graph_id="hand",
    verb=1,
    objects=np.array([2, 3], dtype=np.int64),
    edges=np.array([[0, 1, 0, 0], [1, 0, 1, 0]], dtype=bool),
)
HAND_PRED = {
    "verb_logits": _log([0.1, 0.55, 0.25, 0.1]),  # top-2 verbs: 1 (.55), 2 (.25)
    "obj_logits": _log(
        [
            [0.05, 0.05, 0.6, 0.25, 0.05],  # slot 0: class 2 (.6), class 3 (.25)
            [0.1, 0.1, 0.1, 0.45, 0.25],  # slot 1: class 3 (.45), class 4 (.25)
        ]
    ),
    "rel_logits": _logit(
        [
            [0.5, 0.9, 0.7, 0.2],  # slot 0: edge 1 (.9), edge 2 (.7), edge 0 (.5)
            [0.8, 0.1, 0.95, 0.5],  # slot 1: edge 2 (.95), edge 0 (.8), edge 3 (.5)
        ]
    ),
}

# Ranked candidates with k_max=4, top_verbs=2, top_edges=2 (triplets as (verb, class, edge)):
#   edgecls/with : (1,3,2) .95, (1,2,1) .9                         → hits at ranks 1, 2
#   edgecls/no   : 2 edges per slot: (1,3,2) .95, (1,2,1) .9, (1,3,0) .8, (1,2,2) .7  → 1, 2, 3
#   sgcls/with   : 2 classes per slot × top edge: (2,1) 1.5, (3,2) 1.4, (4,2) 1.2, (3,1) 1.15
#                                                                   → hits at ranks 1, 2
#   sgcls/no     : 1 class × 2 edges: (2,1) 1.5, (3,2) 1.4, (2,2) 1.3, (3,0) 1.25 → 1, 2, 4
#   easgcls/with : 1 class × top edge × 2 verbs: (1,2,1) 2.05, (1,3,2) 1.95, (2,2,1) 1.75,
#                  (2,3,2) 1.65                                     → hits at ranks 1, 2
#   easgcls/no   : 1 class × 2 edges × 2 verbs: (1,2,1) 2.05, (1,3,2) 1.95, (1,2,2) 1.85,
#                  (1,3,0) 1.8, then verb 2 (cut by k_max=4)        → hits at ranks 1, 2, 4
HAND_EXPECTED = {
    ("edgecls", "with"): (1 / 3, 2 / 3, 2 / 3),
    ("edgecls", "no"): (1 / 3, 2 / 3, 1.0),
    ("sgcls", "with"): (1 / 3, 2 / 3, 2 / 3),
    ("sgcls", "no"): (1 / 3, 2 / 3, 1.0),
    ("easgcls", "with"): (1 / 3, 2 / 3, 2 / 3),
    ("easgcls", "no"): (1 / 3, 2 / 3, 1.0),
}


@pytest.mark.parametrize(("task", "constraint"), sorted(HAND_EXPECTED))
def test_hand_graph(task, constraint):
    metric = EASGRecall(task, constraint, ks=(1, 2, 4), k_max=4, top_verbs=2, top_edges=2)
    metric.update((HAND_GT, HAND_PRED))
    result = metric.compute()
    r1, r2, r4 = HAND_EXPECTED[task, constraint]
    assert result["R@1"] == pytest.approx(r1, abs=1e-12)
    assert result["R@2"] == pytest.approx(r2, abs=1e-12)
    assert result["R@4"] == pytest.approx(r4, abs=1e-12)
    assert result["graphs"] == 1
    assert result["graphs_without_gt"] == 0


def test_hand_graph_ranked_triplets_easgcls_no():
    triplets, scores = ranked_triplets(
        "easgcls",
        "no",
        HAND_GT.verb,
        torch.as_tensor(HAND_GT.objects),
        torch.sigmoid(HAND_PRED["rel_logits"]),
        torch.softmax(HAND_PRED["obj_logits"], dim=1),
        torch.softmax(HAND_PRED["verb_logits"], dim=0),
        k_max=4,
        top_verbs=2,
        top_edges=2,
    )
    assert triplets.tolist() == [[1, 2, 1], [1, 3, 2], [1, 2, 2], [1, 3, 0]]
    assert scores.dtype == torch.float32
    assert scores.tolist() == pytest.approx([2.05, 1.95, 1.85, 1.8], abs=1e-6)


def test_default_budget_edgecls_no_takes_every_edge():
    """ceil(50/2) = 25 edges per slot is cut to the 4 edges: all 8 candidates, all GT recalled."""
    metric = EASGRecall("edgecls", "no", ks=(1, 10))
    metric.update((HAND_GT, HAND_PRED))
    assert metric.compute()["R@10"] == 1.0


def test_candidates_are_ranked_before_the_k_max_cut():
    """With more objects than k_max every object's top edge competes, the last one included."""
    gt = GraphGT(
        "many",
        verb=0,
        objects=np.array([0, 1, 2]),
        edges=np.array([[1, 0], [0, 1], [1, 0]], dtype=bool),
    )
    rel = _logit([[0.6, 0.1], [0.7, 0.1], [0.9, 0.1]])  # top edges: slot 2 (.9), 1 (.7), 0 (.6)
    metric = EASGRecall("edgecls", "with", ks=(1, 2), k_max=2)
    metric.update((gt, {"rel_logits": rel}))
    result = metric.compute()
    # ranked (0,2,0) hit, (0,1,0) miss; cutting to the first two slots before ranking would miss.
    assert result["R@1"] == pytest.approx(1 / 3)
    assert result["R@2"] == pytest.approx(1 / 3)


def test_duplicate_candidate_triplets_keep_their_ranks():
    """Two slots predicting the same class give the same triplet twice; both take a rank."""
    gt = GraphGT(
        "dup",
        verb=0,
        objects=np.array([2, 3]),
        edges=np.array([[0, 1], [0, 1]], dtype=bool),
    )
    pred = {
        "obj_logits": _log([[0.2, 0.1, 0.6, 0.1], [0.05, 0.05, 0.5, 0.4]]),
        "rel_logits": _logit([[0.1, 0.9], [0.1, 0.8]]),
    }
    # ranked: (2,1) 1.5, (2,1) 1.3, (3,1) 1.2, (0,1) 1.1
    metric = EASGRecall("sgcls", "with", ks=(1, 2, 3), k_max=4)
    metric.update((gt, pred))
    result = metric.compute()
    assert (result["R@1"], result["R@2"], result["R@3"]) == (0.5, 0.5, 1.0)


def test_equal_scores_break_ties_in_slot_order():
    objects = torch.tensor([4, 5])
    rel = torch.sigmoid(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    triplets, _ = ranked_triplets("edgecls", "no", 0, objects, rel, k_max=4)
    assert triplets.tolist() == [[0, 4, 0], [0, 5, 0], [0, 4, 1], [0, 5, 1]]


def test_mean_over_graphs():
    """R@K is the plain mean of per-graph recalls: (1/3 + 1) / 2 at K=1."""
    easy = GraphGT("easy", verb=0, objects=np.array([1]), edges=np.eye(1, 4, 1, dtype=bool))
    metric = EASGRecall("edgecls", "with", ks=(1,), k_max=4)
    metric.update(
        ([HAND_GT, easy], {"rel_logits": [HAND_PRED["rel_logits"], _logit([[0.2, 0.7, 0.1, 0.1]])]})
    )
    result = metric.compute()
    assert result["R@1"] == pytest.approx((1 / 3 + 1) / 2)
    assert result["graphs"] == 2


# --------------------------------------------------------------------------- inputs and outputs


def _three_graphs() -> tuple[list[GraphGT], dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    gts, verbs, objs, rels = [], [], [], []
    for i, n in enumerate((1, 3, 2)):
        edges = torch.rand(n, 4, generator=gen) < 0.5
        edges[0, i] = True
        objects = torch.randperm(6, generator=gen)[:n].numpy()
        gts.append(GraphGT(f"g{i}", verb=i, objects=objects, edges=edges.numpy()))
        verbs.append(torch.randn(5, generator=gen))
        objs.append(torch.randn(n, 6, generator=gen))
        rels.append(torch.randn(n, 4, generator=gen))
    return gts, {"verb_logits": verbs, "obj_logits": objs, "rel_logits": rels}


@pytest.mark.parametrize("task", TASKS)
def test_inputs_are_not_modified(task):
    gts, pred = _three_graphs()
    gts_before, pred_before = copy.deepcopy(gts), copy.deepcopy(pred)
    metric = EASGRecall(task, "no", ks=(1, 3), k_max=3)
    metric.update((gts, pred))
    metric.compute()
    for key, tensors in pred.items():
        for got, before in zip(tensors, pred_before[key], strict=True):
            assert torch.equal(got, before) and got.dtype == before.dtype
    for got, before in zip(gts, gts_before, strict=True):
        assert np.array_equal(got.objects, before.objects)
        assert np.array_equal(got.edges, before.edges)


def test_batch_forms_agree():
    """Sequences vs stacked verb logits, GraphGT vs dicts, numpy vs tensors, one by one."""
    gts, pred = _three_graphs()
    reference = EASGRecall("easgcls", "no", ks=(1, 5), k_max=5)
    reference.update((gts, pred))
    expected = reference.compute()

    stacked = dict(pred, verb_logits=torch.stack(pred["verb_logits"]))
    as_dicts = [
        {"graph_id": g.graph_id, "verb_idx": g.verb, "obj_indices": g.objects, "rels_vecs": g.edges}
        for g in gts
    ]
    as_numpy = {key: [t.numpy() for t in value] for key, value in pred.items()}
    for batch in ((gts, stacked), (as_dicts, pred), (gts, as_numpy)):
        metric = EASGRecall("easgcls", "no", ks=(1, 5), k_max=5)
        metric.update(batch)
        assert metric.compute() == expected
    metric = EASGRecall("easgcls", "no", ks=(1, 5), k_max=5)
    for i, gt in enumerate(gts):
        metric.update((gt, {key: value[i] for key, value in pred.items()}))
    assert metric.compute() == expected


def test_predcls_is_an_alias_of_edgecls():
    gts, pred = _three_graphs()
    results = []
    for mode in ("predcls", "edgecls"):
        metric = EASGRecall(mode, "no", ks=(1, 2), k_max=4)
        metric.update((gts, pred))
        results.append(metric.compute())
    assert EASGRecall("predcls").mode == "edgecls"
    assert results[0] == results[1]


def test_reset_clears_state():
    gts, pred = _three_graphs()
    metric = EASGRecall("sgcls", "with", ks=(1,), k_max=2)
    metric.update(
        (gts[:1], {"obj_logits": pred["obj_logits"][:1], "rel_logits": pred["rel_logits"][:1]})
    )
    first = metric.compute()
    metric.reset()
    with pytest.raises(NotComputableError):
        metric.compute()
    metric.update((gts, pred))
    assert metric.compute()["graphs"] == 3
    metric.reset()
    metric.update(
        (gts[:1], {"obj_logits": pred["obj_logits"][:1], "rel_logits": pred["rel_logits"][:1]})
    )
    assert metric.compute() == first


def test_per_graph_output():
    gts, pred = _three_graphs()
    metric = EASGRecall("edgecls", "no", ks=(1, 2), k_max=2, per_graph=True)
    metric.update((gts, pred))
    result = metric.compute()
    per_graph = result["per_graph"]
    assert list(per_graph) == ["g0", "g1", "g2"]
    for gt in gts:
        entry = per_graph[gt.graph_id]
        assert entry["gt_triplets"] == gt.num_triplets
        assert set(entry) == {"R@1", "R@2", "gt_triplets"}
        assert 0.0 <= entry["R@1"] <= entry["R@2"] <= 1.0
    for k in (1, 2):
        mean = sum(entry[f"R@{k}"] for entry in per_graph.values()) / 3
        assert result[f"R@{k}"] == pytest.approx(mean, abs=1e-15)
    plain = EASGRecall("edgecls", "no", ks=(1, 2), k_max=2)
    plain.update((gts, pred))
    assert "per_graph" not in plain.compute()


def test_graph_without_gt_is_skipped_and_counted():
    empty_edges = GraphGT("no-edges", verb=0, objects=np.array([1]), edges=np.zeros((1, 4), bool))
    no_objects = {"graph_id": "no-objects", "verb_idx": 0, "obj_indices": [], "rels_vecs": []}
    metric = EASGRecall("edgecls", "with", ks=(1, 2), k_max=4, per_graph=True)
    rel = [torch.zeros(1, 4), torch.zeros(0, 4), HAND_PRED["rel_logits"]]
    metric.update(([empty_edges, no_objects, HAND_GT], {"rel_logits": rel}))
    result = metric.compute()
    assert result["graphs"] == 1
    assert result["graphs_without_gt"] == 2
    assert result["R@1"] == pytest.approx(1 / 3)
    assert list(result["per_graph"]) == ["hand"]

    only_empty = EASGRecall("edgecls", "with", ks=(1,), k_max=4)
    only_empty.update((empty_edges, {"rel_logits": torch.zeros(1, 4)}))
    with pytest.raises(NotComputableError, match="ground-truth triplet"):
        only_empty.compute()


def test_repeated_graph_id_counts_once_and_dicts_without_id_never_deduplicate():
    metric = EASGRecall("edgecls", "with", ks=(1,), k_max=4)
    pred = {"rel_logits": HAND_PRED["rel_logits"]}
    metric.update((HAND_GT, pred))
    metric.update((HAND_GT, pred))
    assert metric.compute()["graphs"] == 1

    no_id = {"verb_idx": 1, "obj_indices": [2, 3], "rels_vecs": HAND_GT.edges.astype(int)}
    metric = EASGRecall("edgecls", "with", ks=(1,), k_max=4)
    metric.update((no_id, pred))
    metric.update((no_id, pred))
    metric.update(([no_id, no_id], {"rel_logits": [pred["rel_logits"]] * 2}))
    assert metric.compute()["graphs"] == 4


def test_empty_batch_records_nothing():
    metric = EASGRecall("easgcls", "no")
    metric.update(([], {}))
    with pytest.raises(NotComputableError):
        metric.compute()
    metric.update((HAND_GT, HAND_PRED))
    assert metric.compute()["graphs"] == 1


def test_engine_mapping_output():
    gts, pred = _three_graphs()
    engine = Engine(lambda engine, batch: {"gt": batch[0], "pred": batch[1]})
    EASGRecall("easgcls", "with", ks=(1, 5), k_max=5).attach(engine, "easg")
    state = engine.run([(gts[:2], _take(pred, 0, 2)), (gts[2:], _take(pred, 2, 3))])
    direct = EASGRecall("easgcls", "with", ks=(1, 5), k_max=5)
    direct.update((gts, pred))
    assert state.metrics["easg"] == direct.compute()
    assert state.metrics["R@5"] == direct.compute()["R@5"]


def _take(pred: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {key: value[start:stop] for key, value in pred.items()}


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "sgdet"}, "mode must be one of 'edgecls', 'sgcls', 'easgcls'.*got 'sgdet'"),
        ({"mode": None}, "mode must be one of"),
        ({"constraint": "semi"}, "constraint must be one of 'with', 'no', got 'semi'"),
        ({"ks": ()}, "ks must be a non-empty sequence of positive ints"),
        ({"ks": 10}, "ks must be a non-empty sequence of positive ints"),
        ({"ks": (10, 0)}, "ks must be a non-empty sequence of positive ints"),
        ({"ks": (10, 2.5)}, "ks must be a non-empty sequence of positive ints"),
        ({"ks": (True,)}, "ks must be a non-empty sequence of positive ints"),
        ({"ks": (10, 10)}, r"ks must be sorted ascending without repeats, got \[10, 10\]"),
        ({"ks": (20, 10)}, "ks must be sorted ascending without repeats"),
        ({"ks": (10, 100)}, "every K in ks must be at most k_max=50, got 100"),
        ({"k_max": 0}, "k_max must be a positive int, got 0"),
        ({"top_verbs": -1}, "top_verbs must be a positive int, got -1"),
        ({"top_edges": 1.0}, "top_edges must be a positive int, got 1.0"),
        ({"per_graph": 1}, "per_graph must be a bool, got 1"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EASGRecall(**kwargs)


def _without(pred: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in pred.items() if k != key}


def _lists(pred: dict[str, Any]) -> dict[str, Any]:
    """A single graph's logits as a batch of two copies."""
    return {k: [v, v] for k, v in pred.items()}


def _hand_dict(**changes: Any) -> dict[str, Any]:
    gt = {"graph_id": "hand", "verb_idx": 1, "obj_indices": [2, 3], "rels_vecs": HAND_GT.edges}
    gt.update(changes)
    return gt


@pytest.mark.parametrize(
    ("gt", "pred", "error", "message"),
    [
        (HAND_GT, {"verb_logits": HAND_PRED["verb_logits"]}, ValueError, "pred lacks 'rel_logits'"),
        (HAND_GT, _without(HAND_PRED, "obj_logits"), ValueError, "pred lacks 'obj_logits'"),
        (HAND_GT, _without(HAND_PRED, "verb_logits"), ValueError, "pred lacks 'verb_logits'"),
        (HAND_GT, {**HAND_PRED, "verb_logits": torch.zeros(1)}, ValueError, "verb 1 is outside"),
        (HAND_GT, {**HAND_PRED, "obj_logits": torch.zeros(2, 3)}, ValueError, "class 3 is outside"),
        (HAND_GT, {**HAND_PRED, "rel_logits": torch.zeros(3, 4)}, ValueError, r"shape \(2, 4\)"),
        (HAND_GT, {**HAND_PRED, "rel_logits": torch.zeros(2, 5)}, ValueError, r"shape \(2, 4\)"),
        ([HAND_GT, HAND_GT], HAND_PRED, ValueError, "2-D tensors or one 3-D tensor"),
        ([HAND_GT], _lists(HAND_PRED), ValueError, "2 entries for 1"),
        (_hand_dict(obj_indices=[2, 2]), HAND_PRED, ValueError, "must be distinct"),
        (
            [HAND_GT, _hand_dict(graph_id="other")],
            {**_lists(HAND_PRED), "obj_logits": [torch.zeros(2, 5), torch.zeros(2, 6)]},
            ValueError,
            r"must share the width of obj_logits, got \[5, 6\]",
        ),
        (_hand_dict(rels_vecs=HAND_GT.edges * 2), HAND_PRED, ValueError, "multi-hot"),
        (_hand_dict(rels_vecs=HAND_GT.edges[:1]), HAND_PRED, ValueError, r"shape \(2, R\)"),
        (_hand_dict(verb_idx=-1), HAND_PRED, ValueError, "non-negative"),
        ({"verb_idx": 1}, HAND_PRED, ValueError, "lacks the keys"),
        ("graph", HAND_PRED, TypeError, "gt must be a GraphGT"),
        ([3], HAND_PRED, TypeError, "gt graph 0 must be"),
        (HAND_GT, [1, 2], TypeError, "pred must be a mapping"),
    ],
)
def test_update_validation(gt, pred, error, message):
    metric = EASGRecall("easgcls", "no", ks=(1,), k_max=4)
    with pytest.raises(error, match=message):
        metric.update((gt, pred))


# --------------------------------------------------------------------------- properties


@st.composite
def _random_batch(draw: st.DrawFn) -> tuple[list[GraphGT], dict[str, Any]]:
    seed = draw(st.integers(0, 2**31 - 1))
    n_graphs = draw(st.integers(1, 4))
    n_verbs, n_classes, n_rels = (draw(st.integers(1, 9)) for _ in range(3))
    integer_logits = draw(st.booleans())  # rounded logits make many exact ties
    gen = torch.Generator().manual_seed(seed)
    gts, verbs, objs, rels = [], [], [], []
    for i in range(n_graphs):
        n = int(torch.randint(0, n_classes + 1, (1,), generator=gen))
        verb = int(torch.randint(0, n_verbs, (1,), generator=gen))
        objects = torch.randperm(n_classes, generator=gen)[:n].numpy()
        edges = (torch.rand(n, n_rels, generator=gen) < 0.4).numpy()
        gts.append(GraphGT(f"r{i}", verb=verb, objects=objects, edges=edges))
        logits = [
            torch.randn(n_verbs, generator=gen) * 3,
            torch.randn(n, n_classes, generator=gen) * 3,
            torch.randn(n, n_rels, generator=gen) * 3,
        ]
        if integer_logits:
            logits = [t.round() for t in logits]
        verbs.append(logits[0])
        objs.append(logits[1])
        rels.append(logits[2])
    return gts, {"verb_logits": verbs, "obj_logits": objs, "rel_logits": rels}


@settings(max_examples=60, deadline=None)
@given(
    batch=_random_batch(),
    task=st.sampled_from(TASKS),
    constraint=st.sampled_from(CONSTRAINTS),
    k_max=st.sampled_from((1, 3, 8, 50)),
)
def test_random_inputs_give_nondecreasing_recall_in_unit_interval(batch, task, constraint, k_max):
    gts = batch[0]
    ks = tuple(sorted({1, max(1, k_max // 2), k_max}))
    metric = EASGRecall(task, constraint, ks=ks, k_max=k_max, per_graph=True)
    metric.update(batch)
    with_gt = sum(g.num_triplets > 0 for g in gts)
    if with_gt == 0:
        with pytest.raises(NotComputableError):
            metric.compute()
        return
    result = metric.compute()
    assert result["graphs"] == with_gt
    assert result["graphs_without_gt"] == len(gts) - with_gt
    values = [result[f"R@{k}"] for k in ks]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values)
    for entry in result["per_graph"].values():
        per_k = [entry[f"R@{k}"] for k in ks]
        assert all(0.0 <= v <= 1.0 for v in per_k) and per_k == sorted(per_k)
        assert all(math.isfinite(v) for v in per_k)
    one_by_one = EASGRecall(task, constraint, ks=ks, k_max=k_max, per_graph=True)
    for i, gt in enumerate(gts):
        one_by_one.update((gt, {key: value[i] for key, value in batch[1].items()}))
    assert one_by_one.compute() == result  # batching does not change a graph's result
    if task == "edgecls" and constraint == "no" and k_max == 50:
        n_rels = gts[0].edges.shape[1]
        if all(g.objects.shape[0] * n_rels <= 50 for g in gts):
            assert result["R@50"] == 1.0  # every (object, edge) pair is a candidate


def test_a_different_graph_under_an_id_already_seen_counts_like_a_new_one():
    """Issue 19, point 4 (EASG): a graph reusing an id with other ground truth was dropped; it
    must count as the reference counts it, i.e. as if it had its own id."""
    other = GraphGT(
        graph_id="hand",
        verb=1,
        objects=np.array([2, 3], dtype=np.int64),
        edges=np.array([[1, 0, 0, 0], [0, 0, 0, 1]], dtype=bool),
    )
    renamed = GraphGT("other", other.verb, other.objects, other.edges)
    pred = {"rel_logits": HAND_PRED["rel_logits"]}

    def run(graphs):
        metric = EASGRecall("edgecls", "with", ks=(1, 2), k_max=4, per_graph=True)
        for graph in graphs:
            metric.update((graph, pred))
        return metric.compute()

    alone = run([HAND_GT])
    same_id = run([HAND_GT, other, HAND_GT])
    own_id = run([HAND_GT, renamed])
    assert same_id["graphs"] == 2
    assert same_id["R@2"] == own_id["R@2"] != alone["R@2"]
    assert same_id["per_graph"]["hand (2)"] == own_id["per_graph"]["other"]

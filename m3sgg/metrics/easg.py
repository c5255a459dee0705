"""EASG recall: R@K of (verb, object class, edge) triplets, as EASG's ``run_easg.py`` reports it.

One sample is one **graph**: a verb and its ``n`` distinct object classes, with multi-label edges
verb → object. Its ground-truth triplets are ``(verb, objects[i], r)`` for every ``edges[i, r]``.

Scores are computed from the model's logits inside the metric, in float32 on the CPU as the
reference does: ``softmax`` over the verb logits, ``softmax(dim=1)`` over each object slot's class
logits and ``sigmoid`` over the edge logits.

Candidate triplets per graph (``K_max = k_max = 50``, ``top_verbs = top_edges = 5`` by default)::

    task     constraint  verbs      classes per object slot        edges per slot  score
    edgecls  with        GT verb    GT class                       1               edge
    edgecls  no          GT verb    GT class                       ceil(K_max/n)   edge
    sgcls    with        GT verb    ceil(K_max/n)                  1               class+edge
    sgcls    no          GT verb    ceil(K_max/(E·n))              E = top_edges   class+edge
    easgcls  with        top_verbs  ceil(K_max/(top_verbs·n))      1               verb+class+edge
    easgcls  no          top_verbs  ceil(K_max/(top_verbs·E·n))    E = top_edges   verb+class+edge

Every "top" list is taken per slot (per object slot, or over the verbs) by a stable descending sort,
and a list longer than the label space is cut to the label space (``edgecls``/``no`` with one object
takes all 13 edges). The candidates are the full cross product of a slot's lists (verb × class ×
edge), scored by float32 sums ``(verb + class) + edge``. All candidates of the graph are then
ranked by a stable descending sort (ties keep the order verb rank, object slot, class rank, edge
rank) and the ranked list is cut to ``K_max``, so ``K`` never exceeds ``k_max``. There is no cut
before ranking: with ``n > K_max`` objects, every object's top edge competes.

A ground-truth triplet is recalled at ``K`` when an equal triplet is among the first ``K`` ranked
candidates (duplicates of a candidate triplet still take their ranks). ``R@K`` of a graph is
recalled / ground-truth triplets; the metric reports the plain mean over graphs. A graph without
any ground-truth triplet (no objects, or no edge set) has no defined recall: it is skipped and
counted in ``graphs_without_gt``.

Everything after reading the inputs is batched: the candidates of all graphs of an update are
built together as ``(verb, slot, class, edge)`` tensors, ranked by two stable sorts (by score, then
by graph), and matched to the ground truth through integer triplet keys; no Python loop runs over
objects or candidates.

The reference sorts unstably, so where exactly equal scores decide a top list or straddle a cut,
its result depends on the CPU's sort kernel; this module breaks such ties deterministically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any, NamedTuple

import ignite.distributed as idist
import numpy as np
import torch
from ignite.exceptions import NotComputableError

from m3sgg.data.structures import GraphGT
from m3sgg.errors import ConfigError
from m3sgg.metrics.base import SampleStatsMetric, check_ks, content_key

__all__ = [
    "EASG_CONSTRAINTS",
    "EASG_MODES",
    "EASGRecall",
    "RankedCandidates",
    "rank_candidates",
    "ranked_triplets",
]

#: Tasks, from most to least ground truth given to the model.
EASG_MODES: tuple[str, ...] = ("edgecls", "sgcls", "easgcls")
#: ``run_easg.py`` of the EASG release calls the edge-classification task ``predcls``.
_MODE_ALIASES: dict[str, str] = {"predcls": "edgecls"}
EASG_CONSTRAINTS: tuple[str, ...] = ("with", "no")


@dataclass(frozen=True)
class _Graph:
    """One ground-truth graph: id, verb, int64 objects ``(n,)``, bool edges ``(n, R)``."""

    graph_id: str
    verb: int
    objects: np.ndarray
    edges: np.ndarray


def _stable_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of non-negative float32 scores along the last dim (``k`` capped at the size).

    The order of a stable descending sort (equal scores: lower index first), found by ``topk`` on
    unique int64 keys: the bits of a non-negative float32 order like its value, and the index
    breaks ties. Twice as fast as sorting the 391 object classes of EASG.
    """
    size = scores.shape[-1]
    keys = scores.view(torch.int32).to(torch.int64) * size + (size - 1 - torch.arange(size))
    order = torch.topk(keys, min(k, size), dim=-1).indices
    return scores.gather(-1, order), order


def _ceil_div(a: int, b: int | torch.Tensor) -> int | torch.Tensor:
    return -(-a // b)


class RankedCandidates(NamedTuple):
    """Ranked candidate triplets of a batch of graphs, graph by graph, best first."""

    graph: torch.Tensor  #: int64 ``(M,)`` graph index, non-decreasing
    rank: torch.Tensor  #: int64 ``(M,)`` 0-based rank within the graph, ``< k_max``
    triplets: torch.Tensor  #: int64 ``(M, 3)`` ``(verb, object class, edge)``
    scores: torch.Tensor  #: float32 ``(M,)``


def rank_candidates(
    mode: str,
    constraint: str,
    verbs: torch.Tensor,
    objects: torch.Tensor,
    counts: torch.Tensor,
    rel_scores: torch.Tensor,
    obj_scores: torch.Tensor | None = None,
    verb_scores: torch.Tensor | None = None,
    k_max: int = 50,
    top_verbs: int = 5,
    top_edges: int = 5,
) -> RankedCandidates:
    """Candidate triplets of ``G`` graphs, ranked per graph and cut to ``k_max``.

    Object slots of all graphs are stacked (graph 0's slots first); the candidates of every graph
    are built at once and ranked by two stable sorts (by score, then by graph).

    Args:
        mode: ``"edgecls"``, ``"sgcls"`` or ``"easgcls"``.
        constraint: ``"with"`` or ``"no"``.
        verbs: int64 ``(G,)`` ground-truth verbs (used by ``edgecls`` and ``sgcls``).
        objects: int64 ``(N,)`` ground-truth object classes of all slots (used by ``edgecls``).
        counts: int64 ``(G,)`` object slots per graph, summing to ``N``.
        rel_scores: float32 ``(N, R)`` edge probabilities.
        obj_scores: float32 ``(N, C)`` class probabilities (``sgcls``, ``easgcls``).
        verb_scores: float32 ``(G, V)`` verb probabilities (``easgcls``).
        k_max: the candidate budget ``K_max``.
        top_verbs: verbs kept in ``easgcls``.
        top_edges: edges kept per object slot in the no-constraint ``sgcls``/``easgcls``.
    """
    n_graphs = int(counts.shape[0])
    slot_graph = torch.repeat_interleave(torch.arange(n_graphs), counts)  # (N,)
    slot_n = counts[slot_graph]  # objects in the slot's graph
    if mode == "edgecls":
        per_slot = torch.ones_like(slot_n) if constraint == "with" else _ceil_div(k_max, slot_n)
        per_slot = per_slot.clamp(max=rel_scores.shape[1])
        edge_s, edge_i = _stable_topk(rel_scores, int(per_slot.max()) if len(per_slot) else 0)
        scores = edge_s[None, :, None, :]  # (1, N, 1, e)
        valid = (torch.arange(edge_i.shape[1]) < per_slot[:, None])[None, :, None, :]
        verb_i = verbs[slot_graph][None]  # (1, N)
        cls_i = objects[:, None]  # (N, 1)
    else:
        if obj_scores is None:
            raise ValueError(f"mode {mode!r} needs object class scores")
        n_edges = 1 if constraint == "with" else top_edges
        n_verbs = top_verbs if mode == "easgcls" else 1
        per_slot = _ceil_div(k_max, n_verbs * n_edges * slot_n).clamp(max=obj_scores.shape[1])
        cls_s, cls_i = _stable_topk(obj_scores, int(per_slot.max()) if len(per_slot) else 0)
        edge_s, edge_i = _stable_topk(rel_scores, n_edges)  # (N, e)
        if mode == "easgcls":
            if verb_scores is None:
                raise ValueError("mode 'easgcls' needs verb scores")
            verb_s, verb_top = _stable_topk(verb_scores, top_verbs)  # (G, v)
            head = verb_s[slot_graph].T[:, :, None] + cls_s[None]  # (v, N, c): verb + class
            verb_i = verb_top[slot_graph].T  # (v, N)
        else:
            head = cls_s[None]  # (1, N, c)
            verb_i = verbs[slot_graph][None]  # (1, N)
        scores = head[..., None] + edge_s[None, :, None, :]  # (v, N, c, e): (verb + class) + edge
        valid = (torch.arange(cls_i.shape[1]) < per_slot[:, None])[None, :, :, None]
    shape = scores.shape
    valid = valid.expand(shape)
    # boolean indexing keeps row-major order: (verb rank, slot, class rank, edge rank)
    triplets = torch.stack(
        [
            verb_i[:, :, None, None].expand(shape)[valid],
            cls_i[None, :, :, None].expand(shape)[valid],
            edge_i[None, :, None, :].expand(shape)[valid],
        ],
        dim=1,
    )
    graph = slot_graph[None, :, None, None].expand(shape)[valid]
    scores = scores[valid]
    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(graph[by_score], stable=True)]
    graph, triplets, scores = graph[order], triplets[order], scores[order]
    per_graph = torch.bincount(graph, minlength=n_graphs)
    rank = torch.arange(graph.shape[0]) - (per_graph.cumsum(0) - per_graph)[graph]
    keep = rank < k_max
    return RankedCandidates(graph[keep], rank[keep], triplets[keep], scores[keep])


def ranked_triplets(
    mode: str,
    constraint: str,
    verb: int,
    objects: torch.Tensor,
    rel_scores: torch.Tensor,
    obj_scores: torch.Tensor | None = None,
    verb_scores: torch.Tensor | None = None,
    k_max: int = 50,
    top_verbs: int = 5,
    top_edges: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rank_candidates` of one graph: ``(triplets (M, 3), scores (M,))``, best first.

    ``verb`` is an int, ``objects`` ``(n,)``, ``rel_scores`` ``(n, R)``, ``obj_scores``
    ``(n, C)`` and ``verb_scores`` ``(V,)``; the other arguments as in :func:`rank_candidates`.
    """
    ranked = rank_candidates(
        mode,
        constraint,
        torch.tensor([verb], dtype=torch.int64),
        objects,
        torch.tensor([objects.shape[0]], dtype=torch.int64),
        rel_scores,
        obj_scores,
        None if verb_scores is None else verb_scores[None],
        k_max=k_max,
        top_verbs=top_verbs,
        top_edges=top_edges,
    )
    return ranked.triplets, ranked.scores


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _positive_int(name: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class EASGRecall(SampleStatsMetric):
    """Recall@K of EASG graphs for one task and constraint (module docstring: the candidates).

    ``update((gt, pred))`` takes a batch of graphs:

    - ``gt``: a :class:`~m3sgg.data.structures.GraphGT`, a mapping with the keys of the reference
      vectors (``verb_idx``, ``obj_indices``, ``rels_vecs`` and optionally ``graph_id``), or a
      sequence of them. A mapping without ``graph_id`` gets the id ``"#<rank>:<update>:<i>"``:
      unique, so such graphs are never deduplicated (a graph that a distributed sampler pads onto
      two ranks then counts twice).
    - ``pred``: a mapping of **logits**: ``rel_logits`` (always), ``obj_logits`` (``sgcls``,
      ``easgcls``), ``verb_logits`` (``easgcls``). For a batch, ``verb_logits`` is ``[G, V]`` or
      a sequence of ``[V]``, and ``obj_logits``/``rel_logits`` are sequences of ``[n_i, C]`` and
      ``[n_i, R]`` (or ``[G, n, ·]`` tensors); for a single graph (``gt`` not a sequence), one
      ``[V]``, ``[n, C]`` and ``[n, R]``. Logits are read in float32 on the CPU; inputs are not
      modified.

    The sample id is ``GraphGT.graph_id``: a graph seen twice (the same id and the same ground
    truth, also across ranks: a padded sample) counts once; another graph under an id already
    seen counts as its own sample (``per_graph`` names it ``"id (2)"``).
    If the engine output is a mapping, its ``"gt"`` and ``"pred"`` entries are used.

    Args:
        mode: ``"edgecls"`` (GT verb and objects), ``"sgcls"`` (GT verb) or ``"easgcls"``;
            ``"predcls"`` is accepted as the name EASG's ``run_easg.py`` gives ``"edgecls"``.
        constraint: ``"with"`` (one edge per object) or ``"no"`` (several).
        ks: the K of the reported ``R@K``, ascending, each at most ``k_max``.
        k_max: ``K_max``, the budget the per-slot list lengths are derived from.
        top_verbs: verbs kept in ``easgcls``.
        top_edges: edges kept per object in the no-constraint ``sgcls``/``easgcls``.
        per_graph: also return ``"per_graph"``: ``{graph_id: {"R@K": ..., "gt_triplets": t}}``
            for every evaluated graph.
        output_transform: maps the engine output to ``(gt, pred)``.
        device: ignite's metric device (the per-graph work itself runs on the CPU).

    ``compute()`` returns ``{"R@10": r, ..., "graphs": g, "graphs_without_gt": s}``: ``R@K`` is the
    mean over the ``g`` evaluated graphs of their recall (a fraction; papers print ×100).

    Example:
        >>> import numpy as np, torch
        >>> edges = np.zeros((1, 13), dtype=bool)
        >>> edges[0, 1] = True  # GT triplet (verb 3, object 7, edge 1 "dobj")
        >>> gt = GraphGT("g0", verb=3, objects=np.array([7]), edges=edges)
        >>> rel_logits = torch.zeros(1, 13)
        >>> rel_logits[0, 1] = 5.0
        >>> metric = EASGRecall("edgecls", "with")
        >>> metric.update((gt, {"rel_logits": rel_logits}))
        >>> metric.compute()
        {'R@10': 1.0, 'R@20': 1.0, 'R@50': 1.0, 'graphs': 1, 'graphs_without_gt': 0}
    """

    required_output_keys = ("gt", "pred")

    def __init__(
        self,
        mode: str = "edgecls",
        constraint: str = "with",
        ks: Sequence[int] = (10, 20, 50),
        k_max: int = 50,
        top_verbs: int = 5,
        top_edges: int = 5,
        per_graph: bool = False,
        output_transform: Callable[[Any], Any] = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        mode_name = _MODE_ALIASES.get(mode, mode) if isinstance(mode, str) else mode
        if mode_name not in EASG_MODES:
            raise ConfigError(
                "mode must be one of 'edgecls', 'sgcls', 'easgcls' (or 'predcls', an alias of "
                f"'edgecls'), got {mode!r}"
            )
        if constraint not in EASG_CONSTRAINTS:
            raise ConfigError(f"constraint must be one of 'with', 'no', got {constraint!r}")
        self.k_max = _positive_int("k_max", k_max)
        self.top_verbs = _positive_int("top_verbs", top_verbs)
        self.top_edges = _positive_int("top_edges", top_edges)
        self.ks = check_ks(ks, self.k_max)
        if not isinstance(per_graph, bool):
            raise ConfigError(f"per_graph must be a bool, got {per_graph!r}")
        self.mode = mode_name
        self.constraint = constraint
        self.per_graph = per_graph
        self.row_width = 1 + len(self.ks)  # [GT triplets, hits@K for each K]
        self._ks_tensor = torch.tensor(self.ks, dtype=torch.int64)
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    def reset(self) -> None:
        super().reset()
        self._updates = 0

    def update(self, output: Sequence[Any]) -> None:
        """Record one batch ``(gt, pred)`` (see the class docstring for the accepted forms)."""
        if not isinstance(output, Sequence) or len(output) != 2:
            raise TypeError("EASGRecall.update expects a pair (gt, pred)")
        gt, pred = output
        if not isinstance(pred, Mapping):
            raise TypeError(f"pred must be a mapping of logits, got {type(pred).__name__}")
        single = isinstance(gt, GraphGT | Mapping)
        items = [gt] if single else gt
        if not isinstance(items, Sequence) or isinstance(items, str | bytes):
            raise TypeError(
                f"gt must be a GraphGT, a mapping or a sequence of them, got {type(gt).__name__}"
            )
        graphs = [self._graph(item, i) for i, item in enumerate(items)]
        count = len(graphs)
        if count == 0:  # an empty batch records nothing
            self._updates += 1
            return
        rels = _per_graph(pred, "rel_logits", count, single, item_dims=2)
        objs = verbs = None
        if self.mode != "edgecls":
            objs = _per_graph(pred, "obj_logits", count, single, item_dims=2)
        if self.mode == "easgcls":
            verbs = _per_graph(pred, "verb_logits", count, single, item_dims=1)
        rows = self._batch_rows(graphs, rels, objs, verbs)
        keys = [content_key(g.graph_id, g.verb, g.objects, g.edges) for g in graphs]
        self._record_many([graph.graph_id for graph in graphs], rows, keys)
        self._updates += 1

    def _graph(self, item: Any, index: int) -> _Graph:
        if isinstance(item, GraphGT):
            graph_id, verb, objects, edges = item.graph_id, item.verb, item.objects, item.edges
        elif isinstance(item, Mapping):
            missing = [k for k in ("verb_idx", "obj_indices", "rels_vecs") if k not in item]
            if missing:
                raise ValueError(f"gt graph {index} lacks the keys {missing}")
            graph_id = item.get("graph_id")
            if graph_id is None:
                graph_id = f"#{idist.get_rank()}:{self._updates}:{index}"
            verb, objects, edges = item["verb_idx"], item["obj_indices"], item["rels_vecs"]
        else:
            raise TypeError(f"gt graph {index} must be a GraphGT or a mapping, got {type(item)}")
        where = f"gt graph {graph_id!r}"
        verb = int(_to_numpy(verb))
        objects = np.asarray(_to_numpy(objects)).reshape(-1)
        edges = np.asarray(_to_numpy(edges))
        if objects.size and objects.dtype.kind not in "iu":
            raise ValueError(f"{where}: object classes must be integers, got {objects.dtype}")
        n = objects.shape[0]
        if n == 0 and edges.size == 0 and edges.ndim < 2:
            edges = edges.reshape(0, 0)
        if edges.ndim != 2 or edges.shape[0] != n:
            raise ValueError(f"{where}: edges must have shape ({n}, R), got {edges.shape}")
        if edges.dtype != np.bool_ and not ((edges == 0) | (edges == 1)).all():
            raise ValueError(f"{where}: edges must be multi-hot (0/1 or bool)")
        object_list = objects.tolist()
        if len(set(object_list)) != n:
            raise ValueError(
                f"{where}: object classes must be distinct, got {object_list}; merge "
                "instances of one class (their edge sets unite)"
            )
        if verb < 0 or (n and min(object_list) < 0):
            raise ValueError(f"{where}: class indices must be non-negative")
        return _Graph(
            graph_id=str(graph_id),
            verb=verb,
            objects=objects.astype(np.int64, copy=False),
            edges=edges.astype(bool, copy=False),
        )

    def _batch_rows(
        self,
        graphs: list[_Graph],
        rels: list[torch.Tensor],
        objs: list[torch.Tensor] | None,
        verbs: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        """float64 ``(G, 1 + len(ks))`` rows ``[GT triplets, hits@K...]`` of a batch."""
        rows = torch.zeros((len(graphs), self.row_width), dtype=torch.float64)
        _check_batch(graphs, rels, objs, verbs)
        present = [i for i, g in enumerate(graphs) if g.objects.shape[0] > 0]
        if not present:
            return rows
        counts = torch.tensor([graphs[i].objects.shape[0] for i in present], dtype=torch.int64)
        # copies: the caller's arrays are never aliased
        objects = torch.from_numpy(np.concatenate([graphs[i].objects for i in present]))
        edges = torch.from_numpy(np.concatenate([graphs[i].edges for i in present]))
        gt_verbs = torch.tensor([graphs[i].verb for i in present], dtype=torch.int64)
        # sigmoid per graph: torch's elementwise kernels round the tail of a tensor differently
        # from its body, so a graph's probabilities depend on the shape they are computed in,
        # and the reference computes them graph by graph. Softmax rows do not depend on it.
        rel_scores = torch.cat([torch.sigmoid(rels[i]) for i in present])
        obj_scores = (
            None if objs is None else torch.softmax(torch.cat([objs[i] for i in present]), 1)
        )
        verb_scores = None if verbs is None else torch.softmax(torch.stack(verbs)[present], 1)
        ranked = rank_candidates(
            self.mode,
            self.constraint,
            gt_verbs,
            objects,
            counts,
            rel_scores,
            obj_scores,
            verb_scores,
            k_max=self.k_max,
            top_verbs=self.top_verbs,
            top_edges=self.top_edges,
        )
        # ground-truth triplets of the batch, then the best rank of an equal candidate triplet
        slot, edge = edges.nonzero(as_tuple=True)
        slot_graph = torch.repeat_interleave(torch.arange(len(present)), counts)
        gt_graph = slot_graph[slot]
        gt_triplets = torch.stack([gt_verbs[gt_graph], objects[slot], edge], dim=1)
        gt_rank = _best_rank(gt_graph, gt_triplets, ranked, missing=self.k_max)
        hits = torch.zeros((len(present), len(self.ks)), dtype=torch.float64)
        hits.index_add_(0, gt_graph, (gt_rank[:, None] < self._ks_tensor[None, :]).double())
        index = torch.tensor(present, dtype=torch.int64)
        rows[index, 0] = torch.bincount(gt_graph, minlength=len(present)).double()
        rows[index, 1:] = hits
        return rows

    def compute(self) -> dict[str, Any]:
        """``R@K`` per K, ``graphs``, ``graphs_without_gt`` (and ``per_graph`` if asked)."""
        ids, rows = self.gathered()
        has_gt = rows[:, 0] > 0
        evaluated = int(has_gt.sum())
        if evaluated == 0:
            raise NotComputableError(
                "EASGRecall needs at least one graph with a ground-truth triplet, got "
                f"{rows.shape[0]} graphs without one"
            )
        recall = rows[has_gt, 1:] / rows[has_gt, :1]  # (g, len(ks)), float64
        # fsum is exact, so the mean does not depend on the order ranks deliver the graphs in.
        result: dict[str, Any] = {
            f"R@{k}": math.fsum(recall[:, j].tolist()) / evaluated for j, k in enumerate(self.ks)
        }
        result["graphs"] = evaluated
        result["graphs_without_gt"] = rows.shape[0] - evaluated
        if self.per_graph:
            names = self.all_names()
            result["per_graph"] = {
                names[int(h)]: {
                    **{f"R@{k}": float(r[1 + j] / r[0]) for j, k in enumerate(self.ks)},
                    "gt_triplets": int(r[0]),
                }
                for h, r in zip(ids.tolist(), rows, strict=True)
                if r[0] > 0
            }
        return result


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def _as_logits(value: Any) -> torch.Tensor:
    """Logits as a float32 CPU tensor (a new tensor or the caller's, never written to)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float32)
    return torch.as_tensor(np.asarray(value, dtype=np.float32))


def _per_graph(
    pred: Mapping[str, Any], key: str, count: int, single: bool, item_dims: int
) -> list[torch.Tensor]:
    """``pred[key]`` split into one float32 tensor of ``item_dims`` dims per graph."""
    if key not in pred:
        raise ValueError(f"pred lacks {key!r}")
    value = pred[key]
    if single:
        parts = [_as_logits(value)]
    elif isinstance(value, Sequence) and len(value) and not isinstance(value[0], Integral | float):
        parts = [_as_logits(v) for v in value]
    else:
        stacked = _as_logits(value)
        if stacked.dim() != item_dims + 1:
            raise ValueError(
                f"pred[{key!r}] for a batch must be a sequence of {item_dims}-D tensors or one "
                f"{item_dims + 1}-D tensor, got shape {tuple(stacked.shape)}"
            )
        parts = list(stacked.unbind(0))
    if len(parts) != count:
        raise ValueError(f"pred[{key!r}] has {len(parts)} entries for {count} graphs")
    for part in parts:
        if part.dim() != item_dims:
            raise ValueError(
                f"pred[{key!r}] entries must be {item_dims}-D, got shape {tuple(part.shape)}"
            )
    return parts


def _check_shape(tensor: torch.Tensor, shape: tuple[int | None, ...], what: str) -> None:
    ok = tensor.dim() == len(shape) and all(
        want is None or got == want for got, want in zip(tensor.shape, shape, strict=True)
    )
    if not ok:
        wanted = ", ".join("·" if s is None else str(s) for s in shape)
        raise ValueError(f"{what} must have shape ({wanted}), got {tuple(tensor.shape)}")


def _check_batch(
    graphs: list[_Graph],
    rels: list[torch.Tensor],
    objs: list[torch.Tensor] | None,
    verbs: list[torch.Tensor] | None,
) -> None:
    """Logit shapes against the ground truth; one label space per batch."""
    widths: dict[str, set[int]] = {"rel_logits": set(), "obj_logits": set(), "verb_logits": set()}
    for i, graph in enumerate(graphs):
        n, n_rel = graph.edges.shape
        where = f"graph {graph.graph_id!r}"
        # a graph without objects given as ``rels_vecs=[]`` has no edge width to check against
        _check_shape(rels[i], (n, n_rel if n_rel or n else None), f"{where}: rel_logits")
        if n:
            widths["rel_logits"].add(n_rel)
        if objs is not None:
            _check_shape(objs[i], (n, None), f"{where}: obj_logits")
            n_cls = objs[i].shape[1]
            if n and int(graph.objects.max()) >= n_cls:
                raise ValueError(
                    f"{where}: object class {int(graph.objects.max())} is outside obj_logits' "
                    f"{n_cls} classes"
                )
            if n:
                widths["obj_logits"].add(n_cls)
        if verbs is not None:
            _check_shape(verbs[i], (None,), f"{where}: verb_logits")
            if graph.verb >= verbs[i].shape[0]:
                raise ValueError(
                    f"{where}: verb {graph.verb} is outside verb_logits' {verbs[i].shape[0]} "
                    "classes"
                )
            widths["verb_logits"].add(verbs[i].shape[0])
    for key, sizes in widths.items():
        if len(sizes) > 1:
            raise ValueError(
                f"the graphs of one batch must share the width of {key}, got {sorted(sizes)}"
            )


def _best_rank(
    gt_graph: torch.Tensor, gt_triplets: torch.Tensor, ranked: RankedCandidates, missing: int
) -> torch.Tensor:
    """Per GT triplet, the best rank of an equal candidate of its graph, else ``missing``."""
    if gt_graph.numel() == 0 or ranked.graph.numel() == 0:
        return torch.full_like(gt_graph, missing)
    span_v, span_c, span_e = (torch.cat([gt_triplets, ranked.triplets]).amax(dim=0) + 1).tolist()

    def key(graph: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
        verb, cls, edge = triplets.unbind(dim=1)
        return ((graph * span_v + verb) * span_c + cls) * span_e + edge

    candidate_key = key(ranked.graph, ranked.triplets)
    # candidates come graph by graph in rank order: a stable sort by key puts the best rank first
    order = torch.argsort(candidate_key, stable=True)
    unique, repeats = torch.unique_consecutive(candidate_key[order], return_counts=True)
    best = ranked.rank[order][repeats.cumsum(0) - repeats]
    gt_key = key(gt_graph, gt_triplets)
    position = torch.searchsorted(unique, gt_key).clamp(max=unique.numel() - 1)
    return torch.where(unique[position] == gt_key, best[position], missing)

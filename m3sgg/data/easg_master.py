"""The EASG master view: ``EASG_unict_master_final[_upd].json`` read into graphs.

The rules (verb from the ``CW`` triplet, instance suffixes, unknown names dropped and counted,
groundings matched by raw name, vocabularies by first appearance or from the files) are described
in :mod:`m3sgg.data.easg`, whose :class:`~m3sgg.data.easg.EASG` uses :class:`MasterReader` for
``source="master"``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from m3sgg.data.easg import (
    _BOX_KEYS,
    _FRAME_INDEX,
    FRAME_TYPES,
    MASTER_JSON_NAMES,
    SPLITS,
    VOCAB_FILES,
    EASGVocab,
    _check_boxes,
    _expect,
    _frame_number,
    _Graph,
    _is_number,
    read_labels,
    strip_instance,
)
from m3sgg.data.easg_release import EASGFiles
from m3sgg.errors import DataError

__all__ = ["MasterReader"]


class MasterReader:
    """Reads one split of the master JSON; counts what its rules drop into ``stats``.

    Args:
        files: where the release's files are (:func:`~m3sgg.data.easg_release.find_easg_files`).
        split: ``"train"`` or ``"val"``.
        stats: the dataset's counters (``EASG._stats``), updated in place.
    """

    def __init__(self, files: EASGFiles, split: str, stats: dict[str, Any]):
        self.files = files
        self.split = split
        self._stats = stats
        self.vocab: EASGVocab | None = None

    def find(self, master_json: str | os.PathLike[str] | None) -> Path:
        if master_json is not None:
            return Path(master_json)
        for name in MASTER_JSON_NAMES:
            if self.files.get(name) is not None:
                return self.files.path(name)
        return self.files.path(MASTER_JSON_NAMES[0])  # raises, naming what was found

    @staticmethod
    def load(path: Path) -> Any:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DataError(path, "file not found") from None
        except IsADirectoryError:
            raise DataError(path, "is a folder, expected a JSON file") from None
        except json.JSONDecodeError as err:
            raise DataError(
                path, f"not valid JSON ({err.msg})", field=f"line {err.lineno} column {err.colno}"
            ) from None
        except UnicodeDecodeError as err:
            raise DataError(path, f"not UTF-8 text ({err.reason})") from None
        return _expect(data, Mapping, path, "top level")

    def first_appearance_vocab(self, data: Mapping) -> EASGVocab:
        """Verbs and edges in order of first appearance over every clip (both splits), objects
        from ``objects.txt``; malformed records are left to :meth:`read` to report."""
        objects = read_labels(self.files.path(VOCAB_FILES["objects"]))
        known = set(objects)
        verbs: dict[str, None] = {}
        edges: dict[str, None] = {}
        for clip in data.values():
            graphs = clip.get("graphs") if isinstance(clip, Mapping) else None
            for graph in graphs if isinstance(graphs, list) else ():
                triplets = graph.get("triplets") if isinstance(graph, Mapping) else None
                for trip in triplets if isinstance(triplets, list) else ():
                    if not (isinstance(trip, list | tuple) and len(trip) == 3):
                        continue
                    node, edge, obj = trip
                    if not all(isinstance(x, str) for x in trip):
                        continue
                    if node == "CW" and edge == "verb":
                        verbs.setdefault(obj, None)
                    elif strip_instance(obj) in known:
                        edges.setdefault(edge, None)
        return EASGVocab(tuple(verbs), objects, tuple(edges))

    def read(self, path: Path, data: Mapping, vocab: EASGVocab) -> list[_Graph]:
        """The graphs of this split, indexed with ``vocab``."""
        self.vocab = vocab
        self._stats["ignored_groundings"] = 0
        graphs: list[_Graph] = []
        seen_uids: dict[str, str] = {}
        for clip_id, clip in data.items():
            where = f"clip {clip_id!r}"
            _expect(clip, Mapping, path, where)
            split = clip.get("split")
            if split not in SPLITS:
                raise DataError(
                    path, f"split must be one of {SPLITS}, got {split!r}", field=f"{where} split"
                )
            if split != self.split:
                continue
            size = []
            for key in ("W", "H"):
                value = clip.get(key)
                if not _is_number(value) or not 0 < value < math.inf:
                    raise DataError(
                        path,
                        f"expected a positive frame size, got {value!r}",
                        field=f"{where} {key}",
                    )
                size.append(float(value))
            clip_graphs = _expect(clip.get("graphs"), list, path, f"{where} graphs")
            for gi, graph in enumerate(clip_graphs):
                gwhere = f"{where} graphs[{gi}]"
                g = self._graph(path, clip_id, graph, gwhere, size)
                if g is None:
                    continue
                uid = g.graph_id
                if uid in seen_uids:
                    raise DataError(
                        path,
                        f"graph_uid {uid!r} repeats (first at {seen_uids[uid]})",
                        field=f"{gwhere} graph_uid",
                    )
                seen_uids[uid] = gwhere
                graphs.append(g)
        return graphs

    def _graph(
        self, path: Path, clip_id: str, graph: Any, where: str, size: list[float]
    ) -> _Graph | None:
        _expect(graph, Mapping, path, where)
        uid = graph.get("graph_uid")
        if not isinstance(uid, str) or not uid:
            raise DataError(path, f"expected a string id, got {uid!r}", field=f"{where} graph_uid")
        frames = np.asarray(
            [_frame_number(graph.get(ft), path, f"{where} {ft}") for ft in FRAME_TYPES],
            dtype=np.int64,
        )
        triplets = graph.get("triplets")
        triplets = [] if triplets is None else _expect(triplets, list, path, f"{where} triplets")
        verb: str | None = None
        pairs: dict[tuple[str, str], None] = {}  # (raw object name, edge), first-seen order
        vocab = self.vocab
        for ti, trip in enumerate(triplets):
            twhere = f"{where} triplets[{ti}]"
            if not (
                isinstance(trip, list | tuple)
                and len(trip) == 3
                and all(isinstance(x, str) for x in trip)
            ):
                raise DataError(
                    path, f"expected [node, edge, node] strings, got {trip!r}", field=twhere
                )
            node, edge, obj = trip
            if node == "CW" and edge == "verb":
                if verb is not None and obj != verb:
                    raise DataError(path, f"second verb {obj!r} (first {verb!r})", field=twhere)
                verb = obj
                continue
            name = strip_instance(obj)
            if edge not in vocab.relation_index and name in vocab.object_index:
                # only with vocab="files": first appearance lists every edge of a known object
                self._stats["dropped_edges"][edge] += 1
                self._stats["dropped_triplets"] += 1
            elif name not in vocab.object_index:
                self._stats["dropped_objects"][name] += 1
                self._stats["dropped_triplets"] += 1
            elif (obj, edge) in pairs:  # verb_node ignored: it may be a spelling variant
                self._stats["duplicate_triplets"] += 1
            else:
                pairs[(obj, edge)] = None
        if not triplets:
            self._stats["skipped_graphs"]["no_triplets"] += 1
            return None
        if verb is None:
            raise DataError(path, "no ['CW', 'verb', v] triplet", field=f"{where} triplets")
        if verb not in vocab.verb_index:  # only with vocab="files"
            self._stats["dropped_verbs"][verb] += 1
            self._stats["skipped_graphs"]["unknown_verb"] += 1
            return None
        if not pairs:
            self._stats["skipped_graphs"]["no_objects"] += 1
            return None
        g = _Graph(uid, clip_id, vocab.verb_index[verb], frames)
        g.aids.append(uid)
        raw_class: dict[str, int] = {}
        for obj, edge in pairs:
            cls = vocab.object_index[strip_instance(obj)]
            raw_class[obj] = cls
            g.tobj.append(cls)
            g.rel.append(vocab.relation_index[edge])
        self._groundings(path, graph.get("groundings"), raw_class, g, where, size)
        return g

    def _groundings(
        self,
        path: Path,
        groundings: Any,
        raw_class: dict[str, int],
        g: _Graph,
        where: str,
        size: list[float],
    ) -> None:
        if groundings is None:
            return
        gwhere = f"{where} groundings"
        _expect(groundings, Mapping, path, gwhere)
        width, height = size
        scale = np.array([width, height, width, height], dtype=np.float64)
        for ft, named in groundings.items():
            if ft not in _FRAME_INDEX:
                raise DataError(
                    path, f"unknown frame type {ft!r} (expected {FRAME_TYPES})", field=gwhere
                )
            if named is None:
                continue
            _expect(named, Mapping, path, f"{gwhere}[{ft!r}]")
            for name, box in named.items():
                bwhere = f"{gwhere}[{ft!r}][{name!r}]"
                if name not in raw_class:
                    self._stats["ignored_groundings"] += 1
                    continue
                _expect(box, Mapping, path, bwhere)
                values = []
                for key in _BOX_KEYS:
                    value = box.get(key)
                    if not _is_number(value):
                        raise DataError(
                            path, f"expected a number, got {value!r}", field=f"{bwhere} {key}"
                        )
                    values.append(float(value))
                xywh = np.asarray([values], dtype=np.float64)
                _check_boxes(xywh, path, bwhere)
                xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1) / scale
                g.add_rows(raw_class[name], _FRAME_INDEX[ft], xyxy.astype(np.float32), None)

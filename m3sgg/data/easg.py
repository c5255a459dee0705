"""Reader of EASG (egocentric action scene graphs on Ego4D), both views of the release.

One **sample** is one graph: a verb, its distinct object classes, multi-label edges verb → object
(:class:`~m3sgg.data.structures.GraphGT`, what the EASG metric consumes), boxes of the objects in
up to three frames (``pre``, ``pnr``, ``post``) and, in the SGG view, precomputed features.

Files (found anywhere up to four folder levels under ``root``, see
:mod:`m3sgg.data.easg_release`, so ``root`` may be the release root or a flat folder)::

    verbs.txt  objects.txt  relationships.txt      the vocabularies, one label per line
    EASG_unict_master_final.json                   master view (or ..._upd.json)
    easg_{train,val}.pkl                           SGG view
    roi_feats_{train,val}.pkl  verb_features.pt    SGG-view features (``features_dir``)

Dataset pickles may hold numpy arrays or torch tensors (the release's RoI pickles hold tensors);
they are read with :func:`~m3sgg.data.safe_pickle.load_pickle`, which runs no code.

**Vocabularies** of the SGG view come only from the three text files, in file order and
case-sensitive (``TABLE`` and ``table`` are two classes); an empty or repeated line is an error.
The master view reads ``objects.txt`` the same way; its verbs and edges are numbered by first
appearance over the JSON like the release's own reader (``vocab="annotations"``, the default), or
by ``verbs.txt`` and ``relationships.txt`` (``vocab="files"``).

**Master view** (``source="master"``): ``{clip_id: {"split", "W", "H", "graphs": [{"graph_uid",
"pre", "pnr", "post", "triplets", "groundings"}]}}``. Rules applied, each counted in
:meth:`EASG.stats`:

- the verb is the ``v`` of the ``["CW", "verb", v]`` triplet (two different verbs in one graph is
  an error; with ``vocab="files"`` a verb outside ``verbs.txt`` skips the graph:
  ``dropped_verbs``, ``skipped_graphs["unknown_verb"]``); ``verb_node``, the first element of every
  other triplet ``[verb_node, edge, object]``, is ignored (it can be a spelling variant of the
  verb);
- object names lose an instance suffix ``:k`` (``knife:2`` → ``knife``); a name outside
  ``objects.txt`` drops its triplet (``dropped_objects``); with ``vocab="files"`` an edge outside
  ``relationships.txt`` drops its triplet (``dropped_edges``); a repeated (object, edge) pair
  counts once, whatever its ``verb_node`` (``duplicate_triplets``). No unknown name stops the
  reader;
- a graph without triplets, or whose object triplets were all dropped, has no ground truth to
  recall and is **skipped** (``skipped_graphs``: ``no_triplets`` / ``no_objects``);
- groundings ``{frame_type: {name: {"left", "top", "width", "height"}}}`` (pixels of ``W`` × ``H``)
  are matched to the triplet objects by their **raw** name (suffix included, as written in the
  triplets); grounded names not among them are ignored (``ignored_groundings``). A frame type may
  be absent, ``null`` or empty, and an object may be grounded in no frame. A frame of a sample
  exists where at least one of its objects is grounded (:attr:`EASGSample.frame_mask`).

**SGG view** (``source="sgg"``, the feature baseline's files): ``easg_{split}.pkl`` =
``{f"{clip_id}_{pnr:06d}": {"annotations": {aid: [{"obj", "bbox", "verb", "rel"}]},
"clip_frame_number": {"pre", "pnr", "post"}}}``, one entry per (object, edge) with ``bbox`` =
``{frame_type: float32 (k, 4) normalised x, y, w, h}``. How ids relate (our reading of the release):
an **annotation id** ``aid`` is the master JSON's 64-hex ``graph_uid`` (one annotation, one verb);
the pickle **key** ``{clip_id}_{pnr:06d}`` is the *graph uid of the SGG view*: all annotations of
one clip that share the PNR frame. ``roi_feats_{split}.pkl`` is keyed ``[key][aid][i]`` (entry
``i`` of the annotation list, ``{frame_type: float32 (k, 1024)}``, row ``j`` ↔ bbox row ``j``)
and ``verb_features.pt`` ``[aid]`` (float32 (2304,)). A sample is one (key, verb) pair: the
annotations of a key with the same verb merge (``merged_annotations``). Its ``graph_id`` is the key,
or ``f"{key}:{verb}"`` when the key holds several verbs (``split_graphs``). Entries repeated
verbatim count once (``duplicate_triplets``); an unknown verb, object or edge is an error (the text
files are the union of the labels of both splits). An annotation with an empty entry list adds
nothing (``empty_annotations``).

**Objects** of a sample are its distinct classes in ascending class index; instances of a class
merge: their edge sets unite, their box in a frame is the enclosing box of the instances' boxes
there, and (SGG view) their features in a frame are the mean over the distinct instance boxes
there (rows with bit-identical boxes are one instance). Boxes are normalised **xyxy** in both views,
``NaN`` where the object is not grounded. A sample's verb feature is the mean over its annotations.
Features exist only in the SGG view (the RoI features are aligned with its entry lists), so the
master view reads none. Frame images (``frames/<graph_uid>/<clip_id>_<frame_type>.jpg``) are not
read: models use the precomputed features.

Example::

    ds = EASG("data/easg", "val", source="master")
    g = ds[0].gt
    ds.vocab.verbs[g.verb], [ds.vocab.objects[o] for o in g.objects], ds.stats()["graphs"]
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m3sgg.data.easg_release import EASGFiles, find_easg_files
from m3sgg.data.safe_pickle import load_pickle
from m3sgg.data.structures import GraphGT
from m3sgg.errors import ConfigError, DataError

__all__ = [
    "EASG",
    "FRAME_TYPES",
    "MASTER_JSON_NAMES",
    "ROI_FEATURE_DIM",
    "SOURCES",
    "SPLITS",
    "VERB_FEATURE_DIM",
    "VOCAB_FILES",
    "VOCAB_SOURCES",
    "EASGSample",
    "EASGVocab",
    "easg_model_inputs",
    "load_vocab",
    "read_labels",
    "strip_instance",
]

#: Frame types of a graph, in the order of the boxes' second axis.
FRAME_TYPES: tuple[str, ...] = ("pre", "pnr", "post")
#: Master JSON file names, tried in this order.
MASTER_JSON_NAMES: tuple[str, ...] = (
    "EASG_unict_master_final.json",
    "EASG_unict_master_final_upd.json",
)
SPLITS: tuple[str, ...] = ("train", "val")
SOURCES: tuple[str, ...] = ("sgg", "master")
#: Where the master view's verb and edge vocabularies come from (see :class:`EASG`).
VOCAB_SOURCES: tuple[str, ...] = ("annotations", "files")
ROI_FEATURE_DIM = 1024
VERB_FEATURE_DIM = 2304
VOCAB_FILES: dict[str, str] = {
    "verbs": "verbs.txt",
    "objects": "objects.txt",
    "relations": "relationships.txt",
}

_SUFFIX = re.compile(r":\d+$")
_KEY = re.compile(r"^(.+)_(\d+)$")
_FRAME_INDEX = {name: i for i, name in enumerate(FRAME_TYPES)}
_BOX_KEYS = ("left", "top", "width", "height")


def strip_instance(name: str) -> str:
    """Drop an instance suffix ``:k`` (``"knife:2"`` → ``"knife"``); other names are unchanged."""
    return _SUFFIX.sub("", name)


def read_labels(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Read a vocabulary file: one label per line, in file order, exactly as written.

    Raises:
        DataError: missing or non-UTF-8 file, no labels, an empty line or a repeated label.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, expected a text file") from None
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    first_seen: dict[str, int] = {}
    for lineno, raw in enumerate(lines, start=1):
        label = raw.removesuffix("\r")
        if not label.strip():
            raise DataError(path, "empty label", field=f"line {lineno}")
        if label in first_seen:
            raise DataError(
                path,
                f"duplicate label {label!r} (first on line {first_seen[label]})",
                field=f"line {lineno}",
            )
        first_seen[label] = lineno
    if not first_seen:
        raise DataError(path, "no labels")
    return tuple(first_seen)


@dataclass(frozen=True)
class EASGVocab:
    """The three EASG vocabularies; unpacks as ``verbs, objects, relations = vocab``."""

    verbs: tuple[str, ...]
    objects: tuple[str, ...]
    relations: tuple[str, ...]
    verb_index: dict[str, int] = field(init=False, repr=False, compare=False)
    object_index: dict[str, int] = field(init=False, repr=False, compare=False)
    relation_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, labels in (
            ("verb", self.verbs),
            ("object", self.objects),
            ("relation", self.relations),
        ):
            object.__setattr__(self, f"{name}_index", {s: i for i, s in enumerate(labels)})

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        return iter((self.verbs, self.objects, self.relations))


def load_vocab(root: str | os.PathLike[str] | EASGFiles) -> EASGVocab:
    """Read ``verbs.txt``, ``objects.txt`` and ``relationships.txt`` from ``root`` (or from
    where :func:`~m3sgg.data.easg_release.find_easg_files` found them)."""
    if isinstance(root, EASGFiles):
        files = root
        return EASGVocab(
            *(read_labels(files.path(VOCAB_FILES[k])) for k in ("verbs", "objects", "relations"))
        )
    root = Path(root)
    return EASGVocab(
        *(read_labels(root / VOCAB_FILES[k]) for k in ("verbs", "objects", "relations"))
    )


@dataclass(frozen=True, eq=False)
class EASGSample:
    """One EASG graph, ready for a model and the metric.

    Attributes:
        index: position in the dataset.
        gt: verb, distinct object classes (ascending) and edges ``(n, R)``; ``gt.graph_id`` is
            unique in the dataset.
        clip_id: the Ego4D clip.
        annotation_ids: the 64-hex annotation ids (master ``graph_uid``) merged into this sample.
        frame_numbers: int64 ``(3,)`` clip frame numbers of pre, pnr, post (``-1`` if unknown).
        boxes: float32 ``(n, 3, 4)`` normalised xyxy per object and frame type (pre, pnr, post),
            ``NaN`` where the object is not grounded.
        obj_features: float32 ``(n, 3, D)`` RoI features (mean over merged instances), zeros
            where not grounded (see :attr:`grounded`); ``None`` without features.
        verb_feature: float32 ``(D_verb,)`` clip feature; ``None`` without features.
    """

    index: int
    gt: GraphGT
    clip_id: str
    annotation_ids: tuple[str, ...]
    frame_numbers: np.ndarray
    boxes: np.ndarray
    obj_features: np.ndarray | None = None
    verb_feature: np.ndarray | None = None

    @property
    def num_objects(self) -> int:
        return int(self.gt.objects.shape[0])

    @property
    def grounded(self) -> np.ndarray:
        """bool ``(n, 3)``: object ``i`` has a box in frame type ``t``."""
        return ~np.isnan(self.boxes[..., 0])

    @property
    def frame_mask(self) -> np.ndarray:
        """bool ``(3,)``: the frame type exists (at least one object grounded in it)."""
        return self.grounded.any(axis=0)


class _Graph:
    """A sample being assembled: triplets and box rows, possibly repeated."""

    __slots__ = (
        "aids",
        "clip_id",
        "frame_numbers",
        "graph_id",
        "rel",
        "row_box",
        "row_feat",
        "row_ft",
        "row_obj",
        "seen",
        "tobj",
        "verb",
    )

    def __init__(self, graph_id: str, clip_id: str, verb: int, frame_numbers: np.ndarray):
        self.graph_id = graph_id
        self.clip_id = clip_id
        self.verb = verb
        self.frame_numbers = frame_numbers
        self.aids: list[str] = []
        self.tobj: list[int] = []
        self.rel: list[int] = []
        self.row_obj: list[int] = []
        self.row_ft: list[int] = []
        self.row_box: list[np.ndarray] = []  # (k, 4) xyxy float32 each
        self.row_feat: list[np.ndarray] = []  # (k, D) float32 each (SGG view with features)
        self.seen: set[tuple] = set()  # SGG entries already added, to count verbatim repeats

    def add_rows(self, obj: int, ft: int, boxes: np.ndarray, feats: np.ndarray | None) -> None:
        self.row_obj.extend([obj] * len(boxes))
        self.row_ft.extend([ft] * len(boxes))
        self.row_box.append(boxes)
        if feats is not None:
            self.row_feat.append(feats)


def _build(
    index: int, g: _Graph, num_rel: int, roi_dim: int | None, verb_feature: np.ndarray | None
) -> EASGSample:
    """Merge instances per class: edges unite, boxes enclose, features average per frame type."""
    tobj = np.asarray(g.tobj, dtype=np.int64)
    objects = np.unique(tobj)
    n = len(objects)
    edges = np.zeros((n, num_rel), dtype=bool)
    edges[np.searchsorted(objects, tobj), np.asarray(g.rel, dtype=np.int64)] = True
    boxes = np.full((n * 3, 4), np.nan, dtype=np.float32)
    feats = None if roi_dim is None else np.zeros((n * 3, roi_dim), dtype=np.float32)
    if g.row_obj:
        obj = np.asarray(g.row_obj, dtype=np.int64)
        ft = np.asarray(g.row_ft, dtype=np.int64)
        box = np.concatenate(g.row_box).astype(np.float32, copy=False)
        key = np.column_stack([obj, ft, box]).astype(np.float64)
        _, first = np.unique(key, axis=0, return_index=True)
        first.sort()  # distinct instances, first occurrence wins
        slot = np.searchsorted(objects, obj[first]) * 3 + ft[first]
        box = box[first]
        counts = np.bincount(slot, minlength=n * 3)
        lo = np.full((n * 3, 2), np.inf, dtype=np.float32)
        hi = np.full((n * 3, 2), -np.inf, dtype=np.float32)
        np.minimum.at(lo, slot, box[:, :2])
        np.maximum.at(hi, slot, box[:, 2:])
        has = counts > 0
        boxes[has] = np.concatenate([lo, hi], axis=1)[has]
        if feats is not None:
            sums = np.zeros((n * 3, roi_dim), dtype=np.float64)
            np.add.at(sums, slot, np.concatenate(g.row_feat)[first])
            feats[has] = (sums[has] / counts[has, None]).astype(np.float32)
    gt = GraphGT(graph_id=g.graph_id, verb=g.verb, objects=objects, edges=edges)
    return EASGSample(
        index=index,
        gt=gt,
        clip_id=g.clip_id,
        annotation_ids=tuple(g.aids),
        frame_numbers=g.frame_numbers,
        boxes=boxes.reshape(n, 3, 4),
        obj_features=None if feats is None else feats.reshape(n, 3, roi_dim),
        verb_feature=verb_feature,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _frame_number(value: Any, path: Path, where: str) -> int:
    """An integral frame number, or ``-1`` for ``None``."""
    if value is None:
        return -1
    if not _is_number(value) or not math.isfinite(value) or float(value) != int(value):
        raise DataError(path, f"expected an integer frame number, got {value!r}", field=where)
    return int(value)


def _check_boxes(xywh: np.ndarray, path: Path, where: str) -> None:
    """NaN/infinite coordinates or a negative width or height are errors."""
    if not np.isfinite(xywh).all():
        raise DataError(path, "box has a NaN or infinite coordinate", field=where)
    if (xywh[:, 2:] < 0).any():
        raise DataError(path, "box has a negative width or height", field=where)


class EASG(SequenceABC[EASGSample]):
    """EASG graphs of one split, from the master JSON or the SGG-format files.

    Args:
        root: folder of the vocabulary files (``verbs.txt``, ...) and of the view's files.
        split: ``"train"`` or ``"val"``.
        source: ``"sgg"`` (``easg_{split}.pkl``, optionally with features) or ``"master"``.
        features: load ``roi_feats_{split}.pkl`` and ``verb_features.pt`` (SGG view only; the
            default ``None`` means on for ``"sgg"``, off for ``"master"``).
        master_json: the master JSON file; default: the first of :data:`MASTER_JSON_NAMES` in
            ``root``.
        features_dir: folder of the feature files; default ``root``.
        roi_dim, verb_dim: expected feature sizes (the release's are 1024 and 2304).
        vocab: master view only: ``"annotations"`` (default; like the release's own reader:
            verbs and edges numbered by first appearance over the whole JSON, both splits, an edge
            counted only on a triplet whose object is in ``objects.txt``; objects from
            ``objects.txt``) or ``"files"`` (``verbs.txt`` and ``relationships.txt``: a graph
            whose verb is not listed is skipped, a triplet whose edge is not listed is dropped,
            both counted in :meth:`stats`). The SGG view always uses the files.

    Files are found with :func:`~m3sgg.data.easg_release.find_easg_files`: ``root`` may be the
    release root (files in sub-folders), the SGG folder or a flat folder; :attr:`files` holds
    what was found and ``files.summary()`` says it in one line.

    Example::

        ds = EASG("data/easg", "val", features=False)
        sample = ds[0]
        ds.vocab.verbs[sample.gt.verb], [ds.vocab.objects[o] for o in sample.gt.objects]

    Raises:
        ConfigError: bad ``split``/``source``, or features requested from the master view.
        DataError: a missing or malformed file, naming the file and the record.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        source: str = "sgg",
        features: bool | None = None,
        master_json: str | os.PathLike[str] | None = None,
        features_dir: str | os.PathLike[str] | None = None,
        roi_dim: int = ROI_FEATURE_DIM,
        verb_dim: int = VERB_FEATURE_DIM,
        vocab: str | None = None,
    ):
        if split not in SPLITS:
            raise ConfigError(f"EASG split must be one of {SPLITS}, got {split!r}")
        if source not in SOURCES:
            raise ConfigError(f"EASG source must be one of {SOURCES}, got {source!r}")
        if features is None:
            features = source == "sgg"
        if features and source != "sgg":
            raise ConfigError("EASG features are stored per SGG annotation: use source='sgg'")
        if vocab is None:
            vocab = "annotations" if source == "master" else "files"
        if vocab not in VOCAB_SOURCES:
            raise ConfigError(f"EASG vocab must be one of {VOCAB_SOURCES}, got {vocab!r}")
        if vocab == "annotations" and source != "master":
            raise ConfigError("the SGG view reads its vocabularies from the files: vocab='files'")
        self.root = Path(root)
        self.files = find_easg_files(self.root)
        self.split = split
        self.source = source
        self.features = bool(features)
        self.vocab_source = vocab
        self._stats: dict[str, Any] = {
            "vocab_source": vocab,
            "dropped_objects": Counter(),
            "dropped_triplets": 0,
            "skipped_graphs": Counter(),
            "duplicate_triplets": 0,
        }
        if features_dir is not None:
            fdir = Path(features_dir)
            self.roi_path = fdir / f"roi_feats_{split}.pkl"
            self.verb_path = fdir / "verb_features.pt"
        elif self.features:
            self.roi_path = self.files.path(f"roi_feats_{split}.pkl")
            self.verb_path = self.files.path("verb_features.pt")
        else:
            self.roi_path = self.files.get(f"roi_feats_{split}.pkl") or self.root / "-"
            self.verb_path = self.files.get("verb_features.pt") or self.root / "-"
        self.samples: list[EASGSample]
        if source == "master":
            from m3sgg.data.easg_master import MasterReader

            reader = MasterReader(self.files, split, self._stats)
            self.path = reader.find(master_json)
            data = reader.load(self.path)
            if vocab == "annotations":
                self.vocab = reader.first_appearance_vocab(data)
            else:
                self.vocab = load_vocab(self.files)
                self._stats.update(dropped_verbs=Counter(), dropped_edges=Counter())
            graphs = reader.read(self.path, data, self.vocab)
            num_rel = len(self.vocab.relations)
            self.samples = [_build(i, g, num_rel, None, None) for i, g in enumerate(graphs)]
            return
        self.vocab = load_vocab(self.files)
        num_rel = len(self.vocab.relations)
        self.path = self.files.path(f"easg_{split}.pkl")
        if not self.features:
            graphs = self._read_sgg(self.path, None, roi_dim)
            self.samples = [_build(i, g, num_rel, None, None) for i, g in enumerate(graphs)]
            return
        roi = _expect(load_pickle(self.roi_path), Mapping, self.roi_path, "top level")
        graphs = self._read_sgg(self.path, roi, roi_dim)
        del roi
        verb_feats = self._verb_features(graphs, verb_dim)
        self.samples = [_build(i, g, num_rel, roi_dim, verb_feats[i]) for i, g in enumerate(graphs)]

    # -- sequence -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> EASGSample:  # type: ignore[override]
        return self.samples[index]

    def __repr__(self) -> str:
        return (
            f"EASG(root={str(self.root)!r}, split={self.split!r}, source={self.source!r}, "
            f"graphs={len(self)}, features={self.features})"
        )

    def stats(self) -> dict[str, Any]:
        """Counts for ``m3sgg inspect-data``: totals, histograms by name, what the rules dropped.

        Keys: ``source``, ``split``, ``graphs``, ``objects``, ``triplets``, ``verbs``,
        ``object_classes``, ``relations`` (histograms in vocabulary order), ``vocab_source``
        (``"annotations"`` or ``"files"``), ``dropped_objects`` (master: triplets dropped per
        unknown object name), ``dropped_triplets``, ``skipped_graphs`` (by reason),
        ``duplicate_triplets``, and per view ``ignored_groundings`` (master) or
        ``merged_annotations``, ``split_graphs``, ``empty_annotations`` (SGG). The master view
        adds ``vocabulary`` (its verb and edge lists, in index order) with
        ``vocab="annotations"``, and ``dropped_verbs`` (graphs skipped per unlisted verb) and
        ``dropped_edges`` (triplets dropped per unlisted edge) with ``vocab="files"``.
        """
        verbs = np.zeros(len(self.vocab.verbs), dtype=np.int64)
        objs = np.zeros(len(self.vocab.objects), dtype=np.int64)
        rels = np.zeros(len(self.vocab.relations), dtype=np.int64)
        n_obj = 0
        for s in self.samples:
            verbs[s.gt.verb] += 1
            np.add.at(objs, s.gt.objects, 1)
            rels += s.gt.edges.sum(axis=0)
            n_obj += s.num_objects
        out: dict[str, Any] = {
            "source": self.source,
            "split": self.split,
            "graphs": len(self.samples),
            "objects": n_obj,
            "triplets": int(rels.sum()),
            "verbs": _histogram(self.vocab.verbs, verbs),
            "object_classes": _histogram(self.vocab.objects, objs),
            "relations": _histogram(self.vocab.relations, rels),
        }
        for key, value in self._stats.items():
            out[key] = dict(value) if isinstance(value, Counter) else value
        if self.source == "master" and self.vocab_source == "annotations":
            out["vocabulary"] = {
                "verbs": list(self.vocab.verbs),
                "relations": list(self.vocab.relations),
            }
        return out

    # -- SGG view -----------------------------------------------------------------------------
    def _read_sgg(self, path: Path, roi: Mapping | None, roi_dim: int) -> list[_Graph]:
        data = _expect(load_pickle(path), Mapping, path, "top level")
        stats = self._stats
        stats.update(merged_annotations=0, split_graphs=0, empty_annotations=0)
        graphs: list[_Graph] = []
        for key, record in data.items():
            where = f"graph {key!r}"
            match = _KEY.match(key) if isinstance(key, str) else None
            if match is None:
                raise DataError(path, "key is not '<clip_id>_<pnr frame>'", field=where)
            record = _expect(record, Mapping, path, where)
            annotations = _expect(record.get("annotations"), Mapping, path, f"{where} annotations")
            numbers = _expect(
                record.get("clip_frame_number"), Mapping, path, f"{where} clip_frame_number"
            )
            frames = np.asarray(
                [
                    _frame_number(numbers.get(ft), path, f"{where} clip_frame_number {ft}")
                    for ft in FRAME_TYPES
                ],
                dtype=np.int64,
            )
            roi_graph = None
            if roi is not None:
                if key not in roi:
                    raise DataError(self.roi_path, "no features for this graph", field=where)
                roi_graph = _expect(roi[key], Mapping, self.roi_path, where)
            by_verb: dict[int, _Graph] = {}
            for aid, entries in annotations.items():
                awhere = f"{where} annotations[{aid!r}]"
                entries = _expect(entries, list, path, awhere)
                if not entries:
                    stats["empty_annotations"] += 1
                feats = None
                if roi_graph is not None:
                    if aid not in roi_graph:
                        raise DataError(
                            self.roi_path, "no features for this annotation", field=awhere
                        )
                    feats = _expect(roi_graph[aid], list, self.roi_path, awhere)
                    if len(feats) != len(entries):
                        raise DataError(
                            self.roi_path,
                            f"{len(feats)} feature entries for {len(entries)} annotation entries",
                            field=awhere,
                        )
                for i, entry in enumerate(entries):
                    ewhere = f"{awhere}[{i}]"
                    verb, obj, rel = self._sgg_labels(path, entry, ewhere)
                    boxes = self._sgg_boxes(path, entry.get("bbox"), f"{ewhere} bbox")
                    if feats is not None:
                        feats_i = self._sgg_feats(feats[i], boxes, roi_dim, ewhere)
                    g = by_verb.get(verb)
                    if g is None:
                        g = by_verb[verb] = _Graph(key, match.group(1), verb, frames)
                    if g.aids[-1:] != [aid]:
                        g.aids.append(aid)
                    signature = (obj, rel, tuple((ft, b.tobytes()) for ft, b in boxes))
                    if signature in g.seen:
                        stats["duplicate_triplets"] += 1
                    g.seen.add(signature)
                    g.tobj.append(obj)
                    g.rel.append(rel)
                    for j, (ft, xywh) in enumerate(boxes):
                        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
                        g.add_rows(
                            obj, _FRAME_INDEX[ft], xyxy, None if feats is None else feats_i[j]
                        )
            for g in by_verb.values():
                if len(by_verb) > 1:
                    g.graph_id = f"{key}:{self.vocab.verbs[g.verb]}"
                stats["merged_annotations"] += len(g.aids) - 1
                graphs.append(g)
            stats["split_graphs"] += len(by_verb) > 1
        return graphs

    def _sgg_labels(self, path: Path, entry: Any, where: str) -> tuple[int, int, int]:
        """Verb, object and edge indices of one ``{"obj", "bbox", "verb", "rel"}`` entry."""
        entry = _expect(entry, Mapping, path, where)
        labels = []
        for name, index, file in (
            ("verb", self.vocab.verb_index, "verbs"),
            ("obj", self.vocab.object_index, "objects"),
            ("rel", self.vocab.relation_index, "relations"),
        ):
            label = entry.get(name)
            if not isinstance(label, str):
                raise DataError(path, f"expected a string, got {label!r}", field=f"{where} {name}")
            if label not in index:
                raise DataError(
                    path, f"{label!r} is not in {VOCAB_FILES[file]}", field=f"{where} {name}"
                )
            labels.append(index[label])
        return labels[0], labels[1], labels[2]

    def _sgg_boxes(self, path: Path, bbox: Any, where: str) -> list[tuple[str, np.ndarray]]:
        """``[(frame_type, float32 (k, 4) xywh)]`` in frame-type order, ``k >= 1``."""
        if bbox is None:
            return []
        _expect(bbox, Mapping, path, where)
        out = []
        for ft in bbox:
            if ft not in _FRAME_INDEX:
                raise DataError(
                    path, f"unknown frame type {ft!r} (expected {FRAME_TYPES})", field=where
                )
        for ft in FRAME_TYPES:
            if ft not in bbox or bbox[ft] is None:
                continue
            arr = _float_array(bbox[ft], path, f"{where}[{ft!r}]")
            if arr.ndim == 1 and arr.shape[0] == 4:
                arr = arr[None]
            if arr.ndim != 2 or arr.shape[1] != 4:
                raise DataError(
                    path, f"expected shape (k, 4), got {arr.shape}", field=f"{where}[{ft!r}]"
                )
            _check_boxes(arr, path, f"{where}[{ft!r}]")
            if len(arr):
                out.append((ft, arr))
        return out

    def _sgg_feats(
        self, feats: Any, boxes: list[tuple[str, np.ndarray]], dim: int, where: str
    ) -> list[np.ndarray]:
        """Feature rows aligned with ``boxes``: per frame type float32 ``(k, dim)``."""
        _expect(feats, Mapping, self.roi_path, where)
        out = []
        for ft, xywh in boxes:
            arr = feats.get(ft)
            if arr is None:
                raise DataError(
                    self.roi_path, f"no {ft!r} features for a grounded box", field=where
                )
            arr = _float_array(arr, self.roi_path, f"{where}[{ft!r}]")
            if arr.ndim == 1:
                arr = arr[None]
            if arr.shape != (len(xywh), dim):
                raise DataError(
                    self.roi_path,
                    f"expected shape ({len(xywh)}, {dim}) to match the boxes, got {arr.shape}",
                    field=f"{where}[{ft!r}]",
                )
            out.append(arr)
        return out

    def _verb_features(self, graphs: list[_Graph], dim: int) -> list[np.ndarray]:
        import pickle
        import zipfile

        import torch

        path = self.verb_path
        try:
            table = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise DataError(path, "file not found") from None
        except (
            RuntimeError,
            EOFError,
            OSError,
            ValueError,
            pickle.UnpicklingError,
            zipfile.BadZipFile,
        ) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(path, f"not a readable torch file ({message})") from None
        _expect(table, Mapping, path, "top level")
        cache: dict[str, np.ndarray] = {}
        out = []
        for g in graphs:
            rows = []
            for aid in g.aids:
                if aid not in cache:
                    value = table.get(aid)
                    if value is None:
                        raise DataError(
                            path, "no verb feature for this annotation", field=repr(aid)
                        )
                    if isinstance(value, torch.Tensor):
                        value = value.detach().cpu().numpy()
                    arr = _float_array(value, path, repr(aid))
                    if arr.size != dim:
                        raise DataError(
                            path, f"expected shape ({dim},), got {arr.shape}", field=repr(aid)
                        )
                    cache[aid] = arr.astype(np.float32).reshape(dim)
                rows.append(cache[aid])
            out.append(rows[0] if len(rows) == 1 else np.mean(rows, axis=0).astype(np.float32))
        return out


def _expect(value: Any, kind: type, path: Path, where: str) -> Any:
    """``value`` if it is a ``kind`` (``Mapping`` or ``list``); else a DataError at ``where``."""
    if not isinstance(value, kind):
        expected = "a dict" if kind is Mapping else f"a {kind.__name__}"
        raise DataError(path, f"expected {expected}, got {type(value).__name__}", field=where)
    return value


def _float_array(value: Any, path: Path, where: str) -> np.ndarray:
    """``value`` (numpy, nested lists or a torch tensor) as a float32 array, or a DataError."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor (release pickles)
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(
            path, f"expected an array of numbers, got {type(value).__name__}", field=where
        ) from None


def _histogram(names: tuple[str, ...], counts: np.ndarray) -> dict[str, int]:
    return {name: int(c) for name, c in zip(names, counts, strict=True) if c}


def easg_model_inputs(dataset: Any) -> dict[str, int]:
    """Constructor arguments an EASG dataset fixes: feature widths and vocabulary sizes.

    Args:
        dataset: an :class:`~m3sgg.data.easg.EASG` read with features (its ``vocab`` and samples).

    Returns:
        ``{"object_dim", "verb_dim", "num_verbs", "num_objects", "num_relations"}``.

    Raises:
        DataError: the dataset is empty or has no features.
    """
    where = getattr(dataset, "root", "EASG dataset")
    if len(dataset) == 0:
        raise DataError(where, "no graphs: cannot read the feature widths")
    sample = dataset[0]
    if sample.obj_features is None or sample.verb_feature is None:
        raise DataError(where, "the dataset was read without features", field="features")
    verbs, objects, relations = dataset.vocab
    return {
        "object_dim": int(sample.obj_features.shape[-1]),
        "verb_dim": int(sample.verb_feature.shape[-1]),
        "num_verbs": len(verbs),
        "num_objects": len(objects),
        "num_relations": len(relations),
    }

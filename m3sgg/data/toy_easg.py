"""A small EASG dataset in exactly the release's on-disk formats, with learnable features.

:func:`make_toy_easg` writes both views of the same annotations (see :mod:`m3sgg.data.easg`)::

    <out>/README.txt
    <out>/EASG_unict_master_final.json       master view, both splits
    <out>/verbs.txt objects.txt relationships.txt
    <out>/easg_{train,val}.pkl               SGG view
    <out>/roi_feats_{train,val}.pkl          float32 (k, 1024) per box
    <out>/verb_features.pt                   float32 (2304,) per annotation

The vocabularies are a subset of the real ones (20 verbs, 40 objects including the case pair
``TABLE``/``table``, the 13 edges), written sorted in plain ASCII order like the release. The
master JSON carries every quirk the reader handles (instance suffixes, unknown object names,
duplicate triplets, multi-label objects, verb-node spelling variants, graphs without triplets or
without known objects, absent/empty frame types, grounded names outside the triplets, ungrounded
objects, annotations sharing one PNR frame with different or equal verbs); the SGG files are what
the release's conversion makes of it (suffixes stripped, unknown objects dropped, duplicates kept).

**Signal.** Each object class and verb has a random prototype; a RoI feature is its class
prototype plus Gaussian noise (one draw per instance and frame), a verb feature its verb prototype
plus noise. Edges are a fixed function of (verb, object class): the best of
``verb_pref[v] + obj_pref[o]`` (``dobj`` favoured), plus the runner-up when it is close, so they are
predictable from the pair of features. Everything is drawn from ``seed``: files are byte-identical
for equal arguments.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from m3sgg.data.easg import FRAME_TYPES, MASTER_JSON_NAMES, ROI_FEATURE_DIM, VERB_FEATURE_DIM
from m3sgg.data.easg import strip_instance as _strip
from m3sgg.errors import ConfigError, DataError
from m3sgg.vocab import EASG_RELATIONS

__all__ = ["TOY_OBJECTS", "TOY_VERBS", "make_toy_easg"]

TOY_VERBS: tuple[str, ...] = (
    "add", "clean", "close", "cut", "dip", "drop", "fold", "hold", "lift", "mix",
    "open", "peel", "place", "pour", "press", "pull", "put", "remove", "take", "wash",
)  # fmt: skip
TOY_OBJECTS: tuple[str, ...] = (
    "TABLE", "apple", "bag", "board", "bottle", "bowl", "box", "brush", "bucket", "cabinet",
    "carrot", "cloth", "container", "cup", "cutting_board", "door", "dough", "drawer", "faucet",
    "flour", "fork", "glass", "jar", "knife", "lid", "mug", "onion", "pan", "paper", "phone",
    "plate", "pot", "rag", "scissors", "sink", "soap", "spoon", "sponge", "table", "towel",
)  # fmt: skip
#: Names the master JSON uses that are not in objects.txt (their triplets are dropped).
OOV_OBJECTS: tuple[str, ...] = ("gadget", "hand", "thingamajig")

_ROI_NOISE = 1.0
_VERB_NOISE = 1.0
_SECOND_EDGE_GAP = 0.6  # the runner-up edge joins when its score is this close to the best
_PICKLE_PROTOCOL = 4


def make_toy_easg(
    out_dir: str | os.PathLike[str],
    *,
    clips: int | None = 16,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the toy EASG dataset to ``out_dir`` and return its path.

    Args:
        out_dir: target folder (created if missing).
        clips: number of clips (``None``: 16), at least 2; the last quarter (at least one) is val.
            Each clip holds 3-8 annotated graphs, plus occasional quirk-only graphs.
        seed: every random draw comes from it; equal arguments give byte-identical files.
        overwrite: replace the toy's files in an existing non-empty folder (others are kept).

    Raises:
        ConfigError: ``clips`` is not an int >= 2.
        DataError: ``out_dir`` is a file, or a non-empty folder and ``overwrite`` is false.

    Example::

        root = make_toy_easg("/tmp/easg_toy", clips=8)
        ds = EASG(root, "train")
    """
    if clips is None:
        clips = 16
    if isinstance(clips, bool) or not isinstance(clips, int) or clips < 2:
        raise ConfigError(f"toy EASG needs clips >= 2 (one per split at least), got {clips!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(
            out, "folder is not empty; pass overwrite=True (--overwrite) to replace the toy files"
        )
    out.mkdir(parents=True, exist_ok=True)

    streams = np.random.SeedSequence(seed).spawn(3)
    world = _World(np.random.default_rng(streams[0]))
    graphs = _make_graphs(np.random.default_rng(streams[1]), world, clips)
    feat_rng = np.random.default_rng(streams[2])

    master: dict[str, Any] = {}
    for g in graphs:
        clip = master.setdefault(
            g["clip"], {"split": g["split"], "W": g["W"], "H": g["H"], "graphs": []}
        )
        clip["graphs"].append(
            {key: g[key] for key in ("graph_uid", "pre", "pnr", "post", "triplets", "groundings")}
        )
    sgg: dict[str, dict] = {"train": {}, "val": {}}
    roi: dict[str, dict] = {"train": {}, "val": {}}
    verb_feats: dict[str, np.ndarray] = {}
    for g in graphs:
        verb_feats[g["graph_uid"]] = world.verb_proto[TOY_VERBS.index(g["verb"])] + _VERB_NOISE * (
            feat_rng.standard_normal(VERB_FEATURE_DIM, dtype=np.float32)
        )
        entries, feats = _sgg_entries(g, world, feat_rng)
        if not entries:
            continue  # the release's conversion keeps only graphs with known objects
        key = f"{g['clip']}_{g['pnr']:06d}"
        record = sgg[g["split"]].setdefault(key, {
            "annotations": {},
            "clip_frame_number": {ft: g[ft] for ft in FRAME_TYPES},
        })  # fmt: skip
        record["annotations"][g["graph_uid"]] = entries
        roi[g["split"]].setdefault(key, {})[g["graph_uid"]] = feats

    for name, labels in (
        ("verbs.txt", TOY_VERBS),
        ("objects.txt", TOY_OBJECTS),
        ("relationships.txt", EASG_RELATIONS),
    ):
        (out / name).write_text("".join(f"{s}\n" for s in sorted(labels)), encoding="utf-8")
    (out / MASTER_JSON_NAMES[0]).write_text(json.dumps(master), encoding="utf-8")
    for split in ("train", "val"):
        (out / f"easg_{split}.pkl").write_bytes(pickle.dumps(sgg[split], _PICKLE_PROTOCOL))
        (out / f"roi_feats_{split}.pkl").write_bytes(pickle.dumps(roi[split], _PICKLE_PROTOCOL))
    (out / "verb_features.pt").write_bytes(_torch_bytes(verb_feats))
    (out / "README.txt").write_text(_readme(clips, seed, graphs, sgg), encoding="utf-8")
    return out


class _World:
    """Prototypes and the (verb, object) → edges grammar, drawn once per seed."""

    def __init__(self, rng: np.random.Generator):
        nv, no, nr = len(TOY_VERBS), len(TOY_OBJECTS), len(EASG_RELATIONS)
        self.verb_proto = rng.standard_normal((nv, VERB_FEATURE_DIM), dtype=np.float32)
        self.obj_proto = rng.standard_normal((no, ROI_FEATURE_DIM), dtype=np.float32)
        # long-tailed label frequencies, as in the release (so frequent pairs recur)
        self.verb_p = _zipf(rng, nv)
        self.obj_p = _zipf(rng, no)
        score = rng.standard_normal((nv, 1, nr)) + rng.standard_normal((1, no, nr))
        score[..., EASG_RELATIONS.index("dobj")] += 1.0
        order = np.argsort(-score, axis=-1, kind="stable")
        best = np.take_along_axis(score, order[..., :2], axis=-1)
        self.first = order[..., 0]
        self.second = np.where(best[..., 0] - best[..., 1] < _SECOND_EDGE_GAP, order[..., 1], -1)

    def edges(self, verb: str, obj: str) -> list[str]:
        v, o = TOY_VERBS.index(verb), TOY_OBJECTS.index(obj)
        out = [EASG_RELATIONS[self.first[v, o]]]
        if self.second[v, o] >= 0:
            out.append(EASG_RELATIONS[self.second[v, o]])
        return out


def _zipf(rng: np.random.Generator, n: int) -> np.ndarray:
    """Probabilities ``∝ 1 / rank`` over the labels in a random rank order."""
    weights = 1.0 / (1.0 + rng.permutation(n))
    return weights / weights.sum()


def _hex(rng: np.random.Generator, nbytes: int) -> str:
    return rng.bytes(nbytes).hex()


def _clip_uuid(rng: np.random.Generator) -> str:
    h = _hex(rng, 16)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _pixel_box(rng: np.random.Generator, width: int, height: int) -> dict[str, float]:
    w = round(float(rng.uniform(0.08, 0.4)) * width, 1)
    h = round(float(rng.uniform(0.08, 0.4)) * height, 1)
    return {
        "left": round(float(rng.uniform(0, width - w)), 1),
        "top": round(float(rng.uniform(0, height - h)), 1),
        "width": w,
        "height": h,
    }


def _make_graphs(rng: np.random.Generator, world: _World, clips: int) -> list[dict]:
    """Master-JSON graphs with their clip fields; quirks on fixed positions so all occur."""
    n_val = max(1, clips // 4)
    graphs: list[dict] = []
    g = 0  # global counter of ordinary graphs: quirks cycle with it
    for c in range(clips):
        clip = {"clip": _clip_uuid(rng), "split": "val" if c >= clips - n_val else "train"}
        clip["W"], clip["H"] = [(1920, 1080), (1440, 1080)][int(rng.integers(2))]
        share = "split" if c % 4 == 1 else "merge" if c % 6 == 5 else None
        n_graphs = int(rng.integers(3, 9))
        for j in range(n_graphs):
            verb = TOY_VERBS[int(rng.choice(len(TOY_VERBS), p=world.verb_p))]
            pnr = int(rng.integers(60, 9000))
            frames = {
                "pre": pnr - int(rng.integers(5, 40)),
                "pnr": pnr,
                "post": pnr + int(rng.integers(5, 40)),
            }
            if share and j == 1:  # a second annotation on the first one's PNR frame
                prev = graphs[-1]
                frames = {ft: prev[ft] for ft in FRAME_TYPES}
                if share == "merge":
                    verb = prev["verb"]
                else:
                    verb = TOY_VERBS[(TOY_VERBS.index(prev["verb"]) + 1) % len(TOY_VERBS)]
            graphs.append(_graph(rng, world, clip, verb, frames, g))
            g += 1
        if c % 5 == 2:  # an annotation without triplets
            graphs.append(_bare_graph(rng, clip, {"triplets": [], "groundings": {}}))
        if c % 7 == 3:  # a verb whose objects are all unknown
            verb = TOY_VERBS[int(rng.integers(len(TOY_VERBS)))]
            triplets = [["CW", "verb", verb], [verb, "dobj", f"{OOV_OBJECTS[0]}:1"]]
            box = _pixel_box(rng, clip["W"], clip["H"])
            graphs.append(_bare_graph(rng, clip, {
                "verb": verb, "triplets": triplets,
                "groundings": {"pnr": {f"{OOV_OBJECTS[0]}:1": box}},
            }))  # fmt: skip
    return graphs


def _bare_graph(rng: np.random.Generator, clip: dict, fields: dict) -> dict:
    pnr = int(rng.integers(60, 9000))
    graph = {
        **clip,
        "graph_uid": _hex(rng, 32),
        "verb": TOY_VERBS[0],
        "pre": pnr - 10,
        "pnr": pnr,
        "post": pnr + 10,
    }
    graph.update(fields)
    return graph


def _graph(
    rng: np.random.Generator, world: _World, clip: dict, verb: str, frames: dict[str, int], g: int
) -> dict:
    """One ordinary annotation, with the quirks assigned to position ``g``."""
    width, height = clip["W"], clip["H"]
    n_obj = int(rng.integers(1, 4))
    picks = rng.choice(len(TOY_OBJECTS), n_obj, replace=False, p=world.obj_p)
    classes = [TOY_OBJECTS[int(i)] for i in picks]
    if g < 2:  # both spellings of the case pair occur in the data
        case = ("TABLE", "table")[g]
        if case not in classes:
            classes[0] = case
    instances = [f"{name}:1" if g % 2 == 0 else name for name in classes]
    if g % 5 == 1:  # two instances of one class
        instances[0:1] = [f"{classes[0]}:1", f"{classes[0]}:2"]
    verb_node = verb
    if g % 3 == 1:  # the verb node spelled differently from the verb
        verb_node = (f"{verb}s", verb.capitalize(), f"{verb}ing")[(g // 3) % 3]
    triplets = [["CW", "verb", verb]]
    for raw in instances:
        triplets.extend([verb_node, edge, raw] for edge in world.edges(verb, _strip(raw)))
    if g % 4 == 1:  # an object name outside objects.txt
        oov = f"{OOV_OBJECTS[g % len(OOV_OBJECTS)]}:1"
        triplets.insert(int(rng.integers(1, len(triplets) + 1)), [verb_node, "with", oov])
    if g % 3 == 0:  # a triplet repeated verbatim
        triplets.append(list(triplets[1]))
    grounded = [t[2] for t in triplets[1:]]
    grounded = list(dict.fromkeys(grounded))
    if g % 5 == 3:  # a triplet object grounded nowhere
        grounded.remove(instances[0])
    groundings: dict[str, dict] = {ft: {} for ft in FRAME_TYPES}
    for raw in grounded:
        for ft in FRAME_TYPES:
            if rng.random() < 0.8:
                groundings[ft][raw] = _pixel_box(rng, width, height)
    if g % 2 == 1:  # grounded names that are no triplet object (one known class, one unknown)
        extra = [n for n in TOY_OBJECTS if n not in classes][int(rng.integers(30))]
        groundings["pnr"][f"{extra}:3"] = _pixel_box(rng, width, height)
        groundings["pre"]["hand"] = _pixel_box(rng, width, height)
    if g % 3 == 2:  # a frame type absent
        del groundings["post"]
    if g % 4 == 3:  # a frame type empty
        groundings["pre"] = {}
    return {
        **clip,
        "graph_uid": _hex(rng, 32),
        "verb": verb,
        **frames,
        "triplets": triplets,
        "groundings": groundings,
    }


def _sgg_entries(graph: dict, world: _World, rng: np.random.Generator) -> tuple[list, list]:
    """The SGG-format entries of one annotation and the aligned RoI features."""
    width, height = graph["W"], graph["H"]
    scale = np.array([width, height, width, height], dtype=np.float64)
    instance_feats: dict[tuple[str, str], np.ndarray] = {}
    entries, feats = [], []
    for _node, edge, raw in graph["triplets"][1:]:
        name = _strip(raw)
        if name not in TOY_OBJECTS:
            continue
        bbox, feat = {}, {}
        for ft in FRAME_TYPES:
            box = graph["groundings"].get(ft, {}).get(raw)
            if box is None:
                continue
            xywh = np.array([box["left"], box["top"], box["width"], box["height"]], np.float64)
            bbox[ft] = (xywh / scale).astype(np.float32)[None]
            if (raw, ft) not in instance_feats:
                noise = rng.standard_normal((1, ROI_FEATURE_DIM), dtype=np.float32)
                instance_feats[raw, ft] = world.obj_proto[TOY_OBJECTS.index(name)] + (
                    _ROI_NOISE * noise
                )
            feat[ft] = instance_feats[raw, ft]
        entries.append({"obj": name, "bbox": bbox, "verb": graph["verb"], "rel": edge})
        feats.append(feat)
    return entries, feats


def _torch_bytes(table: dict[str, np.ndarray]) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in table.items()}, buffer)
    return buffer.getvalue()


def _readme(clips: int, seed: int, graphs: list[dict], sgg: dict[str, dict]) -> str:
    n_train = sum(g["split"] == "train" for g in graphs)
    return f"""Toy EASG dataset written by m3sgg (m3sgg.data.toy_easg), seed {seed}, {clips} clips.

Both views of the EASG release, in its exact formats (see m3sgg.data.easg):
  {MASTER_JSON_NAMES[0]}   master view: {len(graphs)} annotations ({n_train} train)
  verbs.txt objects.txt relationships.txt   vocabularies (sorted, plain ASCII order)
  easg_train.pkl / easg_val.pkl   SGG view: {len(sgg["train"])} / {len(sgg["val"])} PNR keys
  roi_feats_<split>.pkl           float32 (k, {ROI_FEATURE_DIM}) RoI features per box
  verb_features.pt                float32 ({VERB_FEATURE_DIM},) clip feature per annotation

Vocabularies are a subset: {len(TOY_VERBS)} verbs, {len(TOY_OBJECTS)} objects (TABLE and table are
two classes), the {len(EASG_RELATIONS)} EASG edges. The master JSON exercises the release's quirks:
instance suffixes ":k", unknown object names ({", ".join(OOV_OBJECTS)}), duplicate triplets,
objects with two edges, verb nodes spelled differently from the verb, graphs without triplets or
without known objects, absent or empty frame types, grounded names outside the triplets, ungrounded
objects, and annotations sharing one PNR frame (same verb: merged; other verb: split).

Features carry signal: RoI feature = object-class prototype + noise, verb feature = verb prototype
+ noise, edges = a fixed function of (verb, object class). Frames (images) are not written.

Read:          m3sgg inspect-data --dataset easg --data-path <this folder> --split val
Regenerate:    m3sgg toy-data <out> --dataset easg --seed {seed} --videos {clips} --overwrite
"""

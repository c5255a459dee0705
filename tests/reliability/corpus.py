"""The malformed-input corpus: broken copies of real files, generated at test time.

Each :class:`Case` writes one malformed file (an annotation pickle, a class list, a feature-store
file, a config, a checkpoint) into its own folder, starting from a correct file made by m3sgg
itself (the toy datasets, the reference run's checkpoint), and says which CLI invocations read it,
which file and field the error line must name, and which run folder must stay byte-identical.

The cases are listed in :data:`CASES`; ``python -m tests.reliability.corpus OUT`` is not needed:
the test module builds them in a temporary folder (see ``test_malformed_inputs.py``).
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from m3sgg.config import load_config
from m3sgg.data.action_genome import ActionGenome
from m3sgg.data.safe_pickle import load_pickle
from m3sgg.engine.builders import save_resolved_config

__all__ = ["CASES", "Case", "Corpus", "Invocation"]

OBJECTS = "annotations/object_bbox_and_relationship.pkl"
PERSONS = "annotations/person_bbox.pkl"


@dataclass
class Invocation:
    """What a case checks: every command in ``commands`` must fail with one line on stderr that
    names ``file`` and ``field`` (``None``: the whole file is unreadable), exit code 2, and leave
    ``guard`` (a run folder) byte-identical."""

    commands: list[list[str]]
    file: Path
    field: str | None
    guard: Path


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # annotations | features | easg | config | checkpoint
    make: Callable[[Corpus, Path], Invocation]
    #: why it is expected to fail for now (a bug outside the files these tests may fix)
    xfail: str | None = None


@dataclass
class Corpus:
    """The correct inputs the cases start from.

    Attributes:
        root: where the cases write their files (one folder per case).
        ag: the toy Action Genome dataset (with its feature store); never modified.
        easg: the toy EASG dataset; never modified.
        config: the config file of the runs (``RUN_SETTINGS`` without plugins).
        run: a finished run made with ``config`` (the reference run's files), never modified.
        d64: a checkpoint of the same model with ``proj_dim=16`` (other weight shapes).
        other_model: a checkpoint of the EASG model ``easg_fc``.
    """

    root: Path
    ag: Path
    easg: Path
    config: Path
    run: Path
    d64: Path
    other_model: Path
    copies: dict[str, Path] = field(default_factory=dict)

    # -- helpers -----------------------------------------------------------------------------

    def ag_copy(self, folder: Path) -> Path:
        target = folder / "ag"
        shutil.copytree(self.ag, target)
        return target

    def easg_copy(self, folder: Path) -> Path:
        target = folder / "easg"
        shutil.copytree(self.easg, target)
        return target

    def run_copy(self, folder: Path, name: str = "existing") -> Path:
        """A copy of the finished run, with the ``config.yaml`` that ``m3sgg train --config
        <config> --output <folder> --name <name>`` writes (what it would hold had it run there).

        The copy of a run made with the test plugin (the reference run) has the plugin removed
        from its checkpoints' saved configs, so ``m3sgg evaluate`` runs in this process too."""
        target = folder / name
        shutil.copytree(self.run, target)
        overrides = [f"run.output={json.dumps(str(folder))}", f"run.name={json.dumps(name)}"]
        save_resolved_config(load_config(self.config, overrides), target)
        for path in (target / "checkpoints").glob("*.pt"):
            ckpt = _load(path)
            if ckpt["config"].get("plugins"):
                ckpt["config"]["plugins"] = []
                torch.save(ckpt, path)
        return target

    def resume_args(self, run: Path, *more: str) -> list[str]:
        """``m3sgg train`` continuing ``run`` with ``--resume auto``."""
        return [
            "train",
            "--config",
            str(self.config),
            "--output",
            str(run.parent),
            "--name",
            run.name,
            "--resume",
            "auto",
            *more,
        ]


# ------------------------------------------------------------------------------------ pickles


def _first_frame(objects: dict[str, Any]) -> str:
    """The first frame key (sorted) whose first object is visible."""
    return next(k for k in sorted(objects) if objects[k] and objects[k][0]["visible"])


def _dump(path: Path, data: Any) -> None:
    path.write_bytes(pickle.dumps(data, protocol=4))


def annotation_case(
    name: str, field: str | None, mutate: Callable[[dict, dict, str], Any], target: str = OBJECTS
) -> Case:
    """``mutate(objects, persons, key)`` edits the two pickles' data in place (``key``: the first
    frame with a visible first object); the error must name ``target`` and ``field`` (in which
    ``{key}`` stands for ``repr(key)``). Returning :class:`Replace` replaces the target's data."""

    def make(corpus: Corpus, folder: Path) -> Invocation:
        ag = corpus.ag_copy(folder)
        data = {OBJECTS: load_pickle(ag / OBJECTS), PERSONS: load_pickle(ag / PERSONS)}
        key = _first_frame(data[OBJECTS])
        replacement = mutate(data[OBJECTS], data[PERSONS], key)
        if isinstance(replacement, Replace):
            data[target] = replacement.value
        for relative, value in data.items():
            _dump(ag / relative, value)
        where = field.format(key=repr(key)) if field else None
        return ag_invocation(corpus, ag, ag / target, where)

    return Case(name, "annotations", make)


def ag_invocation(corpus: Corpus, ag: Path, file: Path, where: str | None) -> Invocation:
    """``inspect-data`` on the broken dataset, and resuming the finished run on it."""
    return Invocation(
        [
            ["inspect-data", "--data-path", str(ag)],
            corpus.resume_args(corpus.run, "--data-path", str(ag)),
        ],
        file,
        where,
        corpus.run,
    )


def file_case(name: str, relative: str, write: Callable[[Path], None], where: str | None) -> Case:
    """Replace one annotation file of the AG copy with ``write(path)``'s content."""

    def make(corpus: Corpus, folder: Path) -> Invocation:
        ag = corpus.ag_copy(folder)
        write(ag / relative)
        return ag_invocation(corpus, ag, ag / relative, where)

    return Case(name, "annotations", make)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _replace_line(n: int, text: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        lines = path.read_text().splitlines()
        lines[n - 1] = text
        path.write_text("\n".join(lines) + "\n")

    return write


def _keep_lines(n: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text("\n".join(path.read_text().splitlines()[:n]) + "\n")

    return write


@dataclass(frozen=True)
class Replace:
    """What an annotation mutation returns to replace a pickle's whole content."""

    value: Any


def _object(**changes: Any) -> Callable[[dict, dict, str], None]:
    """Set fields of the first object of the frame (a value of ``DROP`` deletes the field)."""

    def mutate(objects: dict, persons: dict, key: str) -> None:
        obj = objects[key][0]
        for name, value in changes.items():
            if value is DROP:
                del obj[name]
            else:
                obj[name] = value

    return mutate


def _person_box(box: Any) -> Callable[[dict, dict, str], None]:
    def mutate(objects: dict, persons: dict, key: str) -> None:
        persons[key]["bbox"] = np.asarray(box, np.float32)

    return mutate


DROP = object()
OBJ = "frame {key} object 0"

ANNOTATION_CASES = [
    annotation_case(
        "objects-top-level-list", "top level", lambda o, p, k: Replace(list(o.values()))
    ),
    annotation_case("persons-top-level-list", "top level", lambda o, p, k: Replace([p]), PERSONS),
    annotation_case("frame-key-not-a-string", "frame 123", lambda o, p, k: o.update({123: []})),
    annotation_case(
        "frame-objects-not-a-list", "frame {key}", lambda o, p, k: o.update({k: dict(o[k][0])})
    ),
    annotation_case("object-not-a-dict", OBJ, lambda o, p, k: o[k].__setitem__(0, ["bag"])),
    annotation_case("object-missing-visible", f"{OBJ} visible", _object(visible=DROP)),
    annotation_case("object-missing-class", f"{OBJ} class", _object(**{"class": DROP})),
    annotation_case(
        "object-missing-attention",
        f"{OBJ} attention_relationship",
        _object(attention_relationship=DROP),
    ),
    annotation_case(
        "relationship-not-a-list",
        f"{OBJ} spatial_relationship",
        _object(spatial_relationship="beneath"),
    ),
    annotation_case("unknown-object-class", f"{OBJ} class", _object(**{"class": "unicorn"})),
    annotation_case("person-as-object-class", f"{OBJ} class", _object(**{"class": "person"})),
    annotation_case(
        "unknown-predicate",
        f"{OBJ} contacting_relationship",
        _object(contacting_relationship=["levitating"]),
    ),
    annotation_case(
        "predicate-of-another-group",
        f"{OBJ} attention_relationship",
        _object(attention_relationship=["holding"]),
    ),
    annotation_case("negative-box-width", f"{OBJ} bbox", _object(bbox=(10.0, 20.0, -5.0, 30.0))),
    annotation_case("nan-box", f"{OBJ} bbox", _object(bbox=(math.nan, 20.0, 5.0, 30.0))),
    annotation_case("infinite-box", f"{OBJ} bbox", _object(bbox=(1.0, 2.0, math.inf, 3.0))),
    annotation_case("box-with-three-numbers", f"{OBJ} bbox", _object(bbox=(1.0, 2.0, 3.0))),
    annotation_case("box-as-text", f"{OBJ} bbox", _object(bbox="10,20,30,40")),
    annotation_case("visible-object-without-box", f"{OBJ} bbox", _object(bbox=None)),
    annotation_case("missing-metadata", f"{OBJ} metadata", _object(metadata=DROP)),
    annotation_case(
        "unknown-split", f"{OBJ} metadata.set", _object(metadata={"tag": "", "set": "validation"})
    ),
    annotation_case("person-frame-missing", "frame {key}", lambda o, p, k: p.pop(k), PERSONS),
    annotation_case(
        "person-entry-without-bbox", "frame {key}", lambda o, p, k: p[k].pop("bbox"), PERSONS
    ),
    annotation_case(
        "person-box-inverted", "frame {key} bbox", _person_box([[100, 10, 50, 200]]), PERSONS
    ),
    annotation_case(
        "person-box-nan", "frame {key} bbox", _person_box([[math.nan, 10, 50, 200]]), PERSONS
    ),
    annotation_case(
        "person-box-three-columns", "frame {key} bbox", _person_box(np.zeros((1, 3))), PERSONS
    ),
    file_case("objects-truncated", OBJECTS, _truncate, "pickle"),
    file_case("persons-truncated", PERSONS, _truncate, "pickle"),
    file_case("objects-garbage", OBJECTS, _garbage, "pickle"),
    file_case("objects-empty", OBJECTS, _empty, "pickle"),
    file_case(
        "object-classes-wrong-name",
        "annotations/object_classes.txt",
        _replace_line(5, "bookshelf"),
        "line 5",
    ),
    file_case(
        "relationship-classes-short",
        "annotations/relationship_classes.txt",
        _keep_lines(20),
        "line 21",
    ),
    file_case(
        "object-classes-not-text",
        "annotations/object_classes.txt",
        lambda path: path.write_bytes(b"\xff\xfe\x00bag\n\xc3\x28\n"),
        None,
    ),
]


# ------------------------------------------------------------------------------- feature store


def feature_case(
    name: str,
    edit: Callable[[Path], None],
    file: str,
    field: str | None,
    xfail: str | None = None,
) -> Case:
    """``edit(store)`` breaks the copy's feature store; the error must name ``file`` (relative to
    the store) and ``field``. Read by ``m3sgg train`` resuming the finished run on the copy."""

    def make(corpus: Corpus, folder: Path) -> Invocation:
        ag = corpus.ag_copy(folder)
        edit(ag / "features")
        return Invocation(
            [corpus.resume_args(corpus.run, "--data-path", str(ag))],
            ag / "features" / file,
            field,
            corpus.run,
        )

    return Case(name, "features", make, xfail)


def _manifest(change: Callable[[dict], Any]) -> Callable[[Path], None]:
    def edit(store: Path) -> None:
        path = store / "manifest.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data, indent=2))

    return edit


def _array(relative: str, dtype: str, change: Callable[[np.ndarray], None]):
    def edit(store: Path) -> None:
        path = store / relative
        array = np.fromfile(path, dtype=dtype)
        change(array)
        array.tofile(path)

    return edit


def _swap_offsets(array: np.ndarray) -> None:
    array[1], array[2] = array[2] + 1, array[1]


FEATURE_CASES = [
    feature_case(
        "store-wrong-object-dim",
        _manifest(lambda m: m.update(object_dim=32)),
        "gt/box_features.bin",
        "shape",
    ),
    feature_case(
        "store-wrong-frame-count",
        _manifest(lambda m: m.update(num_frames=m["num_frames"] - 1)),
        "frames.json",
        "length",
    ),
    feature_case(
        "store-features-truncated",
        lambda store: _truncate(store / "gt" / "box_features.bin"),
        "gt/box_features.bin",
        "shape",
    ),
    feature_case(
        "store-wrong-dtype",
        _manifest(lambda m: m.update(dtype="float64")),
        "manifest.json",
        "dtype",
    ),
    feature_case(
        "store-file-not-listed",
        _manifest(lambda m: m["files"].pop("gt/pairs.bin")),
        "manifest.json",
        "files['gt/pairs.bin']",
    ),
    feature_case(
        "store-manifest-not-json",
        lambda store: (store / "manifest.json").write_text('{"format": "m3sgg-features/1",'),
        "manifest.json",
        None,
    ),
    feature_case(
        "store-offsets-decrease",
        _array("gt/box_offsets.bin", "<i8", _swap_offsets),
        "gt/box_offsets.bin",
        "[2]",
    ),
    feature_case(
        "store-pair-index-out-of-range",
        _array("gt/pairs.bin", "<i8", lambda a: a.__setitem__(1, 999)),
        "gt/pairs.bin",
        "[0, 1]",
    ),
]


def _kept_frame(ag: Path, min_objects: int) -> str:
    """A frame the reader keeps in the train split, with at least ``min_objects`` objects."""
    dataset = ActionGenome(ag, "train")
    for index in range(len(dataset)):
        gt = dataset.video_gt(index)
        counts = np.bincount(gt.obj_frame, minlength=gt.num_frames)
        for frame, count in enumerate(counts.tolist()):
            if count >= min_objects:
                return gt.frame_keys[frame]
    raise AssertionError(f"no kept frame with {min_objects} objects in {ag}")


def _store_frame_missing_case(corpus: Corpus, folder: Path) -> Invocation:
    """The store lacks a frame the annotations keep (its key is renamed in frames.json)."""
    ag = corpus.ag_copy(folder)
    key = _kept_frame(ag, 1)
    path = ag / "features" / "frames.json"
    path.write_text(path.read_text().replace(json.dumps(key), json.dumps("ZZZZZ.mp4/000001.png")))
    return Invocation(
        [corpus.resume_args(corpus.run, "--data-path", str(ag))],
        ag / "features",
        repr(key),
        corpus.run,
    )


def _store_box_count_case(corpus: Corpus, folder: Path) -> Invocation:
    """The annotations hide one of a frame's two visible objects: the store has a box too many."""
    ag = corpus.ag_copy(folder)
    key = _kept_frame(ag, 2)
    objects = load_pickle(ag / OBJECTS)
    j = next(j for j, obj in enumerate(objects[key]) if obj["visible"])
    objects[key][j] = dict(
        objects[key][j],
        visible=False,
        bbox=None,
        attention_relationship=None,
        spatial_relationship=None,
        contacting_relationship=None,
    )
    _dump(ag / OBJECTS, objects)
    return Invocation(
        [corpus.resume_args(corpus.run, "--data-path", str(ag))],
        ag / "features",
        f"frame {key!r}",
        corpus.run,
    )


def _store_checksum_case(corpus: Corpus, folder: Path) -> Invocation:
    """One flipped byte in the features: sizes and offsets are fine, only the sha256 differs."""
    ag = corpus.ag_copy(folder)
    path = ag / "features" / "gt" / "box_features.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    return Invocation([["inspect-data", "--data-path", str(ag)]], path, "sha256", corpus.run)


FEATURE_CASES += [
    Case("store-frame-missing", "features", _store_frame_missing_case),
    Case("store-box-count-differs", "features", _store_box_count_case),
    Case(
        "store-checksum-mismatch",
        "features",
        _store_checksum_case,
    ),
]


# ---------------------------------------------------------------------------------------- EASG


def easg_case(
    name: str, relative: str, edit: Callable[[Any], str | None], *, pickle_file: bool = True
) -> Case:
    """Edit one EASG file (a pickle's data, or a text file's lines) and inspect the copy."""

    def make(corpus: Corpus, folder: Path) -> Invocation:
        root = corpus.easg_copy(folder)
        path = root / relative
        if pickle_file:
            data = load_pickle(path)
            where = edit(data)
            _dump(path, data)
        else:
            lines = path.read_text().splitlines()
            where = edit(lines)
            path.write_text("\n".join(lines) + "\n")
        return Invocation(
            [["inspect-data", "--dataset", "easg", "--data-path", str(root)]],
            path,
            where,
            corpus.run,
        )

    return Case(name, "easg", make)


def _easg_entries(data: dict) -> tuple[str, list[dict]]:
    """The first graph's first annotation: its field prefix and its entry list."""
    key = sorted(data)[0]
    annotations = data[key]["annotations"]
    aid = sorted(annotations)[0]
    return f"graph {key!r} annotations[{aid!r}]", annotations[aid]


def _easg_unknown_verb(data: dict) -> str:
    where, entries = _easg_entries(data)
    entries[0]["verb"] = "teleport"
    return f"{where}[0] verb"


def _easg_negative_box(data: dict) -> str:
    where, entries = _easg_entries(data)
    i = next(i for i, e in enumerate(entries) if e["bbox"])
    frame = sorted(entries[i]["bbox"])[0]
    entries[i]["bbox"][frame] = np.array([[0.1, 0.1, -0.2, 0.3]], np.float32)
    return f"{where}[{i}] bbox"


def _easg_entry_not_dict(data: dict) -> str:
    where, entries = _easg_entries(data)
    entries[0] = "apple"
    return f"{where}[0]"


EASG_CASES = [
    easg_case("easg-unknown-verb", "easg_train.pkl", _easg_unknown_verb),
    easg_case("easg-negative-box", "easg_train.pkl", _easg_negative_box),
    easg_case("easg-entry-not-a-dict", "easg_train.pkl", _easg_entry_not_dict),
    easg_case(
        "easg-empty-verb-line",
        "verbs.txt",
        lambda lines: (lines.insert(2, ""), "line 3")[1],
        pickle_file=False,
    ),
]


def _easg_truncated_case(corpus: Corpus, folder: Path) -> Invocation:
    root = corpus.easg_copy(folder)
    path = root / "easg_train.pkl"
    _truncate(path)
    return Invocation(
        [["inspect-data", "--dataset", "easg", "--data-path", str(root)]],
        path,
        "pickle",
        corpus.run,
    )


EASG_CASES.append(Case("easg-truncated", "easg", _easg_truncated_case))


# ------------------------------------------------------------------------------------- configs


def config_case(
    name: str, text: str, where: str | None, suffix: str = ".yaml", xfail: str | None = None
) -> Case:
    """A config file holding ``text``, given to ``m3sgg train`` resuming the finished run."""

    def make(corpus: Corpus, folder: Path) -> Invocation:
        path = folder / f"config{suffix}"
        path.write_text(text)
        command = corpus.resume_args(corpus.run)
        command[command.index("--config") + 1] = str(path)
        return Invocation([command], path, where, corpus.run)

    return Case(name, "config", make, xfail)


CONFIG_CASES = [
    config_case("config-lr-not-a-number", "optim:\n  lr: fast\n", "optim.lr"),
    config_case("config-unknown-key", "optim:\n  learning_rate: 0.001\n", "optim.learning_rate"),
    config_case("config-unknown-section", "trainer:\n  epochs: 2\n", "trainer"),
    config_case("config-epochs-fraction", "train:\n  epochs: 2.5\n", "train.epochs"),
    config_case("config-bool-as-text", "data:\n  filter_small_boxes: maybe\n", "filter_small"),
    config_case("config-ks-not-a-list", "eval:\n  ks: 20\n", "eval.ks"),
    config_case("config-options-not-a-mapping", "model:\n  options: [1, 2]\n", "model.options"),
    config_case("config-top-level-list", "- optim\n- train\n", "top level"),
    config_case("config-section-not-a-mapping", "optim: 0.001\n", "optim"),
    config_case("config-invalid-yaml", "optim:\n  lr: [1e-3\ntrain: {}\n", None),
    config_case("config-toml-wrong-type", '[train]\nepochs = "two"\n', "train.epochs", ".toml"),
    config_case("config-invalid-toml", "[train\nepochs = 2\n", None, ".toml"),
    config_case("config-unknown-format", "optim.lr = 0.1\n", None, ".ini"),
    config_case(
        "config-batch-zero",
        "data:\n  videos_per_batch: 0\n",
        "data.videos_per_batch",
    ),
]


# --------------------------------------------------------------------------------- checkpoints


def checkpoint_case(
    name: str,
    write: Callable[[Corpus, Path], None],
    where: str | None,
    *,
    evaluate: bool = True,
    train: bool = True,
    xfail: str | None = None,
) -> Case:
    """``write(corpus, path)`` puts a broken ``last.pt`` into a copy of the finished run; it is
    resumed (``--resume auto``), given to ``--resume PATH`` of a new run, and evaluated."""

    def make(corpus: Corpus, folder: Path) -> Invocation:
        run = corpus.run_copy(folder)
        path = run / "checkpoints" / "last.pt"
        write(corpus, path)
        commands = []
        if train:
            commands.append(corpus.resume_args(run))
            other = corpus.resume_args(folder / "other")
            other[other.index("auto")] = str(path)
            commands.append(other)
        if evaluate:
            commands.append(["evaluate", "--checkpoint", str(path)])
        return Invocation(commands, path, where, run)

    return Case(name, "checkpoint", make, xfail)


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _resave(change: Callable[[Corpus, dict], Any]) -> Callable[[Corpus, Path], None]:
    """Edit the checkpoint's dict in place (returning :class:`Replace` replaces all of it)."""

    def write(corpus: Corpus, path: Path) -> None:
        ckpt = _load(path)
        result = change(corpus, ckpt)
        torch.save(result.value if isinstance(result, Replace) else ckpt, path)

    return write


def _copy_from(attribute: str) -> Callable[[Corpus, Path], None]:
    def write(corpus: Corpus, path: Path) -> None:
        shutil.copyfile(getattr(corpus, attribute), path)

    return write


def _drop_one_weight(corpus: Corpus, ckpt: dict) -> None:
    ckpt["model"].pop(sorted(ckpt["model"])[0])


def _shapes_with_own_config(corpus: Corpus, ckpt: dict) -> Replace:
    """The proj_dim=16 weights under this run's config (proj_dim=32): shapes that do not fit."""
    other = _load(corpus.d64)
    other["config"] = ckpt["config"]
    return Replace(other)


def _config_with_bad_lr(corpus: Corpus, ckpt: dict) -> None:
    ckpt["config"]["optim"]["lr"] = "fast"


CHECKPOINT_CASES = [
    checkpoint_case("checkpoint-truncated", lambda c, p: _truncate(p), None),
    checkpoint_case("checkpoint-empty", lambda c, p: _empty(p), None),
    checkpoint_case("checkpoint-garbage", lambda c, p: _garbage(p), None),
    checkpoint_case(
        "checkpoint-plain-state-dict",
        _resave(lambda c, ckpt: Replace({"state_dict": ckpt["model"]})),
        "format",
    ),
    checkpoint_case(
        "checkpoint-future-format",
        _resave(lambda c, ckpt: ckpt.update(format="m3sgg-checkpoint/2")),
        "format",
    ),
    checkpoint_case(
        "checkpoint-of-another-model", _copy_from("other_model"), "manifest.model", evaluate=False
    ),
    checkpoint_case(
        "checkpoint-other-shapes", _copy_from("d64"), "model", evaluate=False
    ),  # evaluate builds the proj_dim=16 model the file describes: nothing wrong there
    checkpoint_case(
        "checkpoint-shapes-unlike-its-config", _resave(_shapes_with_own_config), "model"
    ),
    checkpoint_case("checkpoint-missing-weight", _resave(_drop_one_weight), "model"),
    checkpoint_case(
        "checkpoint-without-config",
        _resave(lambda c, ckpt: ckpt.pop("config")),
        "config",
        train=False,
    ),
    checkpoint_case(
        "checkpoint-config-wrong-type",
        _resave(_config_with_bad_lr),
        "optim.lr",
        train=False,
    ),
    checkpoint_case(
        "checkpoint-without-optimizer",
        _resave(lambda c, ckpt: ckpt.pop("optimizer")),
        "optimizer",
        evaluate=False,
    ),
    checkpoint_case(
        "checkpoint-weights-not-a-dict",
        _resave(lambda c, ckpt: ckpt.update(model=[1, 2, 3])),
        "model",
    ),
]


CASES: list[Case] = [
    *ANNOTATION_CASES,
    *FEATURE_CASES,
    *EASG_CASES,
    *CONFIG_CASES,
    *CHECKPOINT_CASES,
]


def corpus_settings(settings: dict[str, Any]) -> str:
    """The YAML of the corpus runs' config: the reliability settings without plugins (the test
    plugins need the repository on ``sys.path``, which the in-process CLI calls do not assume)."""
    return yaml.safe_dump({k: v for k, v in settings.items() if k != "plugins"}, sort_keys=False)

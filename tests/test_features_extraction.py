"""``m3sgg extract-features`` (m3sgg/detection/extraction.py) on the toy dataset's frames."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from m3sgg.cli import main
from m3sgg.data.action_genome import ActionGenome
from m3sgg.data.features import FeatureStore
from m3sgg.data.toy import make_toy_action_genome
from m3sgg.detection.cli import register_commands
from m3sgg.detection.extraction import (
    BUILTIN_STRIDE,
    builtin_backbone,
    class_color,
    extract_features,
    load_backbone,
    read_detections,
    write_toy_frames,
)
from m3sgg.errors import ConfigError, DataError
from m3sgg.vocab import NUM_AG_CLASSES

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = (96, 64)

CUSTOM_BACKBONES = '''
import torch
from torch import nn


class Patchify(nn.Module):
    """4x4 patches -> 16 channels; declares its stride."""

    stride = 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 16, 4, stride=4)

    def forward(self, x):
        return torch.relu(self.conv(x))


PATCHIFY = Patchify()


def make_plain():
    """A factory; the module has no stride attribute (stride 2)."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 8, 2, stride=2))


def make_tuple():
    class TwoMaps(nn.Module):
        stride = 2

        def forward(self, x):
            return (x[:, :, ::2, ::2], x)

    return TwoMaps()


NOT_A_MODULE = 42
'''


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-video toy Action Genome with 96x64 frame images."""
    root = make_toy_action_genome(tmp_path_factory.mktemp("ag") / "ag", videos=12, seed=0)
    write_toy_frames(root, seed=0, size=SIZE)
    return root


@pytest.fixture(scope="module")
def store(toy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in backbone's float32 store of both splits."""
    out = tmp_path_factory.mktemp("stores") / "builtin"
    extract_features(toy_root, out, dtype="float32")
    return out


@pytest.fixture
def fresh_root(toy_root: Path, tmp_path: Path) -> Path:
    """A private copy of the toy dataset's annotations and frames (safe to damage)."""
    root = tmp_path / "ag"
    shutil.copytree(toy_root / "annotations", root / "annotations")
    shutil.copytree(toy_root / "frames", root / "frames")
    return root


@pytest.fixture
def backbones_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module of test backbones; returns its name."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "fx_backbones.py").write_text(CUSTOM_BACKBONES)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("fx_backbones", None)
    return "fx_backbones"


def _frame_classes(sample) -> np.ndarray:
    """Class of every gt-section row of a sample: per frame the person (1), then its objects."""
    gt = sample.gt
    offsets = gt.object_offsets()
    labels: list[int] = []
    for f in range(gt.num_frames):
        labels += [1, *gt.obj_class[offsets[f] : offsets[f + 1]].tolist()]
    return np.asarray(labels)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


# ----------------------------------------------------------------------------------------------
# The store and the reader


def test_reader_accepts_the_store(toy_root: Path, store: Path) -> None:
    fs = FeatureStore(store)
    assert (fs.object_dim, fs.union_channels, fs.union_size, fs.dtype) == (256, 256, 7, "float32")
    assert not fs.has_detections
    for split in ("train", "test"):
        ds = ActionGenome(toy_root, split, features=store)
        assert len(ds) > 0
        for sample in ds:
            feats, gt = sample.features, sample.gt
            offsets = gt.object_offsets()
            expected = np.concatenate(
                [
                    np.concatenate([gt.person_boxes[f : f + 1], gt.obj_boxes[a:b]])
                    for f, (a, b) in enumerate(itertools.pairwise(offsets))
                ]
            )
            np.testing.assert_allclose(feats.boxes[:, 1:], expected, atol=1e-4)
            assert feats.box_features.shape == (feats.num_boxes, 256)
            assert feats.num_pairs == gt.num_objects
            # pairs are (person of the frame, object of the frame)
            person_rows = feats.pair_idx[:, 0]
            assert (feats.boxes[person_rows, 0] == feats.im_idx).all()
            assert (_frame_classes(sample)[person_rows] == 1).all()
            assert np.isfinite(feats.union_maps).all()
            assert feats.union_maps.shape == (feats.union_offsets[-1], 256, 7, 7)


def test_store_holds_exactly_the_kept_frames(toy_root: Path, store: Path) -> None:
    kept = (
        ActionGenome(toy_root, "train").frame_keys() + ActionGenome(toy_root, "test").frame_keys()
    )
    assert sorted(FeatureStore(store).keys) == sorted(kept)


def test_object_features_predict_the_class(toy_root: Path, store: Path) -> None:
    """Nearest class centroid, leaving each video out: far above the majority class."""
    feats, labels, videos = [], [], []
    for split in ("train", "test"):
        for sample in ActionGenome(toy_root, split, features=store):
            feats.append(sample.features.box_features)
            labels.append(_frame_classes(sample))
            videos += [sample.video_id] * sample.features.num_boxes
    x, y, v = np.concatenate(feats), np.concatenate(labels), np.asarray(videos)
    hits = total = 0
    for video in np.unique(v):
        train = v != video
        test = (v == video) & (y != 1)
        classes = np.unique(y[train])
        centroids = np.stack([x[train & (y == c)].mean(axis=0) for c in classes])
        test &= np.isin(y, classes)
        if not test.any():
            continue
        distances = ((x[test, None, :] - centroids[None]) ** 2).sum(axis=-1)
        hits += int((classes[distances.argmin(axis=1)] == y[test]).sum())
        total += int(test.sum())
    objects = y[y != 1]
    majority = np.bincount(objects).max() / len(objects)
    accuracy = hits / total
    assert total >= 50
    assert accuracy > max(0.5, 2 * majority), (accuracy, majority)


def test_union_features_differ_from_object_features(toy_root: Path, store: Path) -> None:
    sample = ActionGenome(toy_root, "train", features=store)[0]
    feats = sample.features
    # The first union row of each frame is (person, first object): not the object's feature.
    first = feats.union_maps[feats.union_offsets[:-1]].mean(axis=(2, 3))
    objects = feats.box_features[np.cumsum(feats.box_counts()) - feats.box_counts() + 1]
    assert not np.allclose(first, objects, atol=1e-3)


def test_float16_default_matches_float32_and_batching_does_not_matter(
    toy_root: Path, store: Path, tmp_path: Path
) -> None:
    result = extract_features(
        toy_root, tmp_path / "f16", splits=["train"], batch_frames=1, workers=0
    )
    assert result.object_dim == 256
    f16, f32 = FeatureStore(tmp_path / "f16"), FeatureStore(store)
    assert f16.dtype == "float16"
    for key in f16.keys:
        a, b = f16.frame(key), f32.frame(key)
        np.testing.assert_allclose(a.box_features, b.box_features, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(
            a.union_maps.astype(np.float32), b.union_maps, rtol=2e-3, atol=2e-3
        )
        np.testing.assert_array_equal(a.pairs, b.pairs)
    assert result.frames == len(f16) == len(ActionGenome(toy_root, "train").frame_keys())


def test_full_size_frames_give_the_same_boxes(toy_root: Path, tmp_path: Path) -> None:
    """Images at the annotated size (no scaling) are read as well; boxes stay in annotation px."""
    root = tmp_path / "ag"
    shutil.copytree(toy_root / "annotations", root / "annotations")
    write_toy_frames(root, seed=0)
    result = extract_features(root, tmp_path / "full", splits=["test"], dtype="float32")
    ds = ActionGenome(root, "test", features=tmp_path / "full")
    assert result.frames == len(ds.frame_keys())
    sample = ds[0]
    np.testing.assert_allclose(sample.features.boxes[0, 1:], sample.gt.person_boxes[0], atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Backbones


def test_builtin_backbone_is_seeded_and_has_stride_8() -> None:
    torch.manual_seed(123)
    a = builtin_backbone()
    torch.manual_seed(456)
    b = builtin_backbone()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a[0].weight, builtin_backbone(seed=1)[0].weight)
    assert a(torch.zeros(2, 3, 64, 96)).shape == (2, 256, 8, 12)
    assert a.stride == BUILTIN_STRIDE == 8 and a.out_channels == 256
    assert builtin_backbone(widths=(4, 4, 4, 12))(torch.zeros(1, 3, 17, 9)).shape == (1, 12, 3, 2)


def test_custom_backbone_instance_and_factory(
    toy_root: Path, tmp_path: Path, backbones_module: str
) -> None:
    result = extract_features(
        toy_root, tmp_path / "patch", backbone=f"{backbones_module}:PATCHIFY", splits=["test"]
    )
    assert (result.object_dim, result.union_channels) == (16, 16)
    ActionGenome(toy_root, "test", features=tmp_path / "patch")

    result = extract_features(
        toy_root,
        tmp_path / "plain",
        backbone=f"{backbones_module}:make_plain",
        stride=2,
        splits=["test"],
    )
    assert FeatureStore(tmp_path / "plain").object_dim == result.object_dim == 8

    module = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)  # its stride attribute is (2, 2)
    result = extract_features(toy_root, tmp_path / "instance", backbone=module, splits=["test"])
    assert result.object_dim == 4


def test_backbone_errors_are_one_line_config_errors(
    toy_root: Path, tmp_path: Path, backbones_module: str
) -> None:
    cases = {
        "no_such_module_m3sgg_xyz:thing": "failed to import",
        "just_a_name": "expected 'builtin' or 'module:attr'",
        f"{backbones_module}:missing": "has no 'missing'",
        f"{backbones_module}:NOT_A_MODULE": "not a torch.nn.Module",
    }
    for spec, words in cases.items():
        with pytest.raises(ConfigError) as err:
            load_backbone(spec)
        assert words in _one_line(err)
    out = tmp_path / "never"
    with pytest.raises(ConfigError) as err:  # no stride attribute and no stride=
        extract_features(toy_root, out, backbone=f"{backbones_module}:make_plain")
    assert "--stride" in _one_line(err)
    with pytest.raises(ConfigError) as err:  # the wrong stride is caught at the first batch
        extract_features(toy_root, out, backbone=f"{backbones_module}:PATCHIFY", stride=16)
    assert "does not fit stride 16" in _one_line(err)
    with pytest.raises(ConfigError) as err:
        extract_features(toy_root, out, backbone=f"{backbones_module}:make_tuple")
    assert "returned a tuple" in _one_line(err)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


# ----------------------------------------------------------------------------------------------
# Bad inputs


def test_missing_frames_folder(toy_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "ag"
    shutil.copytree(toy_root / "annotations", root / "annotations")
    with pytest.raises(DataError) as err:
        extract_features(root, tmp_path / "out")
    assert "frames folder not found" in _one_line(err)
    assert str(root / "frames") in str(err.value)


def test_unreadable_image(fresh_root: Path, tmp_path: Path) -> None:
    key = ActionGenome(fresh_root, "train").frame_keys()[3]
    (fresh_root / "frames" / key).write_bytes(b"not a png at all")
    with pytest.raises(DataError) as err:
        extract_features(fresh_root, tmp_path / "out")
    message = _one_line(err)
    assert str(fresh_root / "frames" / key) in message and "cannot read image" in message
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ag"]  # no temporary store left behind


def test_missing_image_is_an_error_unless_skipped(fresh_root: Path, tmp_path: Path) -> None:
    keys = ActionGenome(fresh_root, "train").frame_keys()
    (fresh_root / "frames" / keys[0]).unlink()
    with pytest.raises(DataError) as err:
        extract_features(fresh_root, tmp_path / "out", splits=["train"])
    assert "frame image not found" in _one_line(err)
    result = extract_features(
        fresh_root, tmp_path / "out", splits=["train"], skip_missing_frames=True
    )
    store = FeatureStore(tmp_path / "out")
    assert keys[0] not in store and result.frames == len(store) < len(keys)
    ds = ActionGenome(fresh_root, "train", require_frames=True, features=tmp_path / "out")
    assert keys[0] not in ds.frame_keys()
    ds[0]


def test_existing_output_is_refused_unless_overwrite(toy_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    extract_features(toy_root, out, splits=["test"])
    stamp = (out / "manifest.json").read_text()
    with pytest.raises(DataError) as err:
        extract_features(toy_root, out, splits=["test"])
    assert "already exists" in _one_line(err) and "--overwrite" in str(err.value)
    assert (out / "manifest.json").read_text() == stamp
    result = extract_features(toy_root, out, splits=["test"], overwrite=True, dtype="float32")
    assert FeatureStore(out).dtype == "float32" and result.frames == len(FeatureStore(out))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"dtype": "float64"}, "dtype must be one of"),
        ({"device": "tpu:0"}, "not a torch device"),
        ({"splits": ["val"]}, "splits must be"),
        ({"batch_frames": 0}, "batch_frames must be a positive int"),
        ({"stride": -1}, "must be a positive number"),
    ],
)
def test_bad_arguments(toy_root: Path, tmp_path: Path, kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        extract_features(toy_root, tmp_path / "out", **kwargs)
    assert words in _one_line(err)


# ----------------------------------------------------------------------------------------------
# Detections (sgdet)


def _toy_detections(root: Path) -> dict[str, dict]:
    """The toy store's own detections, reversed so the person is no longer first."""
    toy = FeatureStore(root / "features")
    frames = {}
    for key in toy.keys:
        f = toy.frame(key, "det")
        rows = np.arange(len(f.boxes))[::-1]
        frames[key] = {
            "boxes": f.boxes[rows].tolist(),
            "scores": f.scores[rows].tolist(),
            # the file holds 37 classes (background first); the store keeps classes 1..36
            "class_dists": np.c_[np.zeros(len(rows)), f.class_dists][rows].tolist(),
        }
    return frames


def test_detections_from_json(toy_root: Path, tmp_path: Path) -> None:
    frames = _toy_detections(toy_root)
    kept = ActionGenome(toy_root, "test").frame_keys()
    frames[kept[0]] = {"boxes": [], "scores": [], "class_dists": []}  # nothing detected
    path = tmp_path / "dets.json"
    path.write_text(json.dumps({"frames": frames}))
    out = tmp_path / "store"
    result = extract_features(toy_root, out, splits=["test"], detections=path)
    store = FeatureStore(out)
    assert store.has_detections and store.num_classes == NUM_AG_CLASSES
    boxes = pairs = 0
    for key in kept:
        det = store.frame(key, "det")
        given = frames[key]
        assert len(det.boxes) == len(given["boxes"])
        boxes += len(det.boxes)
        if key == kept[0]:
            assert len(det.pairs) == 0
            continue
        dists = np.asarray(given["class_dists"])
        scores = np.asarray(given["scores"])
        is_person = dists[:, 1:].argmax(axis=1) + 1 == 1
        assert is_person.any()
        best = np.flatnonzero(is_person)[scores[is_person].argmax()]
        np.testing.assert_allclose(det.boxes[0], given["boxes"][best], atol=1e-4)
        np.testing.assert_allclose(det.scores[0], scores[best], atol=1e-6)
        expected_pairs = np.stack([np.zeros(len(det.boxes) - 1), np.arange(1, len(det.boxes))], 1)
        np.testing.assert_array_equal(det.pairs, expected_pairs)
        assert det.box_features.shape == (len(det.boxes), 256)
        pairs += len(det.pairs)
    assert (result.det_boxes, result.det_pairs) == (boxes, pairs)
    sample = ActionGenome(toy_root, "test", features=out)[0]
    assert sample.det is not None and sample.det.class_dists.shape[1] == NUM_AG_CLASSES - 1
    np.testing.assert_allclose(sample.det.class_dists.sum(axis=1), 1.0, rtol=1e-5)


def test_detections_from_npz_with_labels(toy_root: Path, tmp_path: Path) -> None:
    kept = ActionGenome(toy_root, "test").frame_keys()
    frames = _toy_detections(toy_root)
    keys = kept
    boxes = [np.asarray(frames[k]["boxes"], np.float32).reshape(-1, 4) for k in keys]
    labels = [np.asarray(frames[k]["class_dists"])[:, 1:].argmax(axis=1) + 1 for k in keys]
    scores = [np.asarray(frames[k]["scores"], np.float32) for k in keys]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in boxes])])
    path = tmp_path / "dets.npz"
    np.savez(
        path,
        keys=np.asarray(keys),
        box_offsets=offsets,
        boxes=np.concatenate(boxes),
        scores=np.concatenate(scores),
        labels=np.concatenate(labels),
    )
    read = read_detections(path)
    assert set(read) == set(keys)
    dists = read[keys[1]].class_dists
    assert dists.shape == (len(boxes[1]), NUM_AG_CLASSES)
    np.testing.assert_array_equal(dists.sum(axis=1), 1.0)
    result = extract_features(toy_root, tmp_path / "store", splits=["test"], detections=path)
    assert result.det_boxes == int(offsets[-1])


def test_detection_file_errors(toy_root: Path, tmp_path: Path) -> None:
    kept = ActionGenome(toy_root, "test").frame_keys()
    frames = {k: v for k, v in _toy_detections(toy_root).items() if k in kept}

    def write(name: str, data: object) -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return path

    partial = dict(frames)
    del partial[kept[2]]
    with pytest.raises(DataError) as err:
        extract_features(
            toy_root,
            tmp_path / "o",
            splits=["test"],
            detections=write("p.json", {"frames": partial}),
        )
    assert repr(kept[2]) in _one_line(err) and "no detections for 1 of the" in str(err.value)

    narrow = dict(frames)
    narrow[kept[0]] = {
        **frames[kept[0]],
        "class_dists": [[0.5, 0.5]] * len(frames[kept[0]]["boxes"]),
    }
    bad_box = dict(frames)
    bad_box[kept[1]] = {
        **frames[kept[1]],
        "boxes": [[10, 10, 5, 20]] * len(frames[kept[1]]["boxes"]),
    }
    cases = [
        (write("a.txt", "{}"), "expected .json or .npz"),
        (write("b.json", "{not json"), "cannot read JSON"),
        (write("c.json", {"x": 1}), '{"frames"'),
        (write("d.json", {"frames": narrow}), f"expected ({len(frames[kept[0]]['boxes'])}, 37)"),
        (write("e.json", {"frames": bad_box}), "is not xyxy"),
        (write("f.json", {"frames": {"v.mp4/1.png": {"boxes": []}}}), "missing field"),
        (tmp_path / "absent.json", "not found"),
        (write("g.npz", "garbage"), "cannot read npz"),
    ]
    for path, words in cases:
        with pytest.raises(DataError) as err:
            read_detections(path)
        assert words in _one_line(err), (path.name, str(err.value))
        assert str(path) in str(err.value)


# ----------------------------------------------------------------------------------------------
# Toy frames


def test_write_toy_frames_colours_encode_classes(toy_root: Path, tmp_path: Path) -> None:
    from PIL import Image

    from m3sgg.data.safe_pickle import load_pickle

    sample = ActionGenome(toy_root, "train")[0]
    gt = sample.gt
    key = gt.frame_keys[0]
    with Image.open(toy_root / "frames" / key) as image:
        assert image.size == SIZE
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    # the last object of the frame is drawn on top: its centre has its class colour
    last = int(gt.object_offsets()[1]) - 1
    x1, y1, x2, y2 = gt.obj_boxes[last]
    w, h = load_pickle(toy_root / "annotations" / "person_bbox.pkl")[key]["bbox_size"]
    scale_x, scale_y = SIZE[0] / w, SIZE[1] / h
    cx, cy = int((x1 + x2) / 2 * scale_x), int((y1 + y2) / 2 * scale_y)
    colour = np.asarray(class_color(int(gt.obj_class[last])), dtype=np.float64)
    assert np.abs(pixels[cy, cx] - colour).max() < 30  # pixel noise has std 6

    again = tmp_path / "again"
    shutil.copytree(toy_root / "annotations", again / "annotations")
    count = write_toy_frames(again, seed=0, size=SIZE)
    assert count == len(list((toy_root / "frames").rglob("*.png")))
    assert (again / "frames" / key).read_bytes() == (toy_root / "frames" / key).read_bytes()
    with pytest.raises(ValueError, match="size must be"):
        write_toy_frames(again, size=(0, 10))


def test_class_colours_are_distinct() -> None:
    colours = {class_color(c) for c in range(1, NUM_AG_CLASSES)}
    assert len(colours) == NUM_AG_CLASSES - 1


# ----------------------------------------------------------------------------------------------
# Command line


def test_cli_in_process(toy_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="m3sgg")
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            *("extract-features", "--data-path", str(toy_root), "--out", str(tmp_path / "s")),
            *(
                "--splits",
                "test",
                "--dtype",
                "float32",
                "--progress-every",
                "2",
                "--batch-frames",
                "2",
            ),
        ]
    )
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("extract-features: wrote") and len(lines) >= 3
    assert all(line.startswith("extract-features: ") for line in lines)
    assert FeatureStore(tmp_path / "s").dtype == "float32"

    rc = main(["extract-features", "--data-path", str(toy_root), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("m3sgg extract-features: error: ") and err.count("\n") == 1
    assert "already exists" in err


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_module_entry_point_subprocess(toy_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    common = ["--data-path", str(toy_root), "--out", str(out), "--splits", "test"]
    proc = _run("-m", "m3sgg", "extract-features", *common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "extract-features: wrote" in proc.stdout
    ActionGenome(toy_root, "test", features=out)
    other = ["--data-path", str(toy_root), "--out", str(tmp_path / "other")]
    proc = _run(
        "-m",
        "m3sgg",
        "extract-features",
        *other,
        "--backbone",
        "nope:x",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "failed to import" in proc.stderr


def test_m3sgg_cli_subprocess(toy_root: Path, tmp_path: Path) -> None:
    from m3sgg.cli import build_parser

    if "extract-features" not in build_parser().format_help():
        pytest.skip("not wired yet")
    out = tmp_path / "s"
    proc = _run(
        "-m",
        "m3sgg",
        "extract-features",
        "--data-path",
        str(toy_root),
        "--out",
        str(out),
        "--splits",
        "train",
        "--dtype",
        "float32",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert FeatureStore(out).dtype == "float32"
    ActionGenome(toy_root, "train", features=out)
    proc = _run(
        "-m",
        "m3sgg",
        "extract-features",
        "--data-path",
        str(tmp_path),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_importing_the_module_does_not_import_torch(tmp_path: Path) -> None:
    """The CLI imports it to build its parser; ``m3sgg --help`` must stay fast."""
    code = "import sys, m3sgg.detection.extraction; print('torch' in sys.modules)"
    proc = _run("-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"

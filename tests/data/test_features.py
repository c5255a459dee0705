"""Feature store: round trips, video gathering, memory maps, atomic writes, corruption checks."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from m3sgg.data.features import (
    FORMAT,
    UNION_DIAGONAL,
    FeatureStore,
    FeatureStoreWriter,
    FrameFeatures,
    VideoFeatures,
    union_counts,
    union_index,
    union_pairs,
)
from m3sgg.errors import DataError

OBJ, UC, SIDE, CLASSES = 8, 3, 2, 5
DIMS = {"object_dim": OBJ, "union_channels": UC, "union_size": SIDE, "num_classes": CLASSES}
ALL = ("gt", "det", "det_train")
# (boxes, pairs) per frame: includes a frame with nothing and one with boxes but no pairs.
LAYOUT = [(3, 2), (0, 0), (2, 0), (4, 5), (1, 1)]


def make_frame(
    rng: np.random.Generator, k: int, p: int, section: str = "gt", dists: bool = True
) -> FrameFeatures:
    xy = rng.uniform(0, 300, (k, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 100, (k, 2))], axis=1)
    pairs = rng.integers(0, k, (p, 2)) if k else np.zeros((0, 2), dtype=np.int64)
    extra = {}
    if dists or section != "gt":
        d = rng.random((k, CLASSES - 1))
        extra["class_dists"] = d / d.sum(1, keepdims=True)
    if section != "gt":
        extra["scores"] = rng.random(k)
    if section == "det_train":
        extra["labels"] = rng.integers(0, CLASSES, k)
        extra["pair_targets"] = rng.integers(0, 3, p)
    u = union_counts(k, UNION_DIAGONAL[section])
    return FrameFeatures(
        boxes=boxes,
        box_features=rng.standard_normal((k, OBJ)),
        pairs=pairs,
        union_maps=rng.standard_normal((u, UC, SIDE, SIDE)),
        **extra,
    )


def key(i: int) -> str:
    return f"VID{i // 3}.mp4/{i:06d}.png"


def write_store(
    path: Path, *, det: bool = False, dtype: str = "float32", seed: int = 0
) -> dict[str, dict[str, FrameFeatures]]:
    """Frames of ``LAYOUT``; with ``det`` also ``det`` (one more box) and ``det_train``."""
    rng = np.random.default_rng(seed)
    frames = {}
    with FeatureStoreWriter(path, **DIMS, sections=ALL if det else ("gt",), dtype=dtype) as writer:
        for i, (k, p) in enumerate(LAYOUT):
            sections = {"gt": make_frame(rng, k, p)}
            if det:
                sections["det"] = make_frame(rng, k + 1, p, "det")
                sections["det_train"] = make_frame(rng, k + 2, p, "det_train")
            writer.add_frame(key(i), **sections)
            frames[key(i)] = sections
    return frames


def stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """What the store returns for features written as ``values`` in ``dtype``."""
    return np.asarray(values).astype(dtype).astype(np.float32)


def assert_frame_equal(got: FrameFeatures, want: FrameFeatures, dtype: str) -> None:
    np.testing.assert_array_equal(got.boxes, np.asarray(want.boxes, dtype=np.float32))
    np.testing.assert_array_equal(got.pairs, want.pairs)
    np.testing.assert_array_equal(got.box_features, stored(want.box_features, dtype))
    np.testing.assert_array_equal(got.union_maps, np.asarray(want.union_maps).astype(dtype))
    assert got.boxes.dtype == got.box_features.dtype == np.float32
    assert got.union_maps.dtype == np.dtype(dtype) and got.pairs.dtype == np.int64
    for name in ("class_dists", "scores", "labels", "pair_targets"):
        if getattr(want, name) is None:
            assert getattr(got, name) is None, name
        else:
            wanted = np.asarray(getattr(want, name))
            if wanted.dtype.kind == "f":
                wanted = wanted.astype(np.float32)
            np.testing.assert_array_equal(getattr(got, name), wanted)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    write_store(path, det=True)
    return path


def edit_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def write_bin(path: Path, array: np.ndarray) -> None:
    path.write_bytes(np.ascontiguousarray(array).tobytes())


# -- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("det", [False, True])
def test_round_trip(tmp_path: Path, dtype: str, det: bool) -> None:
    frames = write_store(tmp_path / "s", det=det, dtype=dtype)
    store = FeatureStore(tmp_path / "s", verify=True)

    assert store.keys == tuple(frames)
    assert len(store) == len(LAYOUT) and key(0) in store and "nope" not in store
    assert (store.object_dim, store.union_channels, store.union_size) == (OBJ, UC, SIDE)
    assert store.dtype == dtype and store.num_classes == CLASSES
    assert store.has_detections is det and store.sections == (ALL if det else ("gt",))
    assert store.manifest["format"] == FORMAT
    # Union rows: k(k-1)/2 per frame of 3, 0, 2, 4, 1 boxes = 3 + 0 + 1 + 6 + 0.
    assert store.manifest["sections"]["gt"] == {
        "boxes": 10,
        "pairs": 8,
        "unions": 10,
        "union_diagonal": False,
        "class_dists": True,
    }
    if det:  # det: 4, 1, 3, 5, 2 boxes, k(k+1)/2 rows each (box with itself included)
        assert store.manifest["sections"]["det"]["unions"] == 10 + 1 + 6 + 15 + 3
    for k, sections in frames.items():
        for section, ff in sections.items():
            assert_frame_equal(store.frame(k, section), ff, dtype)
    if dtype == "float16":
        assert store.array("box_features").dtype == np.float16
        assert (tmp_path / "s" / "gt" / "box_features.bin").stat().st_size == 10 * OBJ * 2


def test_empty_store_round_trip(tmp_path: Path) -> None:
    FeatureStoreWriter(tmp_path / "s", **DIMS).close()
    store = FeatureStore(tmp_path / "s", verify=True)
    assert len(store) == 0
    video = store.video([])
    assert video.boxes.shape == (0, 5) and video.box_features.shape == (0, OBJ)
    assert video.pair_idx.shape == (0, 2) and video.union_maps.shape == (0, UC, SIDE, SIDE)


def test_union_table_order() -> None:
    """Rows enumerate (i, j) lexicographically; union_index finds them from either order."""
    frame, first, second = union_pairs(np.array([3, 0, 1]), diagonal=False)
    assert list(zip(frame, first, second, strict=True)) == [(0, 0, 1), (0, 0, 2), (0, 1, 2)]
    frame, first, second = union_pairs(np.array([3, 0, 1]), diagonal=True)
    assert list(zip(frame, first, second, strict=True)) == [
        (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 1), (0, 1, 2), (0, 2, 2), (2, 0, 0)
    ]  # fmt: skip
    # k = 4, i < j: (0,1) 0, (0,2) 1, (0,3) 2, (1,2) 3, (1,3) 4, (2,3) 5
    assert union_index(np.array([1, 3, 2]), np.array([3, 1, 0]), 4, False).tolist() == [4, 4, 1]
    # k = 4, i <= j: (0,0) 0 .. (0,3) 3, (1,1) 4, (1,2) 5, (1,3) 6, (2,2) 7, (2,3) 8, (3,3) 9
    assert union_index(np.array([3, 2, 1]), np.array([3, 1, 1]), 4, True).tolist() == [9, 5, 4]
    assert union_counts(np.array([0, 1, 2, 5]), False).tolist() == [0, 0, 1, 10]
    assert union_counts(np.array([0, 1, 2, 5]), True).tolist() == [0, 1, 3, 15]


def test_writer_accepts_integer_boxes_and_torch_tensors(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    with FeatureStoreWriter(
        tmp_path / "s", object_dim=2, union_channels=3, union_size=1, gt_class_dists=False
    ) as writer:
        writer.add_frame(
            "a/1",
            FrameFeatures(
                boxes=torch.tensor([[0, 0, 10, 10], [5, 5, 8, 9]]),
                box_features=torch.ones(2, 2),
                pairs=torch.tensor([[0, 1]]),
                union_maps=torch.zeros(1, 3, 1, 1),
            ),
        )
    frame = FeatureStore(tmp_path / "s").frame("a/1")
    np.testing.assert_array_equal(frame.boxes[1], [5, 5, 8, 9])
    np.testing.assert_array_equal(frame.pairs, [[0, 1]])


# -- video ------------------------------------------------------------------------------------


@pytest.mark.parametrize("section", ALL)
@pytest.mark.parametrize(
    "rows",
    [[0, 1, 2, 3, 4], [1, 2, 3], [4, 0, 3], [3, 1], [1], []],
    ids=["all", "consecutive", "shuffled", "gap", "empty-frame", "none"],
)
def test_video_concatenates_frames(store_path: Path, section: str, rows: list[int]) -> None:
    store = FeatureStore(store_path)
    keys = [key(r) for r in rows]
    video = store.video(keys, section)
    assert isinstance(video, VideoFeatures) and video.frame_keys == tuple(keys)

    frames = [store.frame(k, section) for k in keys]
    counts = [len(f.boxes) for f in frames]
    base = np.cumsum([0, *counts])
    assert video.num_boxes == sum(counts) and video.num_pairs == sum(len(f.pairs) for f in frames)
    for f, frame in enumerate(frames):
        own = video.boxes[:, 0] == f
        np.testing.assert_array_equal(video.boxes[own, 1:], frame.boxes)
        np.testing.assert_array_equal(video.box_features[own], frame.box_features)
        mine = video.im_idx == f
        np.testing.assert_array_equal(video.pair_idx[mine], frame.pairs + base[f])
        rows = slice(video.union_offsets[f], video.union_offsets[f + 1])
        np.testing.assert_array_equal(video.union_maps[rows], frame.union_maps)
        # Video-level indices point at boxes of the pair's own frame.
        assert (video.boxes[video.pair_idx[mine].ravel(), 0] == f).all()
        np.testing.assert_array_equal(video.class_dists[own], frame.class_dists)
        if section != "gt":
            np.testing.assert_array_equal(video.scores[own], frame.scores)
        if section == "det_train":
            np.testing.assert_array_equal(video.labels[own], frame.labels)
            np.testing.assert_array_equal(video.pair_targets[mine], frame.pair_targets)
    assert video.union_diagonal is UNION_DIAGONAL[section]
    assert video.union_offsets[-1] == len(video.union_maps)
    assert (np.diff(video.boxes[:, 0]) >= 0).all() and (np.diff(video.im_idx) >= 0).all()
    assert video.boxes.dtype == np.float32
    assert video.pair_idx.dtype == video.im_idx.dtype == np.int64
    if section == "gt":
        assert video.scores is None and video.labels is None


def test_video_float16_is_upcast(tmp_path: Path) -> None:
    frames = write_store(tmp_path / "s", dtype="float16")
    video = FeatureStore(tmp_path / "s").video([key(0), key(3)])
    want = np.concatenate([frames[key(0)]["gt"].box_features, frames[key(3)]["gt"].box_features])
    assert video.box_features.dtype == np.float32
    np.testing.assert_array_equal(video.box_features, stored(want, "float16"))


def test_video_missing_key_and_str_keys(store_path: Path) -> None:
    store = FeatureStore(store_path)
    with pytest.raises(DataError, match=r"no frame 'VID9\.mp4/x\.png'"):
        store.video([key(0), "VID9.mp4/x.png"])
    with pytest.raises(TypeError):
        store.video(key(0))


def test_det_section_of_store_without_detections(tmp_path: Path) -> None:
    write_store(tmp_path / "s")
    store = FeatureStore(tmp_path / "s")
    with pytest.raises(DataError, match=r"manifest\.json: sections\.det: .*no detections"):
        store.video([key(0)], "det")
    with pytest.raises(DataError, match=r"sections\.det_train: .*no sgdet training inputs"):
        store.video([key(0)], "det_train")
    with pytest.raises(ValueError, match="section must be one of"):
        store.frame(key(0), "pred")


# -- memory maps ------------------------------------------------------------------------------


def test_reading_is_memory_mapped_and_results_are_copies(store_path: Path) -> None:
    store = FeatureStore(store_path)
    features = store.array("box_features", "det")
    assert isinstance(features, np.memmap) and not features.flags.writeable
    assert store.array("box_features", "det") is features  # opened once
    video = store.video([key(0), key(3)], "det")
    frame = store.frame(key(0), "det")
    for result in (video.box_features, video.union_maps, video.scores, frame.box_features):
        assert not isinstance(result, np.memmap)
        assert not np.shares_memory(result, features)


def test_pickle_does_not_copy_the_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    with FeatureStoreWriter(
        tmp_path / "s", object_dim=512, union_channels=64, union_size=2, gt_class_dists=False
    ) as writer:
        for i in range(20):
            writer.add_frame(key(i), make_frame_dims(rng, 10, 20, 512))
    store = FeatureStore(tmp_path / "s")
    before = store.video([key(0)])
    data = pickle.dumps(store)
    assert len(data) < 100_000  # the features alone are (10 * 512 + 45 * 256) * 4 * 20 bytes
    clone = pickle.loads(data)
    np.testing.assert_array_equal(clone.video([key(0)]).union_maps, before.union_maps)


def make_frame_dims(rng: np.random.Generator, k: int, p: int, dim: int) -> FrameFeatures:
    return FrameFeatures(
        boxes=np.tile([0.0, 0.0, 1.0, 1.0], (k, 1)),
        box_features=rng.standard_normal((k, dim)),
        pairs=rng.integers(0, k, (p, 2)),
        union_maps=rng.standard_normal((k * (k - 1) // 2, 64, 2, 2)),
    )


# -- atomic writes ----------------------------------------------------------------------------


def test_exception_inside_with_leaves_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with (
        pytest.raises(RuntimeError, match="boom"),
        FeatureStoreWriter(tmp_path / "s", **DIMS) as writer,
    ):
        writer.add_frame(key(0), make_frame(rng, 2, 1))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_store_appears_only_at_close(tmp_path: Path) -> None:
    writer = FeatureStoreWriter(tmp_path / "s", **DIMS)
    writer.add_frame(key(0), make_frame(np.random.default_rng(0), 2, 1))
    assert not (tmp_path / "s").exists()
    assert writer.close() == tmp_path / "s"
    assert writer.close() == tmp_path / "s"  # idempotent
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # temp folder renamed, not copied
    with pytest.raises(RuntimeError, match="closed"):
        writer.add_frame(key(1), make_frame(np.random.default_rng(0), 2, 1))


def test_abort_discards(tmp_path: Path) -> None:
    writer = FeatureStoreWriter(tmp_path / "s", **DIMS)
    writer.add_frame(key(0), make_frame(np.random.default_rng(0), 2, 1))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_overwrite_rules(tmp_path: Path) -> None:
    path = tmp_path / "s"
    write_store(path, seed=0)
    with pytest.raises(DataError, match="already exists; pass overwrite=True"):
        FeatureStoreWriter(path, **DIMS)
    frames = write_store_overwrite(path)
    store = FeatureStore(path, verify=True)
    assert store.keys == ("new/1",) and store.num_classes == CLASSES
    assert_frame_equal(store.frame("new/1", "det"), frames[1], "float32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # old store removed

    not_a_store = tmp_path / "mine"
    not_a_store.mkdir()
    (not_a_store / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a feature store"):
        FeatureStoreWriter(not_a_store, **DIMS, overwrite=True)
    assert (not_a_store / "thesis.tex").read_text() == "precious"

    empty = tmp_path / "empty"
    empty.mkdir()
    FeatureStoreWriter(empty, **DIMS, overwrite=True).close()
    assert len(FeatureStore(empty)) == 0


def write_store_overwrite(path: Path) -> tuple[FrameFeatures, FrameFeatures]:
    rng = np.random.default_rng(5)
    gt, det = make_frame(rng, 2, 2), make_frame(rng, 3, 1, "det")
    with FeatureStoreWriter(path, **DIMS, sections=("gt", "det"), overwrite=True) as writer:
        writer.add_frame("new/1", gt, det)
    return gt, det


def test_target_created_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    writer = FeatureStoreWriter(tmp_path / "s", **DIMS)
    (tmp_path / "s").mkdir()
    with pytest.raises(DataError, match="already exists"):
        writer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["s"] and not any((tmp_path / "s").iterdir())


# -- corruption, reported with file and field -------------------------------------------------


def test_truncated_bin(store_path: Path) -> None:
    target = store_path / "gt" / "box_features.bin"
    target.write_bytes(target.read_bytes()[:-4])
    with pytest.raises(DataError) as err:
        FeatureStore(store_path)
    assert err.value.path == str(target) and err.value.field == "shape"
    assert "expected (10, 8) float32" in str(err.value) and "object_dim=8" in str(err.value)
    assert f"file holds {10 * OBJ * 4 - 4} bytes" in str(err.value)


def test_manifest_dim_wrong(store_path: Path) -> None:
    edit_manifest(store_path, union_channels=7)
    with pytest.raises(DataError, match=r"union_maps\.bin: shape: .*union_channels=7"):
        FeatureStore(store_path)


def test_manifest_num_classes_wrong(store_path: Path) -> None:
    edit_manifest(store_path, num_classes=CLASSES + 1)
    with pytest.raises(DataError, match=r"gt/class_dists\.bin: shape: .*num_classes=6"):
        FeatureStore(store_path)


def test_manifest_union_count_wrong(store_path: Path) -> None:
    """The union rows follow from the box offsets; a manifest disagreeing is named."""
    manifest = json.loads((store_path / "manifest.json").read_text())
    manifest["sections"]["gt"]["unions"] = 11
    manifest["files"]["gt/union_maps.bin"]["shape"][0] = 11
    manifest["files"]["gt/union_maps.bin"]["bytes"] += UC * SIDE * SIDE * 4
    (store_path / "manifest.json").write_text(json.dumps(manifest))
    target = store_path / "gt" / "union_maps.bin"
    target.write_bytes(target.read_bytes() + bytes(UC * SIDE * SIDE * 4))
    with pytest.raises(DataError, match=r"sections\.gt\.unions: expected 10 union rows"):
        FeatureStore(store_path)


def test_manifest_file_entry_wrong(store_path: Path) -> None:
    manifest = json.loads((store_path / "manifest.json").read_text())
    manifest["files"]["gt/pairs.bin"]["shape"] = [9, 2]
    (store_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest\.json: files\['gt/pairs\.bin'\]\.shape"):
        FeatureStore(store_path)
    del manifest["files"]["gt/pairs.bin"]
    (store_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest\.json: files\['gt/pairs\.bin'\]: not listed"):
        FeatureStore(store_path)


@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        ([0, 3, 2, 4, 9, 10], r"\[2\]: decreases at frame 1"),
        ([1, 3, 3, 5, 9, 10], r"\[0\]: must start at 0"),
        ([0, 3, 3, 5, 9, 9], r"\[5\]: last offset 9 != manifest sections\.gt\.boxes=10"),
    ],
    ids=["decreasing", "start", "last"],
)
def test_offsets_inconsistent(store_path: Path, offsets: list[int], message: str) -> None:
    write_bin(store_path / "gt" / "box_offsets.bin", np.array(offsets, dtype="<i8"))
    with pytest.raises(DataError, match=r"gt/box_offsets\.bin: " + message):
        FeatureStore(store_path)


def test_pair_index_out_of_range(store_path: Path) -> None:
    target = store_path / "det" / "pairs.bin"
    pairs = np.fromfile(target, dtype="<i8").reshape(-1, 2)
    pairs[0, 1] = 4  # frame 0 has 4 detections: indices 0..3
    write_bin(target, pairs)
    with pytest.raises(DataError) as err:
        FeatureStore(store_path)
    assert err.value.path == str(target) and err.value.field == "[0, 1]"
    assert f"object index 4 is outside frame 0 ('{key(0)}') with 4 boxes" in str(err.value)


def test_negative_pair_index(store_path: Path) -> None:
    target = store_path / "gt" / "pairs.bin"
    pairs = np.fromfile(target, dtype="<i8").reshape(-1, 2)
    pairs[-1, 0] = -1
    write_bin(target, pairs)
    with pytest.raises(DataError, match=r"gt/pairs\.bin: \[7, 0\]: subject index -1"):
        FeatureStore(store_path)


def test_sha256_mismatch_needs_verify(store_path: Path) -> None:
    target = store_path / "det" / "union_maps.bin"
    data = bytearray(target.read_bytes())
    data[5] ^= 0xFF
    target.write_bytes(bytes(data))
    store = FeatureStore(store_path)  # sizes still fine: only a checksum can tell
    with pytest.raises(DataError, match=r"det/union_maps\.bin: sha256: mismatch"):
        FeatureStore(store_path, verify=True)
    with pytest.raises(DataError, match="sha256"):
        store.verify()


def test_frames_json_checked(store_path: Path) -> None:
    keys = json.loads((store_path / "frames.json").read_text())
    (store_path / "frames.json").write_text(json.dumps(keys[::-1]))
    with pytest.raises(DataError, match=r"frames\.json: sha256: mismatch"):
        FeatureStore(store_path, verify=True)
    (store_path / "frames.json").write_text(json.dumps(keys[:-1]))
    with pytest.raises(DataError, match=r"frames\.json: length: holds 4 keys"):
        FeatureStore(store_path)
    (store_path / "frames.json").write_text(json.dumps([*keys[:-1], keys[0]]))
    with pytest.raises(DataError, match=r"frames\.json: \[4\]: duplicate frame key"):
        FeatureStore(store_path)


def test_missing_manifest(store_path: Path) -> None:
    (store_path / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest\.json: missing: not a feature store"):
        FeatureStore(store_path)


def test_unparsable_manifest(store_path: Path) -> None:
    (store_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"manifest\.json: cannot parse"):
        FeatureStore(store_path)


def test_missing_store(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="feature store does not exist"):
        FeatureStore(tmp_path / "nowhere")


def test_wrong_format_string(store_path: Path) -> None:
    edit_manifest(store_path, format="m3sgg-features/1")
    with pytest.raises(DataError, match=r"format: expected 'm3sgg-features/2'.*extract the feat"):
        FeatureStore(store_path)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"object_dim": 0}, "object_dim"),
        ({"dtype": "float64"}, "dtype"),
        ({"num_frames": "5"}, "num_frames"),
        ({"num_classes": None}, "num_classes"),
        ({"sections": {"det": {}}}, "sections"),
        ({"sections": {"gt": {"boxes": -1, "pairs": 8}, "det": {}}}, "sections.gt.boxes"),
        (
            {"sections": {"gt": {"boxes": 1, "pairs": 1, "unions": 0, "union_diagonal": True}}},
            "sections.gt.union_diagonal",
        ),
    ],
)
def test_manifest_fields_validated(store_path: Path, changes: dict, field: str) -> None:
    edit_manifest(store_path, **changes)
    with pytest.raises(DataError) as err:
        FeatureStore(store_path)
    assert err.value.field == field and err.value.path.endswith("manifest.json")


def test_missing_bin_file(store_path: Path) -> None:
    (store_path / "det" / "scores.bin").unlink()
    with pytest.raises(DataError, match=r"det/scores\.bin: files\['det/scores\.bin'\]: missing"):
        FeatureStore(store_path)


def test_require(store_path: Path) -> None:
    store = FeatureStore(store_path)
    store.require([key(i) for i in range(len(LAYOUT))], "annotations/frame_list.txt")
    with pytest.raises(DataError) as err:
        store.require([key(0), "X.mp4/000001.png", "X.mp4/000002.png"], "frame_list.txt")
    assert err.value.path == "frame_list.txt"
    assert f"feature store {store_path} has no frame 'X.mp4/000001.png'" in str(err.value)
    assert "2 frames missing" in str(err.value)


# -- writer validation -------------------------------------------------------------------------


def replace(ff: FrameFeatures, **changes) -> FrameFeatures:
    return FrameFeatures(**{**ff.__dict__, **changes})


@pytest.fixture
def writer(tmp_path: Path):
    with FeatureStoreWriter(tmp_path / "s", **DIMS, sections=("gt", "det"), dtype="float16") as w:
        yield w


@pytest.fixture
def gt_det() -> tuple[FrameFeatures, FrameFeatures]:
    rng = np.random.default_rng(3)
    return make_frame(rng, 3, 2), make_frame(rng, 4, 3, "det")


@pytest.mark.parametrize(
    ("section", "changes", "message"),
    [
        ("gt", {"box_features": np.zeros((3, OBJ + 1))}, r"gt\.box_features: shape \(3, 9\)"),
        ("gt", {"box_features": np.zeros((2, OBJ))}, r"gt\.box_features: shape \(2, 8\)"),
        ("det", {"union_maps": np.zeros((6, UC, SIDE, SIDE))}, r"det\.union_maps: shape \(6, "),
        ("gt", {"union_maps": np.zeros((3, UC, 1, 1))}, r"gt\.union_maps: shape \(3, 3, 1, 1\)"),
        ("gt", {"boxes": np.zeros((3, 5))}, r"gt\.boxes: shape \(3, 5\), expected \(any, 4\)"),
        ("gt", {"box_features": np.full((3, OBJ), np.nan)}, r"gt\.box_features: non-finite"),
        ("det", {"boxes": np.full((4, 4), np.inf)}, r"det\.boxes: non-finite value inf"),
        (
            "gt",
            {"union_maps": np.full((3, UC, SIDE, SIDE), 1e6)},
            r"gt\.union_maps: value 1e\+06 at \(0, 0, 0, 0\) overflows float16",
        ),
        ("gt", {"pairs": np.array([[0, 3], [1, 2]])}, r"gt\.pairs: pair 0 object index 3"),
        (
            "gt",
            {"pairs": np.array([[0.0, 1.0], [1.0, 2.0]])},
            r"gt\.pairs: dtype float64 is not integer",
        ),
        (
            "gt",
            {"box_features": np.full((3, OBJ), "a")},
            r"gt\.box_features: dtype <U1 is not real-valued",
        ),
        ("det", {"scores": None}, r"det\.scores: is required in det"),
        (
            "det",
            {"class_dists": np.full((4, CLASSES - 1), 2.0)},
            r"det\.class_dists: class probabilities must lie in \[0, 1\]",
        ),
        ("det", {"class_dists": np.full((4, CLASSES), 0.2)}, r"det\.class_dists: shape \(4, 5\)"),
        ("gt", {"scores": np.ones(3)}, r"gt\.scores: does not belong to gt"),
        ("det", {"labels": np.ones(4, int)}, r"det\.labels: does not belong to det"),
    ],
)
def test_writer_rejects_bad_arrays(writer, gt_det, section, changes, message) -> None:
    gt, det = gt_det
    if section == "gt":
        gt = replace(gt, **changes)
    else:
        det = replace(det, **changes)
    with pytest.raises(DataError, match=r"frame 'f/1' " + message):
        writer.add_frame("f/1", gt, det)


def test_writer_rejects_bad_frames(writer, gt_det) -> None:
    gt, det = gt_det
    with pytest.raises(DataError, match=r"frame 'f/1' det: det is required"):
        writer.add_frame("f/1", gt)
    with pytest.raises(DataError, match=r"frame 'f/1' det_train: det_train given but"):
        writer.add_frame("f/1", gt, det, det_train=gt)
    writer.add_frame("f/1", gt, det)
    with pytest.raises(DataError, match=r"frames: duplicate frame key 'f/1'"):
        writer.add_frame("f/1", gt, det)
    with pytest.raises(DataError, match="non-empty str"):
        writer.add_frame("", gt, det)
    with pytest.raises(TypeError, match="expected FrameFeatures"):
        writer.add_frame("f/2", {"boxes": gt.boxes}, det)


def test_writer_rejects_sections_it_does_not_have(tmp_path: Path, gt_det) -> None:
    gt, det = gt_det
    with FeatureStoreWriter(tmp_path / "s", **DIMS, gt_class_dists=False) as writer:
        with pytest.raises(DataError, match=r"det: det given but the writer's sections are"):
            writer.add_frame("f/1", replace(gt, class_dists=None), det)
        with pytest.raises(DataError, match=r"class_dists: does not belong .*gt_class_dists"):
            writer.add_frame("f/1", gt)
        writer.add_frame("f/1", replace(gt, class_dists=None))
    store = FeatureStore(tmp_path / "s")
    assert store.keys == ("f/1",) and not store.has_class_dists("gt")
    assert store.video(["f/1"]).class_dists is None


def test_det_train_rules(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    gt, train = make_frame(rng, 2, 1), make_frame(rng, 3, 2, "det_train")
    with FeatureStoreWriter(tmp_path / "s", **DIMS, sections=("gt", "det_train")) as writer:
        with pytest.raises(DataError, match=r"det_train\.labels: labels must lie in 0\.\.4"):
            writer.add_frame("f/1", gt, det_train=replace(train, labels=np.array([0, 5, 1])))
        with pytest.raises(DataError, match=r"det_train\.pair_targets: .* >= 0"):
            writer.add_frame("f/1", gt, det_train=replace(train, pair_targets=np.array([0, -1])))
        with pytest.raises(DataError, match=r"det_train\.pair_targets: is required"):
            writer.add_frame("f/1", gt, det_train=replace(train, pair_targets=None))
        writer.add_frame("f/1", gt, det_train=train)
    store = FeatureStore(tmp_path / "s", verify=True)
    assert store.sections == ("gt", "det_train") and not store.has_detections
    assert_frame_equal(store.frame("f/1", "det_train"), train, "float32")


def test_rejected_frame_writes_nothing(tmp_path: Path, gt_det) -> None:
    gt, det = gt_det
    path = tmp_path / "s"
    with FeatureStoreWriter(path, **DIMS, sections=("gt", "det")) as w:
        w.add_frame("f/1", gt, det)
        # gt is valid and checked first; the bad det must not leave gt rows behind.
        with pytest.raises(DataError):
            w.add_frame("f/2", gt, replace(det, scores=np.full(4, np.nan)))
        w.add_frame("f/3", gt, det)
    store = FeatureStore(path, verify=True)
    assert store.keys == ("f/1", "f/3")
    assert store.manifest["sections"]["gt"]["boxes"] == 6
    assert store.manifest["sections"]["gt"]["pairs"] == 4
    assert_frame_equal(store.frame("f/3"), gt, "float32")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"object_dim": 0},
        {"union_channels": 2.5},
        {"union_size": 0},
        {"num_classes": 1},
        {"sections": ("det",)},
        {"sections": ("gt", "pred")},
        {"dtype": "float64"},
        {"dtype": "nonsense"},
    ],
)
def test_writer_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    args = {**DIMS, **kwargs}
    with pytest.raises(ValueError):
        FeatureStoreWriter(tmp_path / "s", **args)
    assert list(tmp_path.iterdir()) == []

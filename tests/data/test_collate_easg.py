"""collate_easg / split_easg_predictions: layout, feature means, targets, the metric round trip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from m3sgg.data.collate_easg import EASGBatch, collate_easg, split_easg_predictions
from m3sgg.data.easg import EASG, EASGSample
from m3sgg.data.structures import GraphGT
from m3sgg.data.toy_easg import make_toy_easg
from m3sgg.errors import DataError
from m3sgg.metrics.easg import EASGRecall

OBJ_DIM = 6
VERB_DIM = 5
NUM_REL = 4


def make_sample(
    index: int, objects: list[int], grounded: list[list[bool]], *, seed: int = 0
) -> EASGSample:
    """A graph with features: ``grounded[i][t]`` says whether object ``i`` has a box in frame t."""
    rng = np.random.default_rng(seed)
    n = len(objects)
    mask = np.array(grounded, dtype=bool).reshape(n, 3)
    edges = rng.random((n, NUM_REL)) < 0.4
    edges[np.arange(n), rng.integers(0, NUM_REL, size=n)] = True
    lo = rng.uniform(0, 0.5, size=(n, 3, 2))
    boxes = np.concatenate([lo, lo + 0.3], axis=2).astype(np.float32)
    boxes[~mask] = np.nan
    feats = rng.normal(size=(n, 3, OBJ_DIM)).astype(np.float32) * mask[..., None]
    gt = GraphGT(
        graph_id=f"g{index}",
        verb=int(rng.integers(0, 7)),
        objects=np.array(objects, dtype=np.int64),
        edges=edges,
    )
    return EASGSample(
        index=index,
        gt=gt,
        clip_id=f"clip{index}",
        annotation_ids=(f"a{index}",),
        frame_numbers=np.array([10, 20, 30], dtype=np.int64),
        boxes=boxes,
        obj_features=feats,
        verb_feature=rng.normal(size=VERB_DIM).astype(np.float32),
    )


@pytest.fixture
def samples() -> list[EASGSample]:
    return [
        make_sample(0, [1, 4], [[True, True, False], [False, True, True]], seed=1),
        make_sample(
            1, [0, 2, 3], [[True, True, True], [False, False, False], [True, False, False]], seed=2
        ),
        make_sample(2, [5], [[False, True, False]], seed=3),
    ]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_easg(tmp_path_factory.mktemp("easg") / "toy", clips=8, seed=3)


def test_layout_and_targets(samples):
    batch = collate_easg(samples)
    assert isinstance(batch, EASGBatch)
    assert batch.num_graphs == len(batch) == 3
    assert batch.num_objects == 6
    assert batch.object_offsets == (0, 2, 5, 6)
    assert batch.object_counts == [2, 3, 1]
    assert batch.graph_ids == ("g0", "g1", "g2")
    assert batch.sample_indices == (0, 1, 2)
    assert all(a is b.gt for a, b in zip(batch.gts, samples, strict=True))
    assert batch.object_graph.tolist() == [0, 0, 1, 1, 1, 2]
    assert batch.verb_targets.tolist() == [s.gt.verb for s in samples]
    assert batch.object_targets.tolist() == [1, 4, 0, 2, 3, 5]
    edges = np.concatenate([s.gt.edges for s in samples]).astype(np.float32)
    np.testing.assert_array_equal(batch.edge_targets.numpy(), edges)
    np.testing.assert_array_equal(
        batch.verb_features.numpy(), np.stack([s.verb_feature for s in samples])
    )
    assert batch.verb_features.shape == (3, VERB_DIM)
    assert batch.obj_features.shape == (6, OBJ_DIM)
    assert batch.edge_targets.shape == (6, NUM_REL)
    assert batch.verb_features.dtype == batch.obj_features.dtype == torch.float32
    assert batch.edge_targets.dtype == torch.float32
    assert batch.verb_targets.dtype == batch.object_targets.dtype == torch.int64
    assert batch.object_mask.dtype == batch.grounded.dtype == torch.bool


def test_object_features_are_the_mean_over_grounded_frames(samples):
    batch = collate_easg(samples)
    rows, grounded, boxes = [], [], []
    for s in samples:
        for i in range(s.num_objects):
            mask = s.grounded[i]
            rows.append(s.obj_features[i][mask].mean(0) if mask.any() else np.zeros(OBJ_DIM))
            grounded.append(mask)
            boxes.append(np.where(mask[:, None], s.boxes[i], 0.0))
    np.testing.assert_allclose(batch.obj_features.numpy(), np.stack(rows), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(batch.grounded.numpy(), np.stack(grounded))
    assert batch.object_mask.tolist() == [True, True, True, False, True, True]
    np.testing.assert_array_equal(batch.boxes.numpy(), np.stack(boxes).astype(np.float32))
    assert not torch.isnan(batch.boxes).any()


def test_graph_without_objects():
    empty = make_sample(0, [], [])
    other = make_sample(1, [2], [[True, False, False]])
    batch = collate_easg([empty, other, empty])
    assert batch.object_offsets == (0, 0, 1, 1)
    assert batch.obj_features.shape == (1, OBJ_DIM)
    assert batch.edge_targets.shape == (1, NUM_REL)
    alone = collate_easg([empty])
    assert alone.num_objects == 0
    assert alone.obj_features.shape == (0, OBJ_DIM)
    assert alone.edge_targets.shape == (0, NUM_REL)
    pieces = split_easg_predictions(
        batch, {"rel_logits": torch.zeros(1, NUM_REL), "verb_logits": torch.zeros(3, 7)}
    )
    assert [p["rel_logits"].shape for _, p in pieces] == [(0, NUM_REL), (1, NUM_REL), (0, NUM_REL)]


def test_to_returns_a_batch_with_the_same_content(samples):
    batch = collate_easg(samples)
    moved = batch.to("cpu")
    assert isinstance(moved, EASGBatch)
    assert moved.device == torch.device("cpu")
    assert moved.gts is batch.gts and moved.object_offsets == batch.object_offsets
    for name in EASGBatch._TENSORS:
        assert torch.equal(getattr(moved, name), getattr(batch, name))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
def test_pin_memory_and_device_transfer(samples):
    batch = collate_easg(samples).pin_memory()
    assert all(getattr(batch, name).is_pinned() for name in EASGBatch._TENSORS)
    moved = batch.to("cuda")
    assert all(getattr(moved, name).is_cuda for name in EASGBatch._TENSORS)


def test_errors(samples):
    with pytest.raises(ValueError, match="at least one sample"):
        collate_easg([])
    bare = replace(samples[0], obj_features=None, verb_feature=None)
    with pytest.raises(DataError, match="no features"):
        collate_easg([samples[1], bare])
    wide = replace(samples[1], verb_feature=np.zeros(VERB_DIM + 1, dtype=np.float32))
    with pytest.raises(DataError, match="verb_feature"):
        collate_easg([samples[0], wide])
    narrow = replace(samples[1], obj_features=samples[1].obj_features[..., :3])
    with pytest.raises(DataError, match="obj_features"):
        collate_easg([samples[0], narrow])


def test_split_round_trip(samples):
    batch = collate_easg(samples)
    gen = torch.Generator().manual_seed(0)
    verb = [torch.randn(7, generator=gen) for _ in samples]
    obj = [torch.randn(s.num_objects, 8, generator=gen) for s in samples]
    rel = [torch.randn(s.num_objects, NUM_REL, generator=gen) for s in samples]
    predictions = {
        "verb_logits": torch.stack(verb).requires_grad_(),
        "obj_logits": torch.cat(obj),
        "rel_logits": torch.cat(rel),
        "extra": torch.zeros(1),
    }
    pieces = split_easg_predictions(batch, predictions)
    assert len(pieces) == 3
    for g, (gt, pred) in enumerate(pieces):
        assert gt is samples[g].gt
        assert set(pred) == {"verb_logits", "obj_logits", "rel_logits"}
        assert torch.equal(pred["verb_logits"], verb[g])
        assert torch.equal(pred["obj_logits"], obj[g])
        assert torch.equal(pred["rel_logits"], rel[g])
        assert not pred["verb_logits"].requires_grad
    only_rel = split_easg_predictions(batch, {"rel_logits": predictions["rel_logits"]})
    assert [set(p) for _, p in only_rel] == [{"rel_logits"}] * 3


def test_split_checks_rows(samples):
    batch = collate_easg(samples)
    with pytest.raises(ValueError, match="one row per object"):
        split_easg_predictions(batch, {"rel_logits": torch.zeros(5, NUM_REL)})
    with pytest.raises(ValueError, match="one row per graph"):
        split_easg_predictions(batch, {"verb_logits": torch.zeros(6, 7)})


@pytest.mark.parametrize("mode", ["edgecls", "sgcls", "easgcls"])
def test_split_output_feeds_the_metric_like_the_batch_form(samples, mode):
    batch = collate_easg(samples)
    gen = torch.Generator().manual_seed(1)
    predictions = {
        "verb_logits": torch.randn(3, 7, generator=gen),
        "obj_logits": torch.randn(6, 8, generator=gen),
        "rel_logits": torch.randn(6, NUM_REL, generator=gen),
    }
    per_graph = EASGRecall(mode, "no", per_graph=True)
    for pair in split_easg_predictions(batch, predictions):
        per_graph.update(pair)
    counts = batch.object_counts
    whole = EASGRecall(mode, "no", per_graph=True)
    whole.update(
        (
            list(batch.gts),
            {
                "verb_logits": predictions["verb_logits"],
                "obj_logits": list(predictions["obj_logits"].split(counts)),
                "rel_logits": list(predictions["rel_logits"].split(counts)),
            },
        )
    )
    assert per_graph.compute() == whole.compute()


def test_toy_dataset_in_a_dataloader(toy_root):
    dataset = EASG(toy_root, "train")
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate_easg)
    seen = []
    for batch in loader:
        assert batch.verb_features.shape[1] == dataset[0].verb_feature.shape[0]
        assert batch.obj_features.shape[1] == dataset[0].obj_features.shape[-1]
        assert batch.edge_targets.shape[1] == len(dataset.vocab.relations)
        assert torch.isfinite(batch.obj_features).all()
        for g, index in enumerate(batch.sample_indices):
            sample = dataset[index]
            lo, hi = batch.object_offsets[g], batch.object_offsets[g + 1]
            assert batch.object_targets[lo:hi].tolist() == sample.gt.objects.tolist()
            assert batch.object_mask[lo:hi].tolist() == sample.grounded.any(1).tolist()
        seen.extend(batch.sample_indices)
    assert seen == list(range(len(dataset)))

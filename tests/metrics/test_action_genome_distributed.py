"""ActionGenomeRecallSuite over two gloo processes equals one process, a video padded onto both."""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import pytest
from torch.utils.data import DistributedSampler

from m3sgg.data.structures import VideoGT
from m3sgg.metrics.action_genome import ActionGenomeRecallSuite

# 7 videos (odd: a DistributedSampler pads them to 8, so video 0 is evaluated on both ranks),
# with frames without predicted pairs and a video without any pair.
VIDEOS = [("case_010", 0), ("case_010", 1), ("case_010", 2), ("case_010", 3), ("case_003", 0),
          ("case_003", 1), ("case_004", 0)]  # fmt: skip
MODES = ("predcls", "sgdet")


def _load(vectors_dir: str) -> list[tuple[VideoGT, dict[str, dict[str, np.ndarray]]]]:
    videos = []
    for name, index in VIDEOS:
        video = json.loads(Path(vectors_dir, "ag", f"{name}.json").read_text())["videos"][index]
        frames = [
            [
                {"frame": f["frame"], "person_bbox": np.asarray(f["person_bbox"], np.float32)},
                *(dict(o, bbox=np.asarray(o["bbox"], np.float64)) for o in f["objects"]),
            ]
            for f in video["frames"]
        ]
        preds = {}
        for mode in MODES:
            raw = video["pred"][mode]
            preds[mode] = {
                "boxes": np.asarray(raw["boxes"], np.float32).reshape(-1, 5),
                "labels": np.asarray(raw["labels"], np.int64),
                "scores": np.asarray(raw["scores"], np.float32),
                "pred_labels": np.asarray(raw["pred_labels"], np.int64),
                "pred_scores": np.asarray(raw["pred_scores"], np.float32),
                "im_idx": np.asarray(raw["im_idx"], np.float32),
                "pair_idx": np.asarray(raw["pair_idx"], np.int64).reshape(-1, 2),
                "attention_distribution": np.asarray(
                    raw["attention_distribution"], np.float32
                ).reshape(-1, 3),
                "spatial_distribution": np.asarray(raw["spatial_distribution"], np.float32).reshape(
                    -1, 6
                ),
                "contacting_distribution": np.asarray(
                    raw["contacting_distribution"], np.float32
                ).reshape(-1, 17),
            }
        videos.append((VideoGT.from_sttran(frames), preds))
    return videos


def _evaluate(vectors_dir: str, indices: list[int]) -> dict[str, Any]:
    videos = _load(vectors_dir)
    results = {}
    for mode in MODES:
        suite = ActionGenomeRecallSuite(mode, ks=(5, 10, 20, 50, 100), per_video=True)
        for i in indices:
            gt, preds = videos[i]
            suite.update((gt, preds[mode]))
        results[mode] = suite.compute()
    return results


def _worker(local_rank: int, vectors_dir: str, out_dir: str) -> None:
    rank, world = idist.get_rank(), idist.get_world_size()
    sampler = DistributedSampler(range(len(VIDEOS)), num_replicas=world, rank=rank, shuffle=False)
    mine = list(sampler)  # rank 0: 0 2 4 6, rank 1: 1 3 5 0
    results = {"world_size": world, "indices": mine, **_evaluate(vectors_dir, mine)}
    if rank == 0:
        Path(out_dir, "rank0.pkl").write_bytes(pickle.dumps(results))
    # every rank computes the same numbers; rank 1 reports a digest to check that too
    Path(out_dir, f"digest{rank}.txt").write_text(repr(sorted(results["sgdet"].items())))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(vectors_dir: Path, tmp_path: Path) -> None:
    with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=_free_port()) as parallel:
        parallel.run(_worker, str(vectors_dir), str(tmp_path))

    distributed = pickle.loads((tmp_path / "rank0.pkl").read_bytes())
    assert distributed["world_size"] == 2
    assert distributed["indices"] == [0, 2, 4, 6]
    assert (tmp_path / "digest0.txt").read_text() == (tmp_path / "digest1.txt").read_text()

    single = _evaluate(str(vectors_dir), list(range(len(VIDEOS))))
    for mode in MODES:
        # exact equality: R@K, mR@K, per-predicate recall, frame counts and per-video entries
        assert distributed[mode] == single[mode], mode
        for constraint in ("with", "semi", "no"):
            per_video = distributed[mode][f"{constraint}/per_video"]
            assert len(per_video) == len(VIDEOS)  # video 0 counted once
            frames = sum(entry["frames"] for entry in per_video.values())
            assert frames == distributed[mode][f"{constraint}/frames"]
    # the duplicate really was evaluated twice before deduplication: rank 1 took index 0 too
    sampler = DistributedSampler(range(len(VIDEOS)), num_replicas=2, rank=1, shuffle=False)
    assert list(sampler) == [1, 3, 5, 0]

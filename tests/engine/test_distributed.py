"""Two gloo processes train the toy data through ``launch``/``train_worker``, like
``m3sgg train --nproc-per-node 2``: the run completes, rank 0 alone writes, the ranks agree on
weights and metrics, the sharded evaluation equals a one-process evaluation, and a run stopped by
a signal that reached one rank only resumes on every rank to the uninterrupted result, bitwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from m3sgg.config import config_to_dict, load_config
from m3sgg.data.samplers import ResumableSampler
from m3sgg.engine.builders import build_data, evaluate_checkpoint
from m3sgg.engine.checkpoint import load_checkpoint
from m3sgg.engine.distributed import (
    evaluate_worker,
    free_port,
    launch,
    launched_by_torchrun,
    train_worker,
)
from m3sgg.engine.handlers.metrics_file import jsonable, read_metrics_file

REPO = Path(__file__).resolve().parents[2]
VISIBLE_GPUS = os.environ.get("CUDA_VISIBLE_DEVICES")  # before the fixtures hide them
SMALL = [
    "run.device=cpu",  # gloo on the CPU also where GPUs exist (the nccl tests ask for them)
    "data.toy_videos=16",  # 10 training videos (5 per rank), 3 test videos (padded to 4)
    "train.epochs=2",
    "train.early_stop_patience=3",  # attached, so its counter must agree across ranks
    "log.every_iters=1000",
    "plugins=[tests.engine.distributed_probe:record]",
]
STOP_AT = 7  # iteration 2 of epoch 2 (5 iterations per epoch on each rank)
#: torch threads of each of 2 ranks, as ``launch`` sets them (and as the torchrun test asks)
RANK_THREADS = max(1, len(os.sched_getaffinity(0)) // 2)

pytestmark = pytest.mark.slow


def config(output: Path, name: str, *extra: str) -> dict[str, Any]:
    cfg = load_config(None, [*SMALL, f"run.output={output}", f"run.name={name}", *extra])
    return config_to_dict(cfg)


def train(output: Path, name: str, probe: Path, resume: str | None = None) -> dict[str, Any]:
    probe.mkdir(parents=True, exist_ok=True)
    return launch(
        train_worker,
        config(output, name),
        resume,
        nproc_per_node=2,
        backend="gloo",
        master_port=free_port(),
        resume_hint="(test)",
    )


def ranks(probe: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        json.loads((probe / "rank0.json").read_text()),
        json.loads((probe / "rank1.json").read_text()),
    )


@pytest.fixture(scope="module")
def distributed_env(toy_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """Spawned ranks import the probe plugin by name and find the toy data in the cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(REPO))  # spawned processes start with this sys.path
        mp.delenv("RANK", raising=False)
        mp.delenv("WORLD_SIZE", raising=False)
        # ignite pins each rank to cuda:<local rank> whenever CUDA is visible, even with gloo
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        yield mp


@pytest.fixture(scope="module")
def uninterrupted(distributed_env, tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("dist")
    distributed_env.setenv("M3SGG_PROBE_DIR", str(out / "probe"))
    summary = train(out / "runs", "full", out / "probe")
    return {"summary": summary, "run": out / "runs" / "full", "probe": out / "probe"}


def test_two_processes_train_rank_zero_writes_and_ranks_agree(uninterrupted):
    assert not launched_by_torchrun()
    summary, run = uninterrupted["summary"], uninterrupted["run"]
    assert summary["world_size"] == 2 and summary["exit_code"] == 0
    assert (summary["epoch"], summary["iteration"]) == (2, 10)
    assert summary["stop_reason"] is None and summary["run_dir"] == str(run)

    rank0, rank1 = ranks(uninterrupted["probe"])
    assert rank0["world_size"] == rank1["world_size"] == 2
    # identical weights and identical evaluations, LR and best-checkpoint ranking on both ranks
    assert rank0["weights"] == rank1["weights"]
    assert rank0["evaluations"] == rank1["evaluations"]
    assert len(rank0["evaluations"]) == 2
    # each epoch the two shards are disjoint and cover the 10 training videos
    for epoch in ("1", "2"):
        videos0, videos1 = rank0["videos"][epoch], rank1["videos"][epoch]
        assert len(videos0) == len(videos1) == 5
        assert not set(videos0) & set(videos1) and len(set(videos0) | set(videos1)) == 10
    # rank 0 alone writes: every checkpoint, the one metrics.jsonl (one line per evaluation)
    assert rank1["writes"] == 0 and rank0["writes"] >= 2
    assert (rank0["metrics_file"], rank1["metrics_file"]) == ("MetricsFile", "RankZeroPlaceholder")
    assert rank0["handlers"] == rank1["handlers"]  # same table: anchors work on every rank
    records = read_metrics_file(run / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [5, 10]
    assert [r["metrics"] for r in records] == [e["metrics"] for e in rank0["evaluations"]]
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == sorted(["last.pt", *(Path(p).name for p in summary["best"].values())])

    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["manifest"]["world_size"] == 2 and len(last["ranks"]) == 2
    # each rank its own random stream (seed + rank), each kept for an exact resume
    assert not torch.equal(last["ranks"][0]["rng"]["torch"], last["ranks"][1]["rng"]["torch"])
    assert set(last["ranks"][1]["handlers"]) == {"loss_tracker"}


def test_sharded_evaluation_equals_one_process(uninterrupted, distributed_env):
    """3 test videos on 2 ranks are padded to 4 (video 0 evaluated on both ranks, counted once):
    the evaluation during training and ``evaluate_worker`` on 2 processes both equal a
    one-process evaluation of the same weights, every metric key."""
    cfg = load_config(None, SMALL[:-1])
    _, _, test = build_data(cfg)
    assert len(test) == 3
    shards = [ResumableSampler(3, shuffle=False, num_replicas=2, rank=r).indices(0) for r in (0, 1)]
    assert shards == [[0, 2], [1, 0]]

    checkpoint = uninterrupted["run"] / "checkpoints" / "last.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(RANK_THREADS)  # as each spawned rank: the same float arithmetic
    try:
        single = roundtrip(evaluate_checkpoint(checkpoint, ["plugins=[]"]))
    finally:
        torch.set_num_threads(threads)
    sharded = roundtrip(
        launch(evaluate_worker, str(checkpoint), ["plugins=[]"], nproc_per_node=2, backend="gloo")
    )
    during_training = read_metrics_file(uninterrupted["run"] / "metrics.jsonl")[-1]["metrics"]
    assert set(sharded) == set(single) == set(during_training)
    assert sharded == single
    assert during_training == single
    assert single["with/frames"] > 0 and len(single["with/per_predicate"]["20"]) == 26


def roundtrip(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as ``metrics.jsonl`` holds them (tensors to lists, exact floats)."""
    return json.loads(json.dumps(jsonable(metrics), sort_keys=True))


def test_stop_on_one_rank_resumes_on_every_rank_bitwise(uninterrupted, distributed_env, tmp_path):
    """SIGTERM reaches rank 1 only, at iteration 7: both ranks stop there (the flag is agreed),
    rank 0 saves; resuming on both ranks ends exactly where the uninterrupted run ended."""
    probe = tmp_path / "probe"
    distributed_env.setenv("M3SGG_PROBE_DIR", str(probe))
    distributed_env.setenv("M3SGG_PROBE_SIGNAL_AT", str(STOP_AT))
    first = train(tmp_path / "runs", "resumed", probe)
    distributed_env.delenv("M3SGG_PROBE_SIGNAL_AT")
    assert first["iteration"] == STOP_AT
    assert first["signal"] == signal.SIGTERM and first["exit_code"] == 130
    assert f"stopped by SIGTERM at epoch 2, iteration {STOP_AT}" in first["stop_reason"]
    rank0, rank1 = ranks(probe)
    assert rank0["iteration"] == rank1["iteration"] == STOP_AT
    run = tmp_path / "runs" / "resumed"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["engine"]["iteration"] == STOP_AT

    second = train(tmp_path / "runs", "resumed", probe, resume="auto")
    assert second["exit_code"] == 0 and (second["epoch"], second["iteration"]) == (2, 10)
    rank0, rank1 = ranks(probe)
    full0, _ = ranks(uninterrupted["probe"])
    assert rank0["weights"] == rank1["weights"] == full0["weights"]

    expected = load_checkpoint(uninterrupted["run"] / "checkpoints" / "last.pt")
    actual = load_checkpoint(run / "checkpoints" / "last.pt")
    assert actual["engine"] == expected["engine"]
    for key, tensor in expected["model"].items():
        assert torch.equal(actual["model"][key], tensor), key
    assert (run / "metrics.jsonl").read_text() == (
        uninterrupted["run"] / "metrics.jsonl"
    ).read_text()


TORCHRUN_SCRIPT = """
import json, os, sys
from pathlib import Path
from m3sgg.config import config_to_dict, load_config
from m3sgg.engine.distributed import launch, launched_by_torchrun, train_worker

assert launched_by_torchrun()
summary = launch(train_worker, config_to_dict(load_config(None, sys.argv[2:])), backend="gloo")
Path(sys.argv[1], "summary" + os.environ["RANK"] + ".json").write_text(json.dumps(summary))
"""


def test_torchrun_trains_the_same_as_spawned_processes(uninterrupted, tmp_path):
    """The same worker under ``torchrun --nproc-per-node 2``: it joins torchrun's group instead
    of spawning, and trains bitwise what the spawned processes trained."""
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT)
    probe = tmp_path / "probe"
    probe.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "M3SGG_PROBE_DIR": str(probe),
        "OMP_NUM_THREADS": str(RANK_THREADS),
    }
    overrides = [*SMALL, f"run.output={tmp_path / 'runs'}", "run.name=torchrun"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    done = subprocess.run(
        [*command, "2", str(script), str(tmp_path), *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary0 = json.loads((tmp_path / "summary0.json").read_text())
    summary1 = json.loads((tmp_path / "summary1.json").read_text())
    assert summary1 is None  # launch returns rank 0's result; other ranks get None
    assert summary0["world_size"] == 2 and summary0["iteration"] == 10
    rank0, rank1 = ranks(probe)
    full0, _ = ranks(uninterrupted["probe"])
    assert rank0["weights"] == rank1["weights"] == full0["weights"]
    assert (tmp_path / "runs" / "torchrun" / "metrics.jsonl").read_text() == (
        uninterrupted["run"] / "metrics.jsonl"
    ).read_text()


def test_resume_needs_the_same_number_of_processes(uninterrupted, tmp_path):
    from m3sgg.errors import DataError

    cfg = load_config(None, [*SMALL[:-1], f"run.output={tmp_path}", "run.name=one"])
    with pytest.raises(DataError, match="written by 2 process"):
        train_worker(0, cfg, uninterrupted["run"] / "checkpoints" / "last.pt")


def test_launch_without_processes_runs_here_and_rejects_bad_backends():
    assert launch(_identity, 5) == (0, 5, 1)
    from m3sgg.errors import ConfigError

    with pytest.raises(ConfigError, match="gloo"):
        launch(_identity, 1, nproc_per_node=2, backend="mpi-typo")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="nccl"):  # not built in, or no GPU
            launch(_identity, 1, nproc_per_node=2, backend="nccl")


def test_user_error_in_a_worker_comes_back_as_one_error(distributed_env, tmp_path):
    from m3sgg.errors import M3sggError

    with pytest.raises(M3sggError, match=r"missing\.pt: checkpoint not found") as info:
        launch(_load, str(tmp_path / "missing.pt"), nproc_per_node=2, backend="gloo")
    assert info.value.exit_code == 2
    assert "Traceback" not in str(info.value)


def _load(local_rank: int, path: str) -> None:
    load_checkpoint(path)


def _identity(local_rank: int, value: int) -> tuple[int, int, int]:
    import ignite.distributed as idist

    return local_rank, value, idist.get_world_size()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nccl, bf16 autocast)")
def test_cuda_defaults_pick_nccl_bf16_pinned_memory_and_the_local_rank_device(tmp_path):
    from m3sgg.engine.distributed import default_backend
    from m3sgg.engine.trainer import Trainer, resolve_amp, resolve_device

    assert default_backend() == "nccl"
    device = resolve_device("auto")
    assert device == torch.device("cuda", 0)
    assert resolve_amp("auto", device) is torch.bfloat16
    cfg = load_config(
        None, [*SMALL[:-1], "run.device=auto", "train.epochs=1", f"run.output={tmp_path}"]
    )
    trainer = Trainer.from_config(cfg)
    assert trainer.amp_dtype is torch.bfloat16 and not trainer.scaler.is_enabled()
    assert trainer.dataloader_train.pin_memory and trainer.dataloader_test.pin_memory
    state = trainer.train_loop()
    assert state.iteration == len(trainer.dataloader_train)
    assert next(trainer.core_model.parameters()).device == device


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="needs 2 CUDA devices (nccl, one GPU per process)",
)
def test_two_nccl_processes_train_on_two_gpus(distributed_env, monkeypatch, tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    distributed_env.setenv("M3SGG_PROBE_DIR", str(probe))
    if VISIBLE_GPUS is None:  # undone after this test by its own monkeypatch
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", VISIBLE_GPUS)
    summary = launch(
        train_worker,
        config(tmp_path / "runs", "nccl", "run.device=auto"),
        nproc_per_node=2,
        backend="nccl",
        master_port=free_port(),
    )
    assert summary["world_size"] == 2 and summary["exit_code"] == 0
    rank0, rank1 = ranks(probe)
    assert rank0["weights"] == rank1["weights"]
    assert rank0["evaluations"] == rank1["evaluations"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))

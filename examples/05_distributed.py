"""Train with two processes on the CPU (gloo), then check the distributed evaluation.

    python examples/05_distributed.py                       # toy Action Genome, 2 processes
    python examples/05_distributed.py train.epochs=2 ...    # extra arguments: config overrides

``m3sgg.engine.distributed.launch(fn, *args, nproc_per_node=2)`` starts the processes and the
process group (``ignite.distributed.Parallel`` on a free port), runs ``fn(local_rank, *args)`` in
each, and returns what rank 0 returned. Inside, ``Trainer.from_config`` is all it takes:

- the model is wrapped in ``DistributedDataParallel`` (``idist.auto_model``) when the world size
  is above 1; checkpoints and the loss always see the unwrapped model;
- each process trains on its own shard of every epoch's shuffle (the resumable sampler strides by
  rank) and evaluates its shard of the test set;
- the recall metrics gather one row per video from every rank and count each video once, so the
  padding of the last shard (7 videos on 2 ranks fill 8 slots) does not count twice;
- rank 0 alone writes checkpoints and ``metrics.jsonl``.

At the end, this process evaluates the final ``last.pt`` alone with ``m3sgg.evaluate_checkpoint``
and compares every number with the distributed evaluation of the same weights: they are
identical. On GPUs the backend defaults to ``nccl``, one process per GPU.
"""

import sys
import tempfile
from pathlib import Path

import ignite.distributed as idist

from m3sgg import Trainer, evaluate_checkpoint, load_config
from m3sgg.engine.distributed import launch

NPROC = 2


def scalars(metrics: dict) -> dict:
    """The scalar results (``with/R@20``, ...; not the per-predicate lists)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


def train(local_rank: int, overrides: list[str]) -> dict:
    """Runs in every process; what rank 0 returns comes back to ``launch``'s caller."""
    trainer = Trainer.from_config(load_config(None, overrides))
    state = trainer.train_loop()
    rank, world = idist.get_rank(), idist.get_world_size()
    model = type(trainer.model).__name__
    print(f"rank {rank}/{world}: {model}, {state.epoch_length} iterations per epoch", flush=True)
    return {"metrics": scalars(state.eval_metrics), "run_dir": str(trainer.run_dir)}


def main() -> int:
    output = tempfile.mkdtemp(prefix="m3sgg-ddp-")
    overrides = [*sys.argv[1:], f"run.output={output}", "run.name=ddp"]
    result = launch(train, overrides, nproc_per_node=NPROC, backend="gloo")

    distributed = result["metrics"]
    single = scalars(evaluate_checkpoint(Path(result["run_dir"]) / "checkpoints" / "last.pt"))
    for key in ("with/R@20", "with/mR@20", "no/R@50", "no/mR@50"):
        print(f"{key:<11} {NPROC} processes {distributed[key]!r:<22} 1 process {single[key]!r}")
    identical = distributed == single
    print(
        f"distributed evaluation identical to single-process: {identical} ({len(single)} numbers)"
    )
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())

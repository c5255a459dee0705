"""A test plugin for distributed runs: what each rank saw, written to ``$M3SGG_PROBE_DIR``.

Every rank writes ``rank<r>.json`` when training completes (or stops): the videos it trained on
per epoch; every evaluation's metrics, learning rate, best-checkpoint ranking and early-stopping
state as that rank saw them; how many checkpoint files it wrote; its handler table; a digest of
its final weights.
With ``M3SGG_PROBE_SIGNAL_AT=<iteration>`` rank 1 alone sends itself SIGTERM during that
iteration (a signal reaching one rank only).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import ignite.distributed as idist
from ignite.engine import Events

import m3sgg.engine.trainer as trainer_module
from m3sgg.engine.events import M3sggEvents
from m3sgg.engine.handlers.base import FunctionHandler
from m3sgg.engine.handlers.metrics_file import jsonable


def weights_digest(state_dict) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def record(trainer) -> None:
    out = Path(os.environ["M3SGG_PROBE_DIR"])
    signal_at = int(os.environ.get("M3SGG_PROBE_SIGNAL_AT", "0"))
    rank = idist.get_rank()
    seen: dict = {"videos": {}, "evaluations": [], "writes": 0}

    original_save = trainer_module.atomic_save

    def counting_save(obj, path):
        seen["writes"] += 1
        return original_save(obj, path)

    trainer_module.atomic_save = counting_save

    def on_iteration(engine) -> None:
        epoch = str(engine.state.epoch)
        seen["videos"].setdefault(epoch, []).extend(engine.state.batch.video_ids)
        if rank == 1 and engine.state.iteration == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_evaluation(engine) -> None:
        best = trainer.handlers.get("best_checkpoint")
        stopper = trainer.handlers.get("early_stopping")
        seen["evaluations"].append(
            {
                "iteration": engine.state.iteration,
                "lr": trainer.optimizer.param_groups[0]["lr"],
                "metrics": jsonable(engine.state.eval_metrics),
                "losses": engine.state.train_losses,
                "best": {m: [list(k) for k in v] for m, v in best.kept.items()},
                "early_stopping": jsonable(dict(stopper.state_dict())),
                "terminating": engine.should_terminate,
            }
        )

    def on_done(engine) -> None:
        seen.update(
            rank=rank,
            world_size=idist.get_world_size(),
            iteration=engine.state.iteration,
            handlers=trainer.handlers.names(),
            metrics_file=type(trainer.handlers.get("metrics_file")).__name__,
            weights=weights_digest(trainer.core_model.state_dict()),
        )
        (out / f"rank{rank}.json").write_text(json.dumps(seen, sort_keys=True))

    add = trainer.handlers.add
    add(FunctionHandler(on_iteration, [Events.ITERATION_COMPLETED], "probe_iteration", priority=5))
    add(FunctionHandler(on_evaluation, [M3sggEvents.EVALUATION_COMPLETED], "probe_eval", 999))
    add(FunctionHandler(on_done, [Events.COMPLETED], "probe_done"))

"""Interrupt a run between two checkpoints, resume it, and check it ends bitwise identical.

    python examples/04_resume.py                           # toy Action Genome, about two minutes
    python examples/04_resume.py train.epochs=2 ...        # extra arguments: config overrides

Three trainers with the same config (``last.pt`` every 4 iterations):

- ``reference`` trains without interruption;
- ``interrupted`` stops abruptly between two checkpoints, as a crash or a lost node would: the
  iterations after its last ``last.pt`` are lost;
- a new trainer on the same run folder (``resume="auto"``) resumes from that ``last.pt`` (model,
  optimizer, scheduler, engine counters, handler states, sampler position, random generators)
  and trains to the end.

On the CPU the resumed run ends with the same weights, bit for bit, and the same
``metrics.jsonl``. The command line does the same with ``m3sgg train --name NAME --resume auto``.
"""

import sys
import tempfile
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from m3sgg import Trainer, load_config
from m3sgg.engine.handlers.base import FunctionHandler

EVERY = 4  # checkpoint.every_iters


def make_trainer(output: Path, name: str, resume: str | None = None) -> Trainer:
    overrides = [f"run.output={output}", f"run.name={name}", f"checkpoint.every_iters={EVERY}"]
    return Trainer.from_config(load_config(None, [*sys.argv[1:], *overrides]), resume=resume)


def main() -> int:
    output = Path(tempfile.mkdtemp(prefix="m3sgg-resume-"))
    reference = make_trainer(output, "reference")
    reference.train_loop()
    total = reference.engine.state.iteration

    crash_at = (2 * total) // 3
    crash_at += crash_at % EVERY == 0  # between two checkpoints
    interrupted = make_trainer(output, "interrupted")

    def crash(engine: Engine) -> None:
        if engine.state.iteration == crash_at:
            engine.terminate()  # no checkpoint: the work since the last one is lost

    interrupted.handlers.add(FunctionHandler(crash, [Events.ITERATION_COMPLETED], "crash", 1000))
    interrupted.train_loop()
    print(
        f"interrupted at iteration {crash_at} of {total}; last.pt holds iteration "
        f"{crash_at - crash_at % EVERY}"
    )

    # a new trainer on the same run folder: resume="auto" continues from its last.pt (without
    # it, from_config refuses a folder that already holds a run)
    resumed = make_trainer(output, "interrupted", resume="auto")
    print(f"resumed from iteration {resumed.engine.state.iteration}")
    resumed.train_loop()

    expected, actual = reference.core_model.state_dict(), resumed.core_model.state_dict()
    same_weights = all(torch.equal(expected[k], actual[k]) for k in expected)
    same_metrics = (output / "reference" / "metrics.jsonl").read_text() == (
        output / "interrupted" / "metrics.jsonl"
    ).read_text()
    print(f"weights bitwise identical: {same_weights}")
    print(f"metrics.jsonl identical: {same_metrics}")
    print(
        f"with/mR@20: reference {reference.engine.state.eval_metrics['with/mR@20']!r}, "
        f"resumed {resumed.engine.state.eval_metrics['with/mR@20']!r}"
    )
    print(f"run folders: {output}")
    return 0 if same_weights and same_metrics else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""A small hyperparameter study on the toy data: search, inspect, export the best, retrain it.

    pip install -e '.[tune]'                     # Optuna
    python examples/08_tune.py                   # 6 trials of 3 epochs, a few minutes on 2 cores
    python examples/08_tune.py train.epochs=2    # extra arguments: base config overrides

The study searches the learning rate (log-uniform) and STTran's width, prunes trials below the
median at an evaluation, and keeps its database in ``<tmp>/runs/toy-lr/study.db``. Then it prints
the ``--show`` table, exports the best trial's config and trains it again with the ordinary
Trainer: the retrained run's evaluations equal the best trial's, bit for bit. The command line
does the same with ``m3sgg tune``, ``m3sgg tune --show``, ``--export-best`` and ``m3sgg train``.
"""

import json
import sys
import tempfile
from pathlib import Path

from m3sgg import Trainer
from m3sgg.config import config_to_dict, load_config
from m3sgg.tune import TuneSettings, tune
from m3sgg.tune.report import export_best, show

SPACE = """\
optim.lr: {log_float: [1e-5, 3e-2]}
model.options.ff_dim: {choice: [64, 128]}
"""


def evaluations(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["metrics"]["with/mR@20"] for line in lines]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="m3sgg-tune-"))
    (work / "space.yaml").write_text(SPACE)
    base = load_config(None, ["train.epochs=3", *sys.argv[1:], f"run.output={work / 'runs'}"])
    settings = TuneSettings(
        study="toy-lr",
        space=str(work / "space.yaml"),
        base=config_to_dict(base),
        n_trials=6,
        pruner="median",
        seed=0,
    )
    summary = tune(settings)  # one line per finished trial
    print(f"{summary['complete']} complete, {summary['pruned']} pruned")

    import optuna

    study = optuna.load_study(study_name="toy-lr", storage=summary["storage"])
    print(show(study), end="")

    best = export_best(study, work / "best.yaml")  # what `m3sgg train --config` reads
    trainer = Trainer.from_config(load_config(best, ["run.name=retrained"]))
    trainer.train_loop()
    trial_dir = Path(study.best_trial.user_attrs["m3sgg:run_dir"])
    same = evaluations(trainer.run_dir) == evaluations(trial_dir)
    print(f"best trial {study.best_trial.number} retrained from {best}: bitwise identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

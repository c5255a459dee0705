"""Train STTran on the built-in toy Action Genome and read the results: the Python API in brief.

    python examples/01_train_toy.py                       # about a minute on 2 CPU cores
    python examples/01_train_toy.py train.epochs=1 ...    # extra arguments: config overrides

The toy dataset is written on first use into $M3SGG_CACHE (default ~/.cache/m3sgg) in the real
Action Genome on-disk format; the run folder goes under run.output (default ./runs).
"""

import logging
import sys

from m3sgg import Trainer, load_config

logging.basicConfig(format="%(message)s")  # ignite: warnings only
logging.getLogger("m3sgg").setLevel(logging.INFO)  # m3sgg: one line per log.every_iters

config = load_config(None, sys.argv[1:])  # defaults: toy AG, STTran, predcls, small widths
trainer = Trainer.from_config(config)  # data, model, optimizer, evaluator, run folder
print(trainer.describe())  # the handlers of each event, in the order they run
state = trainer.train_loop()  # evaluates after every epoch, keeps the best checkpoints

metrics = state.eval_metrics  # the last evaluation: fractions, papers print x100
for constraint in ("with", "semi", "no"):
    recall, mean_recall = metrics[f"{constraint}/R@20"], metrics[f"{constraint}/mR@20"]
    print(f"{constraint:<4} R@20 {100 * recall:5.2f}   mR@20 {100 * mean_recall:5.2f}")
best = trainer.handlers.get("best_checkpoint")
print("best with/mR@20 checkpoint:", best.best("with/mR@20"))
print("metrics of every evaluation:", trainer.run_dir / "metrics.jsonl")

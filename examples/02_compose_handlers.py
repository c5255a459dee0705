"""Compose the training loop: add handlers, move one, replace one, fire a custom event.

    python examples/02_compose_handlers.py                    # toy Action Genome, about a minute
    python examples/02_compose_handlers.py train.epochs=2 ... # extra arguments: config overrides

Every piece of a run is a named, ordered handler on an ignite engine. This script

1. registers a custom event, ``NEW_BEST``, on the train engine;
2. adds ``best_watcher`` *before* ``best_checkpoint``: after each evaluation it fires ``NEW_BEST``
   when ``with/mR@20`` beats its best so far (its state is saved in every checkpoint);
3. adds ``announce_best`` on ``NEW_BEST`` and ``loss_history`` *after* ``loss_tracker``;
4. moves ``metrics_file`` before ``lr_plateau`` (so the line it writes shows the lr the
   evaluation was made with, before the plateau scheduler changes it);
5. replaces ``console`` with a one-line-per-evaluation logger;

and prints ``trainer.describe()`` before and after.
"""

import sys

from ignite.engine import Engine, EventEnum, Events

from m3sgg import Handler, M3sggEvents, Trainer, load_config
from m3sgg.engine.handlers.base import FunctionHandler


class ExampleEvents(EventEnum):
    """Events of this script (register them on the engine before attaching handlers to them)."""

    NEW_BEST = "new_best"


class BestWatcher(Handler):
    """At EVALUATION_COMPLETED, fire NEW_BEST when ``metric`` beats its best so far.

    State: the best score (``state_dict``), so a resumed run keeps comparing with it.
    """

    name = "best_watcher"

    def __init__(self, metric: str = "with/mR@20"):
        self.metric = metric
        self.best = float("-inf")

    def events(self):
        return [M3sggEvents.EVALUATION_COMPLETED]

    def __call__(self, engine: Engine) -> None:
        score = float(engine.state.eval_metrics[self.metric])
        if score > self.best:
            self.best = score
            engine.state.new_best = (self.metric, score)
            engine.fire_event(ExampleEvents.NEW_BEST)

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = float(state["best"])


class EvaluationLine(Handler):
    """A replacement console: one line per evaluation, nothing per iteration."""

    name = "console"

    def events(self):
        return [M3sggEvents.EVALUATION_COMPLETED]

    def __call__(self, engine: Engine) -> None:
        m = engine.state.eval_metrics
        print(
            f"epoch {engine.state.epoch}: with R@20 {100 * m['with/R@20']:.2f} "
            f"mR@20 {100 * m['with/mR@20']:.2f}"
        )


def main() -> None:
    config = load_config(None, sys.argv[1:])
    trainer = Trainer.from_config(config)
    print("default order:\n" + trainer.handlers.describe() + "\n")

    trainer.engine.register_events(*ExampleEvents)
    trainer.handlers.add(BestWatcher(), before="best_checkpoint")

    def announce(engine: Engine) -> None:
        metric, score = engine.state.new_best
        print(f"NEW_BEST {metric} = {100 * score:.2f} at epoch {engine.state.epoch}")

    trainer.handlers.add(FunctionHandler(announce, [ExampleEvents.NEW_BEST], "announce_best"))

    losses: list[float] = []
    record = FunctionHandler(
        lambda engine: losses.append(float(engine.state.output["loss"])),
        [Events.ITERATION_COMPLETED],
        name="loss_history",
    )
    trainer.handlers.add(record, after="loss_tracker")

    metrics_file = trainer.handlers.remove("metrics_file")
    trainer.handlers.add(metrics_file, before="lr_plateau")
    trainer.handlers.replace("console", EvaluationLine())
    print("composed order:\n" + trainer.handlers.describe() + "\n")

    trainer.train_loop()
    watcher = trainer.handlers.get("best_watcher")
    print(f"best {watcher.metric}: {100 * watcher.best:.2f}; {len(losses)} losses recorded")


if __name__ == "__main__":
    main()

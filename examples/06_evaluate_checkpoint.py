"""Evaluate a saved checkpoint: in one call, with other settings, and piece by piece.

    python examples/06_evaluate_checkpoint.py runs/<run>/checkpoints/last.pt
    python examples/06_evaluate_checkpoint.py            # trains a one-epoch toy model first
    python examples/06_evaluate_checkpoint.py [CHECKPOINT] section.key=value ...

The command line does the first part with ``m3sgg evaluate --checkpoint runs/<run> [--json]``.

1. ``m3sgg.evaluate_checkpoint(path)`` rebuilds the dataset, model and metrics from the config
   saved in the checkpoint and evaluates on its test split;
2. overrides change the evaluation, not the model (here: only the ``semi`` constraint, with the
   threshold 0.5 instead of 0.9; ``data.path=...`` would evaluate on another copy of the data);
3. the same evaluation by hand, with the :class:`~m3sgg.Evaluator`, gives identical numbers.
"""

import sys
import tempfile
from pathlib import Path

from torch.utils.data import DataLoader

from m3sgg import Evaluator, Trainer, build_metrics, evaluate_checkpoint, load_config
from m3sgg.config import config_from_dict
from m3sgg.data.registry import get_dataset_spec
from m3sgg.engine.builders import data_root
from m3sgg.engine.checkpoint import load_checkpoint
from m3sgg.models import build_model


def train_one_epoch(overrides: list[str]) -> Path:
    output = tempfile.mkdtemp(prefix="m3sgg-eval-")
    config = load_config(None, [*overrides, "train.epochs=1", f"run.output={output}"])
    trainer = Trainer.from_config(config)
    trainer.train_loop()
    return trainer.run_dir / "checkpoints" / "last.pt"


def evaluate_by_hand(path: Path) -> dict:
    """What ``evaluate_checkpoint`` does, spelled out."""
    checkpoint = load_checkpoint(path)  # weights_only: a file carrying code is refused
    config = config_from_dict(checkpoint["config"])  # the run's resolved config
    spec = get_dataset_spec(config.data.dataset)  # how to open, collate and split the data
    dataset = spec.open(config, data_root(config), config.test_split)
    options = {**spec.model_inputs(dataset), **config.model_options()}
    model = build_model(config.model_name, config.data.dataset, config.data.mode, **options)
    model.load_state_dict(checkpoint["model"])
    loader = DataLoader(
        dataset, batch_size=config.data.eval_videos_per_batch, collate_fn=spec.collate(model)
    )
    metrics = build_metrics(config.data.dataset, config.data.mode, config.eval)
    evaluator = Evaluator(model, loader, metrics, spec.split, device="cpu")
    return evaluator.eval_loop()


def main() -> int:
    args = sys.argv[1:]
    if args and "=" not in args[0]:
        path, overrides = Path(args[0]), args[1:]
    else:
        path, overrides = train_one_epoch(args), []
    print(f"checkpoint: {path}")

    metrics = evaluate_checkpoint(path, overrides)
    print("       R@10   R@20   R@50  R@100 | mR@10  mR@20  mR@50 mR@100")
    for c in ("with", "semi", "no"):
        recall = " ".join(f"{100 * metrics[f'{c}/R@{k}']:6.2f}" for k in (10, 20, 50, 100))
        mean = " ".join(f"{100 * metrics[f'{c}/mR@{k}']:6.2f}" for k in (10, 20, 50, 100))
        print(f"{c:<5} {recall} | {mean}")
    print(f"frames evaluated: {metrics['with/frames']}")

    loose = [*overrides, "eval.constraints=[semi]", "eval.semi_threshold=0.5"]
    semi = evaluate_checkpoint(path, loose)
    print(
        f"semi R@20 at threshold 0.5: {100 * semi['semi/R@20']:.2f} "
        f"(at 0.9: {100 * metrics['semi/R@20']:.2f}); {len(semi)} keys, all semi/..."
    )

    if overrides:  # the hand-built evaluation below reads the checkpoint's config as saved
        return 0
    by_hand = evaluate_by_hand(path)
    same = all(by_hand[key] == metrics[key] for key in metrics)
    print(f"Evaluator by hand identical to evaluate_checkpoint: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

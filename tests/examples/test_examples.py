"""Every example runs, on the toy data with small settings, in its own process, and says what it
promises (bitwise resume, identical distributed evaluation, a plugin found by its entry point).

The examples take config overrides as extra arguments; ``SMALL`` keeps each run to seconds.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DOCS = REPO / "docs"

#: a small toy dataset (the toy preset sets the widths): one epoch takes a second or two
SMALL = [
    "data.toy_videos=16",
    "train.epochs=1",
    "log.every_iters=1000",
]

pytestmark = pytest.mark.slow


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """``python args...`` with the toy cache of the session and temp files under ``tmp_path``."""
    full_env = {**os.environ, "TMPDIR": str(tmp_path), "M3SGG_NO_ENTRY_POINTS": "1", **env}
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_01_train_toy(toy_cache: Path, tmp_path: Path):
    done = run([str(EXAMPLES / "01_train_toy.py"), *SMALL, f"run.output={tmp_path}"], tmp_path)
    out = done.stdout
    assert "train engine" in out and "eval engine" in out  # describe()
    for constraint in ("with", "semi", "no"):
        assert re.search(rf"^{constraint} +R@20 +\d+\.\d\d +mR@20 +\d+\.\d\d$", out, re.M), out
    best = Path(re.search(r"best with/mR@20 checkpoint: (.+)", out).group(1))
    assert best.is_file()
    metrics_file = Path(re.search(r"metrics of every evaluation: (.+)", out).group(1))
    assert len(metrics_file.read_text().splitlines()) == 1  # one line per evaluation


def test_02_compose_handlers(toy_cache: Path, tmp_path: Path):
    done = run(
        [str(EXAMPLES / "02_compose_handlers.py"), *SMALL, f"run.output={tmp_path}"], tmp_path
    )
    out = done.stdout
    composed = out.split("composed order:")[1]
    order = re.findall(
        r"\d+\. (\w+)", composed.split("EVALUATION_COMPLETED")[1].split("\n  NEW")[0]
    )
    assert order == ["metrics_file", "lr_plateau", "best_watcher", "best_checkpoint", "console"]
    assert re.search(r"NEW_BEST +1\. announce_best", composed)
    assert re.search(r"loss_tracker .*\n +\d+\. loss_history", composed)
    assert "EvaluationLine" in composed and "ConsoleLogger" not in composed
    assert "NEW_BEST with/mR@20 = " in out  # fired at least at the first evaluation
    assert len(re.findall(r"^epoch \d: with R@20", out, re.M)) == 1  # the replacement console
    assert int(re.search(r"(\d+) losses recorded", out).group(1)) > 0


def test_03_custom_plugin_trains_evaluates_and_resumes(toy_cache: Path, tmp_path: Path):
    """The example plugin, installed with pip: its model trains with its options from a config
    file, its gradient hook and metric report, the run resumes bitwise equal to an uninterrupted
    one (the hook's state included), evaluates, and refuses to resume without the plugin."""
    import torch

    source = shutil.copytree(EXAMPLES / "03_custom_plugin", tmp_path / "src")  # build outside
    site = tmp_path / "site"
    install = [
        "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
        "--target", str(site), str(source),
    ]  # fmt: skip
    run(install, tmp_path)
    (dist,) = importlib.metadata.distributions(path=[str(site)])
    (entry,) = dist.entry_points.select(group="m3sgg.plugins")
    assert (entry.name, entry.value) == ("example", "m3sgg_example_plugin:setup")

    config = tmp_path / "plugin.yaml"
    config.write_text(
        "model: {name: pair_probe}\n"
        "data: {toy_videos: 16}\n"
        "train: {epochs: 1}\n"
        "log: {every_iters: 1000}\n"
        "plugins:\n  - name: example\n    options: {every: 3, weakest: 2}\n"
    )
    runs = tmp_path / "runs"
    env = {
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),  # this checkout's m3sgg
        "M3SGG_NO_ENTRY_POINTS": "",
    }
    train = ["-m", "m3sgg", "train", "--output", str(runs)]

    first = run([*train, "--config", str(config), "--name", "resumed"], tmp_path, **env).stdout
    assert "m3sgg-example-plugin: attached grad_norm_monitor and weakest_predicates" in first
    saved = (runs / "resumed" / "config.yaml").read_text()
    assert "name: example" in saved and "every: 3" in saved and "weakest: 2" in saved
    (record,) = [json.loads(line) for line in (runs / "resumed" / "metrics.jsonl").open()]
    steps = record["iteration"]  # one optimizer step per iteration
    assert re.findall(r"^grad norm step (\d+):", first, re.M) == [
        str(k) for k in range(3, steps + 1, 3)
    ]
    evaluation = re.search(r"^evaluation 1 .*$", first, re.M).group(0)
    assert f"| relations/mean {record['metrics']['relations/mean']:.4f}" in evaluation
    assert record["metrics"]["relations/videos"] > 0
    (weakest,) = re.findall(r"^weakest predicates \(with R@20\): (.+)$", first, re.M)
    assert len(weakest.split(", ")) == 2  # the option reached setup

    resumed_config = runs / "resumed" / "config.yaml"
    second = run(
        [*train, "--config", str(resumed_config), "--resume", "auto", "--epochs", "2"],
        tmp_path,
        **env,
    ).stdout
    # the hook's step count continued from the checkpoint
    first_step = next(k for k in range(3, 10 * steps, 3) if k > steps)
    assert re.findall(r"^grad norm step (\d+):", second, re.M)[0] == str(first_step)

    run([*train, "--config", str(config), "--name", "straight", "--epochs", "2"], tmp_path, **env)
    a = torch.load(runs / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(runs / "straight" / "checkpoints" / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["handlers"]["grad_norm_monitor"] == b["handlers"]["grad_norm_monitor"]
    assert a["plugin_handlers"]["grad_norm_monitor"] == "example"
    assert (runs / "resumed" / "metrics.jsonl").read_text() == (
        runs / "straight" / "metrics.jsonl"
    ).read_text()

    shown = run(
        ["-m", "m3sgg", "evaluate", "--checkpoint", str(runs / "resumed"), "--json"],
        tmp_path,
        **env,
    )
    metrics = json.loads(shown.stdout)
    last = json.loads((runs / "resumed" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["relations/mean"] == last["metrics"]["relations/mean"]
    assert metrics["with/R@20"] == last["metrics"]["with/R@20"]

    without = [*train, "--config", str(resumed_config), "--set", "plugins=[]"]
    without += ["--resume", "auto", "--epochs", "3"]
    refused = subprocess.run(
        [sys.executable, *without],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path), **env},
        cwd=tmp_path,
        timeout=600,
    )
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "holds the state of handler 'grad_norm_monitor' of plugin 'example'" in line
    dropped = run([*without, "--ignore-missing-plugins"], tmp_path, **env).stdout
    assert "dropped the state of handler 'grad_norm_monitor'" in dropped
    assert len((runs / "resumed" / "metrics.jsonl").read_text().splitlines()) == 3


def test_04_resume_is_bitwise_identical(toy_cache: Path, tmp_path: Path):
    done = run([str(EXAMPLES / "04_resume.py"), *SMALL, "train.epochs=2"], tmp_path)
    out = done.stdout
    crash, total, kept = map(
        int,
        re.search(
            r"interrupted at iteration (\d+) of (\d+); last.pt holds iteration (\d+)", out
        ).groups(),
    )
    assert kept < crash < total
    assert f"resumed from iteration {kept}" in out
    assert "weights bitwise identical: True" in out
    assert "metrics.jsonl identical: True" in out


def test_05_distributed_two_gloo_processes(toy_cache: Path, tmp_path: Path):
    done = run([str(EXAMPLES / "05_distributed.py"), *SMALL], tmp_path)
    out = done.stdout
    assert "rank 0/2: DistributedDataParallel" in out and "rank 1/2: DistributedDataParallel" in out
    assert "distributed evaluation identical to single-process: True" in out


def test_06_evaluate_checkpoint(toy_cache: Path, tmp_path: Path):
    done = run([str(EXAMPLES / "06_evaluate_checkpoint.py"), *SMALL], tmp_path)
    out = done.stdout
    assert re.search(r"^with +(\d+\.\d\d +){4}\|( +\d+\.\d\d){4}$", out, re.M), out
    assert re.search(r"semi R@20 at threshold 0\.5: \d+\.\d\d", out)
    assert "Evaluator by hand identical to evaluate_checkpoint: True" in out


# ------------------------------------------------------------------------------ documentation


def _markdown_files() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + sorted(EXAMPLES.rglob("*.md"))


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_markdown_links_resolve_and_python_blocks_parse(page: Path):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        ast.parse(block)  # a snippet that does not parse is a broken snippet


def test_engine_md_shows_the_live_default_order(toy_cache: Path, tmp_path: Path):
    """docs/engine.md pastes `m3sgg train --describe`; it must match what the code prints."""
    from m3sgg import Trainer, load_config

    text = (DOCS / "engine.md").read_text(encoding="utf-8")
    pasted = re.search(r"\$ m3sgg train --describe\n(.*?)```", text, re.S).group(1)
    config = load_config(None, ["data.toy_videos=16"])  # the default handlers
    trainer = Trainer.from_config(config, run_dir=tmp_path / "run")
    assert pasted.rstrip("\n") == trainer.describe(), "update the table in docs/engine.md"


def test_08_tune(toy_cache: Path, tmp_path: Path):
    pytest.importorskip("optuna")
    done = run(
        [str(EXAMPLES / "08_tune.py"), "data.toy_videos=16", "log.every_iters=1000"], tmp_path
    )
    out = done.stdout
    assert len(re.findall(r"^trial \d+ (complete|pruned)", out, re.M)) == 6
    complete, pruned = map(int, re.search(r"(\d+) complete, (\d+) pruned", out).groups())
    assert complete + pruned == 6 and pruned >= 1
    assert "importances (fANOVA):" in out
    assert re.search(r"best trial \d+ retrained from .+: bitwise identical: True", out)

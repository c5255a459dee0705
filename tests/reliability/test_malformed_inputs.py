"""The malformed-input corpus through the CLI: one line naming file and field, exit 2, no harm.

Every case of :mod:`corpus` (broken annotation pickles and class lists, feature stores, EASG files,
configs and checkpoints, each generated here from a correct file) is fed to the commands that read
it: ``m3sgg inspect-data``, ``m3sgg train --data-path``, ``m3sgg train --config``, ``m3sgg train
--resume auto|PATH`` and ``m3sgg evaluate --checkpoint``. Each must print exactly one line on
stderr naming the file and the field, return 2, raise no other exception (a traceback), and leave
the run folder it points at byte-identical.

All cases run through ``m3sgg.cli.main`` in this process (the CLI's own code, milliseconds each);
one case per kind also runs as a real ``python -m m3sgg`` subprocess, checking the process
boundary too (exit status, nothing else on stderr).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from m3sgg.cli import main
from m3sgg.config import load_config
from m3sgg.data.registry import toy_dataset_path
from m3sgg.engine.trainer import Trainer

from .conftest import RUN_SETTINGS, Reference, run_m3sgg, snapshot
from .corpus import CASES, Case, Corpus, Invocation, corpus_settings

EASG_TOY = ["data.dataset=easg", "data.mode=edgecls", "data.toy_videos=16"]


@pytest.fixture(scope="session")
def corpus(reference_run: Reference, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("corpus")
    config = root / "run.yaml"
    config.write_text(corpus_settings(RUN_SETTINGS))
    ag = toy_dataset_path(load_config(config))
    easg = toy_dataset_path(load_config(None, EASG_TOY))

    def checkpoint(name: str, path: Path | None, overrides: list[str]) -> Path:
        at = [f"run.output={root / 'made'}", f"run.name={name}", *overrides]
        return Trainer.from_config(load_config(path, at)).save_checkpoint()

    made = Corpus(
        root=root,
        ag=ag,
        easg=easg,
        config=config,
        run=reference_run.run,
        d64=checkpoint("d64", config, ["model.options.proj_dim=16"]),
        other_model=checkpoint("easg", None, EASG_TOY),
    )
    made.run = made.run_copy(root / "runs")
    return made


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[list[str]], tuple]]:
    """``run_cli(argv) -> (exit code, stdout, stderr)`` through ``m3sgg.cli.main`` in-process;
    an exception escaping ``main`` (what a user would see as a traceback) fails the test."""
    loggers = {name: logging.getLogger(name) for name in ("m3sgg", "ignite")}
    saved = {n: (lg.handlers[:], lg.level, lg.propagate) for n, lg in loggers.items()}

    def run(argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(argv)
        except BaseException:
            pytest.fail(f"m3sgg {' '.join(argv)} raised instead of exiting:\n"
                        f"{traceback.format_exc()}")  # fmt: skip
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    for name, logger in loggers.items():
        logger.handlers[:], logger.level, logger.propagate = saved[name]


def check(invocation: Invocation, run: Callable[[list[str]], tuple[int, str, str]]) -> None:
    before = snapshot(invocation.guard)
    for command in invocation.commands:
        code, _, err = run(command)
        shown = f"m3sgg {' '.join(command)}\nstderr: {err}"
        assert code == 2, shown
        lines = err.splitlines()
        assert len(lines) == 1 and "Traceback" not in err, shown
        assert lines[0].startswith(f"m3sgg {command[0]}: error: "), shown
        assert str(invocation.file) in lines[0], shown
        if invocation.field is not None:
            assert invocation.field in lines[0], shown
        assert snapshot(invocation.guard) == before, f"{shown}\nchanged {invocation.guard}"


def params(cases: list[Case]) -> list:
    return [
        pytest.param(
            case,
            id=case.name,
            marks=[pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else [],
        )
        for case in cases
    ]


def test_the_corpus_has_at_least_30_files_of_every_kind() -> None:
    kinds = {case.kind for case in CASES}
    assert kinds == {"annotations", "features", "easg", "config", "checkpoint"}
    assert len({case.name for case in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", params(CASES))
def test_malformed_file_gives_one_line_naming_file_and_field(
    case: Case, corpus: Corpus, tmp_path: Path, run_cli: Callable
) -> None:
    check(case.make(corpus, tmp_path), run_cli)


#: one case per kind, run as real subprocesses
SUBPROCESS_CASES = [
    "nan-box",
    "store-pair-index-out-of-range",
    "easg-unknown-verb",
    "config-unknown-key",
    "checkpoint-truncated",
]


def run_subprocess(argv: list[str]) -> tuple[int, str, str]:
    done = run_m3sgg(*argv)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", params([c for c in CASES if c.name in SUBPROCESS_CASES]))
def test_malformed_file_through_a_real_process(case: Case, corpus: Corpus, tmp_path: Path) -> None:
    check(case.make(corpus, tmp_path), run_subprocess)


def test_a_refused_resume_leaves_the_run_config_alone(corpus: Corpus, run_cli: Callable) -> None:
    """``--resume auto`` with options that do not fit the run: refused, nothing rewritten."""
    invocation = Invocation(
        [corpus.resume_args(corpus.run, "--set", "model.options.proj_dim=16")],
        corpus.run / "checkpoints" / "last.pt",
        "model",
        corpus.run,
    )
    check(invocation, run_cli)

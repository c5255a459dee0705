"""Search-space files: parsing, validation against the config reference, grid values."""

from __future__ import annotations

from pathlib import Path

import pytest

from m3sgg.config import load_config
from m3sgg.errors import ConfigError
from m3sgg.tune.space import Param, load_space, set_key


def space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def base():
    return load_config(None, ["train.epochs=2"])


def test_each_kind_is_parsed_in_file_order(tmp_path: Path, base) -> None:
    parsed = load_space(
        space(
            tmp_path,
            "optim.lr: {log_float: [1e-6, 1e-3]}\n"
            "optim.weight_decay: {float: [0, 0.1], step: 0.05}\n"
            "model.options.enc_layers: {int: [1, 3]}\n"
            "optim.optimizer: {choice: [adamw, sgd]}\n",
        ),
        base,
    )
    assert parsed.params == [
        Param("optim.lr", "log_float", 1e-6, 1e-3),
        Param("optim.weight_decay", "float", 0.0, 0.1, 0.05),
        Param("model.options.enc_layers", "int", 1, 3),
        Param("optim.optimizer", "choice", choices=("adamw", "sgd")),
    ]
    assert [p.grid_values() for p in parsed.params[1:]] == [
        [0.0, 0.05, 0.1],
        [1, 2, 3],
        ["adamw", "sgd"],
    ]
    with pytest.raises(ConfigError, match=r"optim\.lr: the grid sampler needs finite values"):
        parsed.grid()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optim.lrr: {float: [0.1, 0.2]}", "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
        ("optim: {float: [0.1, 0.2]}", "unknown key 'optim'"),
        (
            "model.options.ff_dm: {int: [8, 16]}",
            "unknown key 'model.options.ff_dm'; did you mean 'model.options.ff_dim'?",
        ),
        ("run.name: {choice: [a, b]}", "run.name: set by the study for each trial"),
        ("optim.lr: {log_flot: [1e-5, 1e-3]}", "unknown distribution 'log_flot'; did you mean"),
        ("optim.lr: {float: [1e-3, 1e-5]}", "low must be below high"),
        ("optim.lr: {log_float: [0, 1e-3]}", "a log range needs low > 0"),
        ("optim.lr: 0.001", "expected a mapping like"),
        ("train.epochs: {int: [1.5, 3]}", r"train.epochs.int\[0\]: expected an integer"),
        # the config's own rules apply to both ends of a range and to every choice
        ("optim.lr: {float: [0, 1e-3]}", r"optim.lr = 0.0: .*optim.lr: must be > 0, got 0.0"),
        ("optim.optimizer: {choice: [adamw, lion]}", "optim.optimizer = 'lion': .*must be one of"),
        ("train.epochs: {float: [1, 3]}", "train.epochs = 1.0: .*expected int"),
    ],
)
def test_bad_space_fails_in_one_line_naming_the_file(
    tmp_path: Path, base, text: str, message: str
) -> None:
    path = space(tmp_path, text + "\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_space(path, base)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_missing_file_and_empty_file(tmp_path: Path, base) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_space(tmp_path / "none.yaml", base)
    with pytest.raises(ConfigError, match="expected a mapping of config keys"):
        load_space(space(tmp_path, ""), base)


def test_set_key_creates_model_options() -> None:
    tree = {"model": {"name": None, "options": None}, "optim": {"lr": 1.0}}
    set_key(tree, "model.options.d_model", 32)
    set_key(tree, "optim.lr", 0.5)
    assert tree == {"model": {"name": None, "options": {"d_model": 32}}, "optim": {"lr": 0.5}}

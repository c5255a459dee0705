"""The config tree: defaults, files, overrides, validation errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from m3sgg.config import Config, config_from_dict, config_to_dict, load_config
from m3sgg.errors import ConfigError


def test_defaults_resolve_dataset_dependent_metrics():
    ag = load_config()
    assert ag.checkpoint.best_metrics == ["with/mR@20", "with/R@20"]
    assert ag.schedule.metric == "with/R@20" and ag.train.early_stop_metric == "with/mR@20"
    assert ag.model_name == "sttran" and ag.test_split == "test"
    easg = load_config(None, ["data.dataset=easg", "data.mode=edgecls"])
    assert easg.checkpoint.best_metrics == ["with/R@20"]
    assert easg.model_name == "easg_fc" and easg.test_split == "val"


def test_yaml_and_toml_files_and_overrides(tmp_path: Path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("optim:\n  lr: 1e-4\neval:\n  constraints: [with, no]\n")
    cfg = load_config(yaml_file, ["optim.lr=2e-4", "model.options.d_model=128"])
    assert cfg.optim.lr == 2e-4  # the override wins; 1e-4 in YAML is a float, not a string
    assert cfg.eval.constraints == ["with", "no"]  # "no" stays a string (YAML 1.2 booleans)
    assert cfg.model.options == {"d_model": 128}
    toml_file = tmp_path / "c.toml"
    toml_file.write_text('[data]\nmode = "sgcls"\n[train]\nepochs = 7\n')
    cfg = load_config(toml_file)
    assert (cfg.data.mode, cfg.train.epochs) == ("sgcls", 7)


def test_model_options_merge_over_the_toy_preset_only_on_toy_data():
    toy = load_config(None, ["model.options.ff_dim=96"])
    assert toy.model_options()["ff_dim"] == 96 and toy.model_options()["proj_dim"] == 32
    real = load_config(None, ["data.path=/data/ag", "model.options.ff_dim=96"])
    assert real.model_options() == {"ff_dim": 96}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1"], "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
        (["optimm.lr=1"], "unknown key 'optimm'; did you mean 'optim'?"),
        (["optim.lr=abc"], "optim.lr: expected a number, got 'abc'"),
        (["train.epochs=1.5"], "train.epochs: expected int"),
        (["log.progress_bar=yes"], "log.progress_bar: expected true or false"),
        (["data.mode=sgdett"], "data.mode: must be one of 'predcls', 'sgcls', 'sgdet'"),
        (["data.dataset=easg", "data.mode=predcls"], "data.mode: must be one of 'edgecls'"),
        (["train.epochs=0"], "train.epochs: must be > 0"),
        (["schedule.factor=1.5"], "schedule.factor: must be in (0, 1)"),
        (["eval.constraints=[with, maybe]"], "must be one of 'with', 'semi', 'no'"),
        (["optim.lr"], "expected section.key=value"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], message: str):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_file_errors_name_the_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'train.epochz'; did you mean"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(
        ConfigError,
        match=r"broken\.yaml:2:1: invalid YAML \(while parsing a flow sequence at 1:8: expected",
    ):
        load_config(broken)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    ini = tmp_path / "c.ini"
    ini.write_text("[train]\n")
    with pytest.raises(ConfigError, match="unknown config format"):
        load_config(ini)


def test_round_trip_through_a_dict_is_lossless():
    cfg = load_config(None, ["optim.lr=3e-4", "plugins=[a.b:c]", "model.options.window=3"])
    again = config_from_dict(config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)
    assert isinstance(again, Config)

"""Model registry: registration forms, lookup, refusals with helpful messages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from synthetic_videos import TINY
from torch import nn

from m3sgg.errors import ConfigError
from m3sgg.models import (
    ModelProtocol,
    STTran,
    available_models,
    build_model,
    get_model_spec,
    register_model,
    unregister_model,
)


@pytest.fixture
def scratch() -> Iterator[list[str]]:
    """Names registered by a test; removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        unregister_model(name)


class _Toy(nn.Module):
    def __init__(self, *, dataset: str, mode: str, width: int = 2) -> None:
        super().__init__()
        self.dataset, self.mode = dataset, mode
        self.linear = nn.Linear(width, width)

    def loss(self, predictions: dict, batch: object) -> dict:
        return {}


def test_sttran_is_registered() -> None:
    assert "sttran" in available_models()
    assert "sttran" in available_models(dataset="action_genome", mode="predcls")
    assert "sttran" not in available_models(dataset="easg")
    assert {"easg_fc", "sttran_easg"} <= set(available_models(dataset="easg"))
    spec = get_model_spec("sttran")
    assert spec.factory is STTran
    assert spec.datasets == STTran.supported_datasets == {"action_genome"}
    assert spec.modes == STTran.supported_modes == {"predcls", "sgcls", "sgdet"}


@pytest.mark.parametrize("mode", ["predcls", "sgcls", "sgdet"])
def test_build_sttran(mode: str) -> None:
    model = build_model("sttran", "action_genome", mode, **TINY)
    assert isinstance(model, STTran)
    assert isinstance(model, ModelProtocol)
    assert model.mode == mode
    assert model.input_section == ("det" if mode == "sgdet" else "gt")
    assert "attention_distribution" in model.prediction_keys


def test_unknown_model_lists_available() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'nope'; available: .*sttran"):
        build_model("nope", "action_genome", "predcls")


@pytest.mark.parametrize(("dataset", "mode"), [("easg", "predcls"), ("action_genome", "edgecls")])
def test_unsupported_dataset_or_mode(dataset: str, mode: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_model("sttran", dataset, mode, **TINY)
    message = str(info.value)
    assert "'sttran'" in message and repr(dataset) in message and repr(mode) in message
    assert "datasets [action_genome]" in message and "modes [predcls, sgcls, sgdet]" in message


def test_decorator_and_function_forms(scratch: list[str]) -> None:
    decorated = register_model("toy_a", datasets={"toy_set"}, modes={"edgecls"})(_Toy)
    scratch.append("toy_a")
    assert decorated is _Toy
    returned = register_model("toy_b", _Toy, datasets=["toy_set", "x"], modes=("sgcls",))
    scratch.append("toy_b")
    assert returned is _Toy
    model = build_model("toy_b", "x", "sgcls", width=3)
    assert isinstance(model, _Toy) and model.dataset == "x" and model.linear.in_features == 3
    assert available_models(dataset="toy_set") == ["toy_a", "toy_b"]
    assert available_models(dataset="toy_set", mode="sgcls") == ["toy_b"]


def test_duplicate_refused_unless_override(scratch: list[str]) -> None:
    register_model("toy_dup", _Toy, datasets={"easg"}, modes={"edgecls"})
    scratch.append("toy_dup")
    with pytest.raises(ConfigError, match=r"already registered.*override=True"):
        register_model("toy_dup", _Toy, datasets={"easg"}, modes={"sgcls"})
    assert get_model_spec("toy_dup").modes == {"edgecls"}
    register_model("toy_dup", _Toy, datasets={"easg"}, modes={"sgcls"}, override=True)
    assert get_model_spec("toy_dup").modes == {"sgcls"}
    with pytest.raises(ConfigError, match="already registered"):
        register_model("sttran", _Toy, datasets={"easg"}, modes={"x"})


def test_invalid_registrations() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        register_model("", _Toy, datasets={"a"}, modes={"b"})
    with pytest.raises(ValueError, match="at least one"):
        register_model("toy_x", _Toy, datasets=set(), modes={"b"})
    with pytest.raises(ValueError, match="not callable"):
        register_model("toy_x", 3, datasets={"a"}, modes={"b"})  # type: ignore[call-overload]
    assert "toy_x" not in available_models()


def test_factory_must_return_a_model(scratch: list[str]) -> None:
    register_model("toy_bad", lambda **kw: object(), datasets={"a"}, modes={"b"})
    scratch.append("toy_bad")
    with pytest.raises(TypeError, match=r"expected a torch\.nn\.Module with a loss"):
        build_model("toy_bad", "a", "b")

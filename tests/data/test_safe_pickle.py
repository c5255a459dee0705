"""The restricted unpickler: data loads, code does not run."""

from __future__ import annotations

import builtins
import collections
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from m3sgg.data.safe_pickle import load_pickle, loads_pickle
from m3sgg.errors import DataError, UnsafePickleError


class Payload:
    """Pickles as ``func(*args)``: what an attacker would put in a dataset pickle."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def touch_command(marker) -> str:
    return f"{sys.executable} -c \"open({str(marker)!r}, 'w').close()\""


def payloads(marker):
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": Payload(os.system, touch_command(marker)),
        "builtins.eval": Payload(builtins.eval, code),
        "builtins.exec": Payload(builtins.exec, code),
        "subprocess.Popen": Payload(subprocess.Popen, [sys.executable, "-c", code]),
        "builtins.getattr": Payload(builtins.getattr, Payload(builtins.__import__, "os"), "system"),
        "builtins.open": Payload(builtins.open, str(marker), "w"),
    }


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "builtins.eval",
        "builtins.exec",
        "subprocess.Popen",
        "builtins.getattr",
        "builtins.open",
    ],
)
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_code_payloads_are_refused_and_do_not_run(tmp_path, name, protocol):
    marker = tmp_path / "pwned"
    payload = payloads(marker)[name]
    # hidden inside an innocent-looking annotation dict
    data = pickle.dumps({"a.mp4/000001.png": [{"class": "bag", "bbox": payload}]}, protocol)
    path = tmp_path / "object_bbox_and_relationship.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError) as info:
        load_pickle(path)
    assert not marker.exists()
    assert info.value.path == os.fspath(path) and "nothing was executed" in str(info.value)
    assert isinstance(info.value, DataError)


def test_the_payload_would_run_with_plain_pickle(tmp_path):
    """Sanity check of the test itself: the same bytes do run code under ``pickle.loads``."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(payloads(marker)["builtins.exec"]))
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_and_containers_load(protocol):
    data = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "f64": np.linspace(0, 1, 5),
        "f16": np.ones((2, 2), np.float16),
        "i64": np.arange(-3, 3, dtype=np.int64),
        "u8": np.arange(256, dtype=np.uint8),
        "bool": np.array([True, False]),
        "c64": np.array([1 + 2j], np.complex64),
        "empty": np.zeros((0, 4), np.float32),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "scalar": np.float32(1.5),
        "int_scalar": np.int64(7),
        "tuple": (1.0, 2.5, None, "in_front_of"),
        "set": {1, 2},
        "bytes": b"\x00\xff",
        "ordered": collections.OrderedDict(a=1),
        "nested": [{"bbox": (1.0, 2.0, 3.0, 4.0), "visible": True}],
    }
    loaded = loads_pickle(pickle.dumps(data, protocol=protocol))
    expected = pickle.loads(pickle.dumps(data, protocol=protocol))
    assert loaded.keys() == data.keys()
    for key, value in expected.items():
        if isinstance(value, np.ndarray):
            assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
            np.testing.assert_array_equal(loaded[key], value)
        else:
            assert loaded[key] == value and type(loaded[key]) is type(value)


def test_truncated_and_garbage_files(tmp_path):
    path = tmp_path / "person_bbox.pkl"
    data = pickle.dumps({"k": np.zeros((1, 4), np.float32)}, protocol=4)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        load_pickle(path)
    assert not isinstance(info.value, UnsafePickleError)
    assert info.value.path == os.fspath(path) and "truncated" in info.value.message
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(DataError, match=r"person_bbox\.pkl"):
        load_pickle(path)
    with pytest.raises(DataError, match="not found"):
        load_pickle(tmp_path / "missing.pkl")
    with pytest.raises(DataError, match="folder"):
        load_pickle(tmp_path)


# -- torch tensors (the EASG release pickles its RoI features as tensors) ---------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_torch_tensors_load_as_tensors(tmp_path, protocol):
    import torch

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    data = {"clip_000010": {"aid": [{"pnr": base[1:3], "pre": base.T.contiguous()}]}}
    path = tmp_path / "roi_feats_train.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    entry = load_pickle(path)["clip_000010"]["aid"][0]
    assert isinstance(entry["pnr"], torch.Tensor)
    assert entry["pnr"].tolist() == [list(range(6, 12)), list(range(12, 18))]  # a view, offset 6
    assert torch.equal(entry["pre"], base.T)
    assert entry["pre"].dtype == torch.float32 and not entry["pre"].requires_grad


def test_a_storage_holding_code_is_refused_and_does_not_run(tmp_path):
    """A storage is a torch.save file inside the pickle: torch's own reader would run its
    globals; ours reads it under weights-only rules."""
    import io

    import torch

    marker = tmp_path / "pwned"
    inner = io.BytesIO()
    torch.save(
        Payload(os.system, touch_command(marker)), inner, _use_new_zipfile_serialization=False
    )
    crafted = Payload(torch.storage._load_from_bytes, inner.getvalue())
    path = tmp_path / "roi_feats_train.pkl"
    path.write_bytes(pickle.dumps({"g": {"a": [{"pnr": crafted}]}}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"roi_feats_train\.pkl: pickle: refused a torch"):
        load_pickle(path)
    assert not marker.exists()


def test_other_torch_globals_are_refused(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(Payload(torch.load, str(marker)), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refused global torch\.serialization\.load"):
        load_pickle(path)

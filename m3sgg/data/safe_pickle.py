"""Load dataset pickles without letting them run code.

``pickle.load`` calls whatever global a file names, so a crafted ``person_bbox.pkl`` could run
``os.system``. :func:`load_pickle` resolves only an allow-list: builtin containers and scalars,
what numpy needs to rebuild arrays and scalars, and torch tensors and storages under torch's
weights-only rules (the EASG release pickles its RoI features as tensors). Anything else raises
:class:`~m3sgg.errors.UnsafePickleError` *before* the global is called, so nothing runs.

A torch tensor pickles as ``torch._utils._rebuild_tensor_v2(storage, ...)``, and its storage as
``torch.storage._load_from_bytes(b)``, where ``b`` is a small legacy ``torch.save`` file. torch's
own ``_load_from_bytes`` reads ``b`` with ``weights_only=False``; here ``b`` is read with
``torch.load(..., weights_only=True)`` instead, so a storage can hold data only. torch is imported
only when a pickle names it.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
from typing import Any

from m3sgg.errors import DataError, UnsafePickleError

__all__ = ["ALLOWED_GLOBALS", "TORCH_REBUILDERS", "load_pickle", "loads_pickle"]

#: torch's tensor rebuilders a pickle may call (as in torch's weights-only allow-list).
TORCH_REBUILDERS: frozenset[str] = frozenset(
    {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter"}
)

#: (module, name) pairs a dataset pickle may reference (plus :data:`TORCH_REBUILDERS` in
#: ``torch._utils`` and ``torch.storage._load_from_bytes``, read safely). numpy moved its core
#: to ``numpy._core`` in 2.0; pickles written by either spelling load. ``_codecs.encode``
#: appears in protocol-2 pickles of bytes (it only encodes a string).
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("builtins", name)
        for name in (
            "dict",
            "list",
            "tuple",
            "set",
            "frozenset",
            "int",
            "float",
            "complex",
            "str",
            "bytes",
            "bytearray",
            "bool",
            "slice",
            "range",
        )
    }
    | {("collections", "OrderedDict"), ("collections", "defaultdict"), ("_codecs", "encode")}
    | {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    }
    | {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: str):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (protocols 0-2), mapped the way pickle itself maps them.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch._utils" and name in TORCH_REBUILDERS:
            return super().find_class(module, name)
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return self._storage_from_bytes
        raise UnsafePickleError(
            self._path,
            f"refused global {module}.{name} (dataset pickles may hold only containers, "
            "numbers, strings, numpy arrays and torch tensors); nothing was executed",
            field="pickle",
        )

    def _storage_from_bytes(self, data: bytes) -> Any:
        """A pickled torch storage, read under torch's weights-only rules (mapped to CPU)."""
        import torch

        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            reason = next((line for line in str(err).splitlines() if "GLOBAL" in line), "")
            raise UnsafePickleError(
                self._path,
                "refused a torch storage that is not plain data under torch's weights-only "
                f"rules{': ' + reason.strip() if reason else ''}; nothing was executed",
                field="pickle",
            ) from None
        except (RuntimeError, EOFError, OSError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(
                self._path, f"unreadable torch storage ({first})", field="pickle"
            ) from None


def loads_pickle(data: bytes, path: str | os.PathLike[str] = "<bytes>") -> Any:
    """Unpickle ``data`` with the allow-list; ``path`` only names the source in errors."""
    return _load(io.BytesIO(data), os.fspath(path))


def load_pickle(path: str | os.PathLike[str]) -> Any:
    """Read a dataset pickle safely.

    Raises:
        DataError: the file is missing, truncated or not a pickle.
        UnsafePickleError: the pickle references a global outside :data:`ALLOWED_GLOBALS`.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return _load(f, path)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, expected a pickle file") from None


def _load(file: Any, path: str) -> Any:
    try:
        return _RestrictedUnpickler(file, path).load()
    except UnsafePickleError:
        raise
    except EOFError:
        raise DataError(path, "truncated pickle (unexpected end of file)", field="pickle") from None
    except (
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        UnicodeDecodeError,
    ) as err:
        raise DataError(
            path, f"not a valid pickle ({type(err).__name__}: {err})", field="pickle"
        ) from None

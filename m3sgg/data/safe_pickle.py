"""Load dataset pickles without letting them run code.

``pickle.load`` calls whatever global a file names, so a crafted ``person_bbox.pkl`` could run
``os.system``. :func:`load_pickle` resolves only an allow-list: builtin containers and scalars
and what numpy needs to rebuild arrays and scalars. Anything else raises
:class:`~m3sgg.errors.UnsafePickleError` *before* the global is called, so nothing runs.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
from typing import Any

from m3sgg.errors import DataError, UnsafePickleError

__all__ = ["ALLOWED_GLOBALS", "load_pickle", "loads_pickle"]

#: (module, name) pairs a dataset pickle may reference. numpy moved its core to ``numpy._core`` in
#: 2.0; pickles written by either spelling load. ``_codecs.encode`` appears in protocol-2 pickles
#: of bytes (it only encodes a string).
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
        raise UnsafePickleError(
            self._path,
            f"refused global {module}.{name} (dataset pickles may hold only containers, "
            "numbers, strings and numpy arrays); nothing was executed",
            field="pickle",
        )


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

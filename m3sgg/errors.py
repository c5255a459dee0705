"""User-facing errors: one line that names the file and the field, exit code 2 from the CLI.

Library code raises these for bad input (files, configs, arguments); the CLI prints ``str(err)``
and exits with :attr:`M3sggError.exit_code` instead of showing a traceback. Anything else that
escapes is a bug in m3sgg and keeps its traceback.
"""

from __future__ import annotations

import os

__all__ = ["ConfigError", "DataError", "M3sggError", "UnsafePickleError", "WriteError"]


class M3sggError(Exception):
    """Base class of the errors a user can fix; the CLI turns them into one line and exit 2."""

    exit_code = 2


class DataError(M3sggError, ValueError):
    """A dataset, feature-store or checkpoint file is missing, malformed or inconsistent.

    Args:
        path: the offending file (or folder).
        message: what is wrong, in a few words.
        field: where inside the file (a key, a record, ``frame 'x.mp4/000001.png' object 2 bbox``).
    """

    def __init__(self, path: str | os.PathLike[str], message: str, field: str | None = None):
        self.path = os.fspath(path)
        self.field = field
        self.message = message
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
        super().__init__(where + message)


class UnsafePickleError(DataError):
    """A pickle references a global outside the allow-list (it could run code); nothing ran."""


class ConfigError(M3sggError, ValueError):
    """A configuration value or command-line argument is invalid."""


class WriteError(M3sggError):
    """A file of the run folder could not be written (disk full, permissions, read-only disk).

    Raised after the failed write was undone: the file holds what it held before, so the run can
    be resumed once the disk has room again.
    """

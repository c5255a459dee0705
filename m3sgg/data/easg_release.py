"""Where the EASG release keeps its files: found under one folder, whatever the layout.

The release is spread over several downloads: the annotation archive (master JSON, frames,
``features_verb.pt``), the repository's ``easg-generation/annts_in_new_format/`` (vocabularies and
SGG-view pickles) and the baseline's ``data/`` folder (``roi_feats_{split}.pkl``,
``verb_features.pt``). :func:`find_easg_files` looks for every file the readers know by name under
``root`` (``root`` itself first, then sub-folders breadth-first, at most :data:`MAX_DEPTH` levels
down, never inside ``frames/`` or hidden folders), so ``--data-path`` may name the release root,
the SGG folder, or a flat folder like the toy dataset's. A name found in several places is taken
from the shallowest folder (then the first in sorted order).

:meth:`EASGFiles.summary` is the one line a run prints: what was found where, what was found and
is not used, and what is missing. ``features_verb.pt`` (per-graph verb features keyed
``f"{graph_uid}_{clip_id}"``, read by the release's STTran reader over the master JSON) is
reported as unused: the EASG models read the per-annotation ``verb_features.pt`` of the SGG view.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from m3sgg.errors import DataError

__all__ = ["MAX_DEPTH", "RELEASE_FILES", "UNUSED_FILES", "EASGFiles", "find_easg_files"]

#: How many folder levels below the root are searched.
MAX_DEPTH = 4
#: Every file the EASG readers know by name.
RELEASE_FILES: tuple[str, ...] = (
    "verbs.txt",
    "objects.txt",
    "relationships.txt",
    "EASG_unict_master_final.json",
    "EASG_unict_master_final_upd.json",
    "easg_train.pkl",
    "easg_val.pkl",
    "roi_feats_train.pkl",
    "roi_feats_val.pkl",
    "verb_features.pt",
    "features_verb.pt",
)
#: Release files no m3sgg reader uses, with the reason printed in the summary.
UNUSED_FILES: dict[str, str] = {
    "features_verb.pt": "per-graph verb features of the release's STTran reader; "
    "the EASG models read verb_features.pt",
}
_SKIP = frozenset({"frames"})


@dataclass(frozen=True)
class EASGFiles:
    """The release files found under ``root``: file name → path."""

    root: Path
    found: dict[str, Path] = field(default_factory=dict)

    def get(self, name: str) -> Path | None:
        return self.found.get(name)

    def path(self, name: str) -> Path:
        """Where ``name`` is; a :class:`DataError` naming it and what was found when absent."""
        path = self.found.get(name)
        if path is None:
            raise DataError(
                self.root / name,
                f"file not found (searched {self.root} and {MAX_DEPTH} folder levels below; "
                f"{self.summary()})",
            )
        return path

    def summary(self, needed: tuple[str, ...] = ()) -> str:
        """One line: ``found a b (folder), c (.); unused: d (why); missing: e``."""
        by_folder: dict[str, list[str]] = {}
        unused = []
        for name in RELEASE_FILES:
            path = self.found.get(name)
            if path is None:
                continue
            if name in UNUSED_FILES:
                unused.append(f"{name} ({UNUSED_FILES[name]})")
                continue
            folder = os.path.relpath(path.parent, self.root)
            by_folder.setdefault(folder, []).append(name)
        parts = [
            "found "
            + (", ".join(f"{' '.join(names)} ({folder})" for folder, names in by_folder.items()))
            if by_folder
            else "found no EASG file"
        ]
        if unused:
            parts.append("unused: " + ", ".join(unused))
        missing = [name for name in needed if name not in self.found]
        if missing:
            parts.append("missing: " + " ".join(missing))
        return "; ".join(parts)


def find_easg_files(root: str | os.PathLike[str]) -> EASGFiles:
    """Search ``root`` breadth-first for the :data:`RELEASE_FILES` (see the module doc).

    Raises:
        DataError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "EASG folder not found")
    wanted = set(RELEASE_FILES)
    found: dict[str, Path] = {}
    level = [root]
    for _depth in range(MAX_DEPTH + 1):
        below: list[Path] = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name in wanted and entry.name not in found and entry.is_file():
                    found[entry.name] = Path(entry.path)
                elif entry.is_dir() and entry.name not in _SKIP and not entry.name.startswith("."):
                    below.append(Path(entry.path))
        if len(found) == len(wanted) or not below:
            break
        level = below
    return EASGFiles(root, found)

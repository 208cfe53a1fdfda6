"""What an output folder holds: a search (``rank-search search``) or a training run (``train``).

One folder holds one kind of result; writing the other kind into it is refused, so files of a
search and of a training run are never mixed. Markers: a search writes ``search.json``; a
training run writes ``checkpoint.pt`` and, when finished, ``metrics.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .errors import ConfigError

FolderKind = Literal["search", "train"]

_MARKERS: dict[FolderKind, tuple[str, ...]] = {
    "search": ("search.json",),
    "train": ("metrics.json", "checkpoint.pt"),
}
_COMMANDS: dict[FolderKind, str] = {"search": "rank-search search", "train": "rank-search train"}


def folder_kind(folder: Path) -> FolderKind | None:
    """``"search"`` or ``"train"`` by the marker files in ``folder``; ``None`` if it has neither."""
    for kind, markers in _MARKERS.items():
        if any((folder / name).exists() for name in markers):
            return kind
    return None


def refuse_other_kind(folder: Path, writing: FolderKind) -> None:
    """Raise a :class:`ConfigError` if ``folder`` holds results of the other kind than ``writing``."""
    found = folder_kind(folder) if folder.is_dir() else None
    if found is not None and found != writing:
        marker = next(name for name in _MARKERS[found] if (folder / name).exists())
        raise ConfigError(
            f"holds the results of `{_COMMANDS[found]}` ({marker}); "
            f"`{_COMMANDS[writing]}` needs another folder (-o)",
            source=folder,
        )

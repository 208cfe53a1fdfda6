"""Dataset spec strings: ``builtin``, ``cifar10:ROOT``, ``cifar100:ROOT``, ``imagefolder:ROOT``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rank_search.errors import ConfigError

__all__ = ["ACCEPTED_FORMS", "KINDS", "DataSpec", "parse_data_spec"]

KINDS_WITH_ROOT = ("cifar10", "cifar100", "imagefolder")
KINDS = ("builtin", *KINDS_WITH_ROOT)
ACCEPTED_FORMS = "'builtin', 'cifar10:ROOT', 'cifar100:ROOT' or 'imagefolder:ROOT'"


@dataclass(frozen=True)
class DataSpec:
    """Which dataset to load: a kind and, for every kind but ``builtin``, its root folder."""

    kind: str
    root: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown dataset kind {self.kind!r}; expected {ACCEPTED_FORMS}", key="data")
        if self.kind in KINDS_WITH_ROOT and self.root is None:
            raise ConfigError(f"'{self.kind}' needs a root folder: '{self.kind}:ROOT'", key="data")
        if self.kind not in KINDS_WITH_ROOT and self.root is not None:
            raise ConfigError(f"'{self.kind}' takes no root folder", key="data")
        if self.root is not None and not isinstance(self.root, Path):
            object.__setattr__(self, "root", Path(self.root))

    def __str__(self) -> str:
        return self.kind if self.root is None else f"{self.kind}:{self.root}"


def parse_data_spec(text: str) -> DataSpec:
    """Parse ``'builtin'`` or ``'KIND:ROOT'``; the root may itself contain ``':'``.

    Raises :class:`ConfigError` (key ``data``) naming the accepted forms on bad input.
    """
    kind, sep, root = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ConfigError(f"cannot parse {text!r}; expected {ACCEPTED_FORMS}", key="data")
    if kind not in KINDS_WITH_ROOT:
        if sep:
            raise ConfigError(
                f"'{kind}' takes no root folder (got {text!r}); expected {ACCEPTED_FORMS}", key="data"
            )
        return DataSpec(kind)
    if not root.strip():
        raise ConfigError(f"'{kind}' needs a root folder: '{kind}:ROOT' (got {text!r})", key="data")
    return DataSpec(kind, Path(root.strip()).expanduser())

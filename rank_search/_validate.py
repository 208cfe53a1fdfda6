"""Small validators shared by every file format (rank-config JSON, space and study YAML).

Each raises :class:`~rank_search.errors.ConfigError` naming the dotted key; the caller adds
the file with :meth:`ConfigError.with_source`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError


def check_keys(data: Any, allowed: Sequence[str], prefix: str) -> None:
    """``data`` must be a mapping with keys from ``allowed``; ``prefix`` is its dotted key + '.'."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {data!r}", key=prefix.rstrip(".") or None)
    unknown = sorted(str(k) for k in set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; allowed: {sorted(allowed)}", key=prefix + unknown[0])


def require(data: Mapping[str, Any], key: str, prefix: str = "") -> Any:
    """``data[key]``, which must be present and not null."""
    if data.get(key) is None:
        raise ConfigError("missing required key", key=prefix + key)
    return data[key]


def as_int(value: Any, key: str, minimum: int | None = None) -> int:
    """``value`` as an integer (bools refused), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, got {value!r}", key=key)
    if minimum is not None and value < minimum:
        raise ConfigError(f"must be >= {minimum}, got {value}", key=key)
    return value


def close_names(name: str, valid: list[str], n: int = 5) -> str:
    """A hint listing the valid names closest to ``name``."""
    close = difflib.get_close_matches(name, valid, n=n, cutoff=0.4)
    shown = close or valid[:n]
    return "close valid names: " + ", ".join(shown) if shown else "the model has no such layers"

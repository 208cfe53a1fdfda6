"""User-facing errors.

Every error a user can cause (bad file, bad key, impossible request) is a
:class:`RankSearchError`. The CLI prints its message and exits non-zero without a
traceback; library users can catch it.
"""

from __future__ import annotations

from pathlib import Path


class RankSearchError(Exception):
    """An error caused by user input; its message is meant for the user."""


class ConfigError(RankSearchError):
    """A malformed or invalid configuration value.

    The message names the source (file), the key (dotted path) and the reason.
    """

    def __init__(self, reason: str, *, key: str | None = None, source: str | Path | None = None) -> None:
        self.reason = reason
        self.key = key
        self.source = str(source) if source is not None else None
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.source:
            parts.append(self.source)
        if self.key:
            parts.append(f"key '{self.key}'")
        parts.append(self.reason)
        return ": ".join(parts)

    def with_source(self, source: str | Path) -> ConfigError:
        """A copy of this error that names ``source`` as the file."""
        return ConfigError(self.reason, key=self.key, source=source)


class DataError(RankSearchError):
    """A missing or malformed dataset."""


class BudgetError(RankSearchError):
    """A MACs or latency budget that cannot be met."""


class SearchStopped(RankSearchError):
    """A search stopped before its trials ended, for a cause outside the trials (no space left on
    the device, the data gone); ``search --resume`` continues it once the cause is fixed.
    ``retry_failed``: the trials the cause failed are rerun only with ``--retry-failed``."""

    def __init__(self, reason: str, *, retry_failed: bool = False) -> None:
        self.reason = reason
        self.retry_failed = retry_failed
        super().__init__(reason)

    @classmethod
    def no_space(cls, where: object) -> SearchStopped:
        """No space left on the device (or quota) while writing ``where``."""
        return cls(f"no space left on the device writing {where}: free some space")

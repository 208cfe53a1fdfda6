"""A dependency-free progress bar on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """Shows ``epoch E/N [#####.....] step/steps`` on one line (TTY only) and one line per epoch.

    A disabled bar does nothing, so the loop can call it unconditionally.
    """

    def __init__(
        self,
        epochs: int,
        steps: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        width: int = 30,
        interval_s: float = 0.2,
    ) -> None:
        self.epochs = epochs
        self.steps = max(1, steps)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.interval_s = interval_s
        self.epoch = 0
        self._last = 0.0
        self._tty = enabled and bool(getattr(self.stream, "isatty", lambda: False)())

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._last = 0.0

    def update(self, step: int) -> None:
        """Redraw after ``step`` steps of the current epoch (rate-limited, TTY only)."""
        now = time.monotonic()
        if not self._tty or (now - self._last < self.interval_s and step < self.steps):
            return
        self._last = now
        done = int(self.width * min(step, self.steps) / self.steps)
        bar = "#" * done + "." * (self.width - done)
        self.stream.write(f"\repoch {self.epoch}/{self.epochs} [{bar}] {step}/{self.steps}")
        self.stream.flush()

    def message(self, text: str) -> None:
        """Print ``text`` on its own line (clearing the bar)."""
        if not self.enabled:
            return
        if self._tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

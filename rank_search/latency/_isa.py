"""The CPU's vector width and the rank multiple ("fast shape") it favours.

ONNX Runtime's CPU convolutions (and oneDNN's in PyTorch) work on channel blocks of the vector
width in float32 lanes: 16 with AVX-512, 8 with AVX2. A conv whose channel count is not a multiple
of the block loses the blocked (NCHWc) layout in ONNX Runtime and ran 1.3-1.5x slower on the
development machine despite fewer MACs (rank 29 vs 32, 61 vs 64). :func:`default_round_to` is
that block: the default ``round_to`` of search spaces. ``RANK_SEARCH_ROUND_TO`` overrides it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from ..errors import RankSearchError

__all__ = ["ENV", "cpu_flags", "default_round_to", "round_to_reason"]

ENV = "RANK_SEARCH_ROUND_TO"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _isa_round_to(flags: frozenset[str]) -> tuple[int, str]:
    if "avx512f" in flags:
        return 16, "AVX-512 CPU: 16 float32 lanes"
    if "avx2" in flags:
        return 8, "AVX2 CPU: 8 float32 lanes"
    return 1, "no AVX2/AVX-512 flags found"


def round_to_reason(flags: frozenset[str] | None = None) -> tuple[int, str]:
    """The default ``round_to`` and why (environment override or instruction set)."""
    value = os.environ.get(ENV)
    if value is not None:
        if not value.isdigit() or int(value) < 1:
            raise RankSearchError(f"environment variable {ENV}: expected an integer >= 1, got {value!r}")
        return int(value), f"set by {ENV}"
    return _isa_round_to(cpu_flags() if flags is None else flags)


def default_round_to() -> int:
    """The rank multiple a search space uses when it sets no ``round_to`` (see module docstring)."""
    return round_to_reason()[0]

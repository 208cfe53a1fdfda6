"""Per-image validation outcomes and the paired test that compares two of them.

Every trial of a search is evaluated on the same validation images in the same order (one
split seed, one data order; :mod:`rank_search.train.loop`), so two trials can be compared image by
image: only the images one of them gets right and the other wrong (the *discordant* pairs) carry
information about which is better (McNemar 1947). A trial record keeps its last validation's
outcomes packed one bit per image (:func:`encode_outcomes`), about 340 characters for 2,000
images.

The test (:func:`mcnemar_p`) is McNemar's exact one-sided test: under "neither is better" each
discordant image is a fair coin, so the chance that ``a`` wins ``wins`` or more of ``n`` discordant
images is a binomial tail. It is exact for any ``n`` (no chi-square approximation) and needs no
assumption about how the trials' accuracies vary from seed to seed.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PairedComparison", "compare", "decode_outcomes", "encode_outcomes", "mcnemar_p"]

FORMAT = "bits-v1"


def encode_outcomes(correct: np.ndarray) -> dict[str, Any]:
    """JSON-ready packing of a boolean vector (image ``i`` right or wrong), with a digest of it."""
    flags = np.asarray(correct, dtype=bool).ravel()
    packed = np.packbits(flags)
    return {
        "format": FORMAT,
        "n": int(flags.size),
        "bits": base64.b64encode(packed.tobytes()).decode("ascii"),
    }


def decode_outcomes(data: Any) -> np.ndarray | None:
    """The boolean vector of :func:`encode_outcomes`' dict, or None when ``data`` is not one."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    n, bits = data.get("n"), data.get("bits")
    if not isinstance(n, int) or n < 0 or not isinstance(bits, str):
        return None
    try:
        raw = np.frombuffer(base64.b64decode(bits.encode("ascii"), validate=True), dtype=np.uint8)
    except ValueError:
        return None
    if raw.size != (n + 7) // 8:
        return None
    return np.unpackbits(raw)[:n].astype(bool)


def outcomes_digest(correct: np.ndarray) -> str:
    """A short digest of an outcome vector (to tell identical evaluations apart in reports)."""
    return hashlib.sha256(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).hexdigest()[:12]


def mcnemar_p(wins: int, losses: int) -> float:
    """One-sided exact McNemar p-value that ``a`` is better than ``b``: the chance of ``wins`` or
    more successes in ``wins + losses`` fair coin flips (1.0 when there are no discordant pairs)."""
    if wins < 0 or losses < 0:
        raise ValueError(f"counts must be >= 0, got wins={wins}, losses={losses}")
    n = wins + losses
    if n == 0:
        return 1.0
    # log-space binomial tail: exact and safe for n in the tens of thousands
    logs = [_log_comb(n, k) - n * math.log(2.0) for k in range(wins, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


@dataclass(frozen=True)
class PairedComparison:
    """``a`` against ``b`` on the same images: ``wins`` (a right, b wrong), ``losses`` (the reverse),
    the one-sided McNemar ``p`` that a is better, and the paired z-score ``(wins - losses) /
    sqrt(wins + losses)`` (0 without discordant images)."""

    wins: int
    losses: int
    p: float

    @property
    def z(self) -> float:
        n = self.wins + self.losses
        return 0.0 if n == 0 else (self.wins - self.losses) / math.sqrt(n)


def compare(a: np.ndarray, b: np.ndarray) -> PairedComparison:
    """Paired comparison of two outcome vectors of the same images (same length, same order)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"outcome vectors differ in length: {a.size} and {b.size}")
    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    return PairedComparison(wins, losses, mcnemar_p(wins, losses))

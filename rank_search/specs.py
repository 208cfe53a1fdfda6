"""The two records of the rank-config schema that the cost code builds: a layer's format and
ranks (:class:`LayerSpec`) and a config's cost (:class:`Cost`).

They sit below :mod:`rank_search.cost` so that the cost sums can return them without importing
:mod:`rank_search.config`, which stands above cost and convert (its ``RankConfig.build`` and
``.compute_cost`` call them). :mod:`rank_search.config` re-exports both; import them from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RANK_KEYS = {"dense": (), "tucker2": ("rank_in", "rank_out"), "svd": ("rank",)}


@dataclass(frozen=True)
class LayerSpec:
    """One layer's format and ranks."""

    format: str
    rank_in: int | None = None
    rank_out: int | None = None
    rank: int | None = None

    def ranks(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in RANK_KEYS[self.format]}

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, **self.ranks()}

    @classmethod
    def tucker2(cls, rank_in: int, rank_out: int) -> LayerSpec:
        return cls("tucker2", rank_in=rank_in, rank_out=rank_out)

    @classmethod
    def svd(cls, rank: int) -> LayerSpec:
        return cls("svd", rank=rank)


@dataclass(frozen=True)
class Cost:
    """MACs for one sample (conv + linear), all parameters, and the dense model's MACs."""

    macs: int
    params: int
    dense_macs: int

"""Per-layer rank allocation of a chosen config against the uniform config at the same MACs.

The uniform config keeps the chosen config's per-layer formats (dense layers stay dense) and
gives every low-rank layer the same ratio ``rho`` of its full ranks (rounded, at least 1),
with ``rho`` found by bisection so that its analytic MACs are as close as possible to the
chosen config's MACs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from .results import SearchResults, rank_ratio

if TYPE_CHECKING:
    from ..convert import LayerInfo


@dataclass(frozen=True)
class Allocation:
    """Per-layer ratios of a chosen trial and of the uniform config with about its MACs."""

    trial_id: str
    layers: pd.DataFrame  # layer, format, chosen, uniform, chosen_ranks, uniform_ranks (network order)
    chosen_macs: float
    uniform_macs: float
    uniform_ratio: float


def _uniform_specs(specs: Mapping[str, Mapping[str, Any]], infos: Mapping[str, LayerInfo],
                   ratio: float) -> dict[str, dict[str, Any]]:  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():
        fmt = spec.get("format", "dense")
        if fmt == "dense" or name not in infos or fmt not in infos[name].full_ranks:
            out[name] = {"format": fmt, **{k: v for k, v in spec.items() if k != "format"}}
            continue
        full = infos[name].full_ranks[fmt]
        out[name] = {"format": fmt, **{k: max(1, round(v * ratio)) for k, v in full.items()}}
    return out


def analytic_macs(specs: Mapping[str, Mapping[str, Any]], infos: Mapping[str, LayerInfo]) -> int:
    """MACs of the model with ``specs`` applied (conv/linear layers only, analytic)."""
    total = 0
    for name, info in infos.items():
        spec = specs.get(name, {"format": "dense"})
        fmt = spec.get("format", "dense")
        ranks = {k: int(v) for k, v in spec.items() if k != "format"}
        total += info.macs(fmt, ranks)
    return total


def uniform_ratio_at(specs: Mapping[str, Mapping[str, Any]], infos: Mapping[str, LayerInfo],
                     target_macs: float, iterations: int = 40) -> float:  # fmt: skip
    """The uniform ratio whose analytic MACs come closest to ``target_macs`` (bisection)."""
    low, high = 0.0, 1.0
    for _ in range(iterations):
        mid = (low + high) / 2
        if analytic_macs(_uniform_specs(specs, infos, mid), infos) < target_macs:
            low = mid
        else:
            high = mid
    gaps = {r: abs(analytic_macs(_uniform_specs(specs, infos, r), infos) - target_macs) for r in (low, high)}
    return min(gaps, key=lambda r: (gaps[r], r))


def _ranks_text(spec: Mapping[str, Any]) -> str:
    values = [str(v) for k, v in spec.items() if k != "format"]
    return "x".join(values) if values else "full"


def allocation_vs_uniform(results: SearchResults, trial_id: str) -> Allocation:
    """The chosen trial's per-layer ratios next to the uniform config at the same MACs."""
    record = results.records[trial_id]
    specs = dict(record["rank_config"].get("layers", {}))
    infos = results.layer_infos
    target = float(record.get("macs") or analytic_macs(specs, infos))
    ratio = uniform_ratio_at(specs, infos, target)
    uniform = _uniform_specs(specs, infos, ratio)
    rows = []
    for name in results.layers:
        spec = specs.get(name, {"format": "dense"})
        uspec = uniform.get(name, {"format": "dense"})
        rows.append({
            "layer": name, "format": spec.get("format", "dense"),
            "chosen": rank_ratio(infos.get(name), spec), "uniform": rank_ratio(infos.get(name), uspec),
            "chosen_ranks": _ranks_text(spec), "uniform_ranks": _ranks_text(uspec),
        })  # fmt: skip
    frame = pd.DataFrame(
        rows, columns=["layer", "format", "chosen", "uniform", "chosen_ranks", "uniform_ranks"]
    )
    uniform_macs = float(analytic_macs(uniform, infos)) if infos else math.nan
    return Allocation(trial_id, frame, target, uniform_macs, ratio)

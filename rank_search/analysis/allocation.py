"""Per-layer rank allocation of a chosen config against the uniform reference.

The uniform reference is the search's own uniform starting point
(:func:`rank_search.search.budget.uniform_sample` over the search's space): at the search's
budget when the chosen trial was projected onto it (``at_budget`` mode), else at the chosen
trial's MACs. It is never above that MACs target. When the space file cannot be read any
more, the reference keeps the chosen config's per-layer formats and gives every low-rank
layer the largest common ratio within the target (:func:`rank_search.uniform.uniform_ratio_bounds`,
the same bisection).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import RankSearchError
from .results import SearchResults, rank_ratio

if TYPE_CHECKING:
    from ..config import LayerSpec
    from ..convert import LayerInfo


@dataclass(frozen=True)
class Allocation:
    """Per-layer ratios of a chosen trial and of the uniform reference (``uniform_source``
    says which one it is and at which MACs target)."""

    trial_id: str
    layers: pd.DataFrame  # layer, format, chosen, uniform, chosen_ranks, uniform_ranks (network order)
    chosen_macs: float
    uniform_macs: float
    uniform_ratio: float  # median rank ratio of the uniform reference's low-rank layers
    uniform_source: str = "uniform ratio"


def _specs(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, LayerSpec]:
    from ..config import parse_layer_spec

    return {name: parse_layer_spec(dict(spec), f"layers.{name}") for name, spec in raw.items()}


def _search_uniform(results: SearchResults, target: float) -> dict[str, LayerSpec] | None:
    """The search's uniform starting point at ``target`` MACs, or None if its space is gone."""
    from ..search.budget import uniform_sample
    from ..search.space import load_space, resolve_space

    raw = results.manifest.raw
    try:
        space = load_space(str(raw["space"]))
        resolved = resolve_space(
            space,
            str(raw["model"]),
            list(results.layer_infos.values()),
            num_classes=int(raw.get("num_classes", 10)),
            input_size=tuple(int(v) for v in raw["input_size"]),  # type: ignore[arg-type]
        )
    except (KeyError, TypeError, ValueError, OSError, RankSearchError):
        return None
    layers = resolved.layer_specs(uniform_sample(resolved, target))
    return {name: spec for name, spec in layers.items() if spec.format != "dense"}


def _bisected_uniform(
    specs: Mapping[str, LayerSpec], infos: Mapping[str, LayerInfo], target: float
) -> dict[str, LayerSpec]:
    """The chosen config's formats, every low-rank layer at the largest common ratio within ``target``."""
    from ..uniform import uniform_layers, uniform_ratio_bounds

    formats = {n: s.format for n, s in specs.items() if n in infos and infos[n].allows(s.format)}
    ratio, _ = uniform_ratio_bounds(infos, formats, target, steps=40)
    return uniform_layers(infos, ratio, formats)


def _ranks_text(spec: Mapping[str, Any]) -> str:
    values = [str(v) for k, v in spec.items() if k != "format"]
    return "x".join(values) if values else "full"


def _target(results: SearchResults, chosen_macs: float) -> tuple[float, str]:
    """The MACs the uniform reference may spend, and the words for it."""
    budget = results.manifest.budget_macs
    if budget and results.manifest.mode == "at_budget" and chosen_macs <= budget:
        return float(budget), "the search's uniform starting point at its budget"
    return chosen_macs, "the uniform starting point at the chosen trial's MACs"


def allocation_vs_uniform(results: SearchResults, trial_id: str) -> Allocation:
    """The chosen trial's per-layer ratios next to the uniform reference (see the module doc)."""
    from ..cost import analytic_macs

    record = results.records[trial_id]
    infos = results.layer_infos
    specs = _specs(record["rank_config"].get("layers", {}))
    known = {n: s for n, s in specs.items() if n in infos}
    chosen_macs = float(record.get("macs") or analytic_macs(infos, known))
    target, source = _target(results, chosen_macs)
    uniform = _search_uniform(results, target) if infos else None
    if uniform is None:
        uniform = _bisected_uniform(specs, infos, target) if infos else {}
        source = "uniform ratio (chosen formats) within the chosen trial's MACs"
        if target != chosen_macs:
            source = "uniform ratio (chosen formats) within the search's budget"
    rows = []
    for name in results.layers:
        spec = specs[name].to_dict() if name in specs else {"format": "dense"}
        uspec = uniform[name].to_dict() if name in uniform else {"format": "dense"}
        rows.append(
            {
                "layer": name,
                "format": spec["format"],
                "chosen": rank_ratio(infos.get(name), spec),
                "uniform": rank_ratio(infos.get(name), uspec),
                "chosen_ranks": _ranks_text(spec),
                "uniform_ranks": _ranks_text(uspec),
            }
        )
    frame = pd.DataFrame(
        rows, columns=["layer", "format", "chosen", "uniform", "chosen_ranks", "uniform_ranks"]
    )
    uniform_macs = float(analytic_macs(infos, uniform)) if infos else math.nan
    ratios = [rank_ratio(infos.get(n), s.to_dict()) for n, s in uniform.items() if s.format != "dense"]
    ratio = float(pd.Series(ratios, dtype=float).median()) if ratios else math.nan
    return Allocation(trial_id, frame, chosen_macs, uniform_macs, ratio, f"{source} ({target:,.0f} MACs)")

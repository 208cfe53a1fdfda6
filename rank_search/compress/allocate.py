"""Allocation baselines for compressing a trained model, each under the search's hard budget and
rounding: uniform, spectral energy (BALF-style) and measured sensitivity (AIMET-style).

All three choose, per unit of a resolved search space (a layer, or a tied stage or block), one of
the unit's rank levels (:meth:`rank_search.search.space.Unit.levels`, thinned to at most
``max_levels``), so their configs are points of the space the search samples: the same
``round_to``, the same rank bounds, the same MACs formulas. The energy and sensitivity methods
score every (unit, level) and solve the multiple-choice knapsack "maximize the summed score with
total MACs within the budget" exactly by dynamic programming over MACs (:func:`knapsack`; each
option's MACs rounded up to the grid, so the answer never exceeds the budget).

* energy: a layer's score is the fraction of its weight's energy ``||W||_F^2`` that the truncated
  decomposition keeps (Tucker-2: ``||G||^2 / ||W||^2`` after HOSVD + HOOI; SVD: the top-r
  singular values' share), summed over the unit's layers: no data, milliseconds.
* sensitivity: a unit's score at a level is the validation accuracy of the trained network with
  only that unit truncated (BatchNorm recalibrated), measured by :mod:`.sensitivity`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import LayerSpec
from ..layers import HOOI_SWEEPS, tucker2_hooi
from ..search.space import ResolvedSpace, Sample, UnitChoice

__all__ = [
    "ALLOCATIONS",
    "Option",
    "choose",
    "energy_scores",
    "knapsack",
    "retained_energy",
    "unit_options",
]

ALLOCATIONS = ("uniform", "energy", "sensitivity")
GRID = 4000  # MACs grid of the knapsack (budget headroom / GRID per step)


@dataclass(frozen=True)
class Option:
    """One setting of a unit: its format and value (ratio or rank) and the MACs it adds to dense."""

    unit: str
    format: str
    value: float
    macs_delta: int


def _thin(levels: Sequence[float], max_levels: int | None) -> list[float]:
    if max_levels is None or len(levels) <= max_levels:
        return list(levels)
    picks = np.unique(np.round(np.linspace(0, len(levels) - 1, max_levels)).astype(int))
    return [levels[i] for i in picks]


def unit_options(space: ResolvedSpace, max_levels: int | None = None) -> dict[str, list[Option]]:
    """Every unit's candidate settings (each low-rank format at each of its levels)."""
    out: dict[str, list[Option]] = {}
    for unit in space.units:
        options = [
            Option(unit.key, fmt, value, unit.macs_delta(fmt, value))
            for fmt in unit.low_rank_formats
            for value in _thin(unit.levels(), max_levels)
        ]
        if "dense" in unit.formats:
            options.append(Option(unit.key, "dense", unit.value_bounds[1], 0))
        out[unit.key] = options
    return out


def knapsack(
    options: Mapping[str, Sequence[Option]], scores: Mapping[Option, float], headroom: float
) -> dict[str, Option]:
    """The option per unit maximizing the summed score with summed ``macs_delta`` at most
    ``headroom`` (budget minus dense MACs, so <= 0 when compressing); exact on a MACs grid with
    costs rounded up. Raises ``ValueError`` when even the cheapest options exceed it."""
    keys = list(options)
    floors = {k: min(o.macs_delta for o in options[k]) for k in keys}
    capacity = headroom - sum(floors.values())
    if capacity < 0:
        raise ValueError("the cheapest setting of every unit is above the budget")
    step = max(capacity / GRID, 1.0)
    bins = int(capacity // step)
    best = np.zeros(bins + 1)
    picks: list[np.ndarray] = []
    for key in keys:
        new = np.full(bins + 1, -np.inf)
        pick = np.full(bins + 1, -1, dtype=int)
        for index, option in enumerate(options[key]):
            cost = math.ceil((option.macs_delta - floors[key]) / step - 1e-9)
            if cost > bins:
                continue
            candidate = np.full(bins + 1, -np.inf)
            candidate[cost:] = best[: bins + 1 - cost] + scores[option]
            better = candidate > new
            new[better], pick[better] = candidate[better], index
        best = new
        picks.append(pick)
    b = int(np.argmax(best))
    chosen: dict[str, Option] = {}
    for key, pick in zip(reversed(keys), reversed(picks), strict=True):
        option = options[key][int(pick[b])]
        chosen[key] = option
        b -= math.ceil((option.macs_delta - floors[key]) / step - 1e-9)
    return {key: chosen[key] for key in keys}


class _Spectra:
    """One layer's kernel (float64), its energy and, once computed, its singular values."""

    def __init__(self, weight: Tensor) -> None:
        self.w = weight.detach().double()
        self.total = float(self.w.square().sum())
        self._s: Tensor | None = None

    def tucker2(self, rank_out: int, rank_in: int) -> float:
        core, _, _ = tucker2_hooi(
            self.w, rank_out, rank_in, HOOI_SWEEPS
        )  # the decomposition trials start from
        return float(core.square().sum()) / self.total

    def svd(self, rank: int) -> float:
        if self._s is None:
            self._s = torch.linalg.svdvals(self.w.flatten(1))
        return float(self._s[:rank].square().sum()) / self.total


def retained_energy(weight: Tensor, spec: LayerSpec, spectra: _Spectra | None = None) -> float:
    """Share of ``||W||_F^2`` that ``spec``'s truncated decomposition of ``weight`` keeps: Tucker-2
    by HOSVD + HOOI (:func:`rank_search.layers.tucker2_hooi`, the decomposition a warm start
    uses), SVD by the top-r singular values."""
    spectra = spectra or _Spectra(weight)
    if spec.format == "dense" or spectra.total == 0.0:
        return 1.0
    if spec.format == "tucker2":
        return spectra.tucker2(int(spec.rank_out), int(spec.rank_in))  # type: ignore[arg-type]
    return spectra.svd(int(spec.rank))  # type: ignore[arg-type]


def energy_scores(
    space: ResolvedSpace, options: Mapping[str, Sequence[Option]], weights: Mapping[str, Tensor]
) -> dict[Option, float]:
    """Each option's summed retained energy over its unit's layers (``weights``: dense kernels by
    layer name); each layer's kernel is converted and its energy summed once."""
    spectra: dict[str, _Spectra] = {}
    scores = {}
    for key, unit_opts in options.items():
        unit = space.unit(key)
        for option in unit_opts:
            total = 0.0
            for name, spec in unit.layer_specs(option.format, option.value).items():
                layer = spectra.setdefault(name, _Spectra(weights[name]))
                total += retained_energy(weights[name], spec, layer)
            scores[option] = total
    return scores


def choose(space: ResolvedSpace, chosen: Mapping[str, Option], base: Sample) -> Sample:
    """The space sample of a knapsack answer (regularizer and training overrides of ``base``)."""
    units = {key: UnitChoice(option.format, option.value) for key, option in chosen.items()}
    return Sample(units, base.regularizer, dict(base.train))

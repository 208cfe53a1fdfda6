"""MACs budgets: parsing, the smallest reachable budget, projection onto a budget, uniform configs.

All costs are analytic MACs (multiply-accumulates of conv and linear layers, one sample),
computed from :meth:`LayerInfo.macs` before any training.

Projection (the repair applied to every sampled config, so no trial trains over budget):

1. A sample over the budget is scaled down: every low-rank unit's value (ratio or rank)
   is multiplied by one factor ``s`` in [0, 1] (kept within the unit's range, ranks
   re-rounded), with ``s`` the largest factor that fits, found by bisection. MACs are
   monotone in ``s``, so bisection is exact up to rounding steps.
2. If even ``s = 0`` (every low-rank unit at its minimum) is over the budget, units sampled
   as ``dense`` switch to their cheapest low-rank format, largest layers first, and if needed
   every unit takes its cheapest format.
3. Rounding makes MACs a step function of ``s``, so a greedy fill follows: units are raised
   one rank level at a time, round-robin in execution order, never above their sampled
   value (or above the range's top when scaling up), while the total stays within budget.

With ``fill_up`` (``at_budget`` mode) a sample under the budget is scaled *up* the same
way (by ``s >= 1``), so every trial spends the budget and trials compare allocations, not
sizes. In ``front`` mode only over-budget samples are changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import REGULARIZER_NAMES, RegularizerSpec
from ..errors import BudgetError, ConfigError
from .space import ResolvedSpace, Sample, Unit, UnitChoice

__all__ = [
    "Budget",
    "Projection",
    "check_budget",
    "parse_budget",
    "project",
    "smallest_macs",
    "smallest_sample",
    "uniform_sample",
]

_BISECT_STEPS = 40


@dataclass(frozen=True)
class Budget:
    """A MACs budget: a fraction of the dense model's MACs, or an absolute count."""

    fraction: float | None = None
    macs: int | None = None

    def resolve(self, dense_macs: int) -> int:
        """The budget in MACs for a model whose dense MACs are ``dense_macs``."""
        if self.macs is not None:
            return self.macs
        assert self.fraction is not None
        return int(self.fraction * dense_macs)

    def to_dict(self) -> dict[str, Any]:
        return {"macs": self.macs} if self.macs is not None else {"fraction": self.fraction}


def parse_budget(value: Any, key: str = "budget") -> Budget:
    """``0.5``, ``{fraction: 0.5}`` or ``{macs: 20000000}``."""
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in ("fraction", "macs"):
            raise ConfigError(f"expected {{fraction: F}} or {{macs: N}}, got {value!r}", key=key)
        name, number = next(iter(value.items()))
        if name == "macs":
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise ConfigError(f"expected an integer >= 1, got {number!r}", key=f"{key}.macs")
            return Budget(macs=number)
        return Budget(fraction=_fraction(number, f"{key}.fraction"))
    return Budget(fraction=_fraction(value, key))


def _fraction(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(f"expected a fraction of the dense MACs in (0, 1], got {value!r}", key=key)
    return float(value)


# --- smallest reachable budget ------------------------------------------------------------------


def _cheapest_format(unit: Unit, value: float) -> str:
    return min(unit.formats, key=lambda fmt: unit.macs_delta(fmt, value))


def smallest_sample(space: ResolvedSpace) -> Sample:
    """Every unit at its minimum value in its cheapest format at that value."""
    units = {}
    for unit in space.units:
        lo = unit.value_bounds[0]
        units[unit.key] = UnitChoice(_cheapest_format(unit, lo), lo)
    return Sample(units)


def smallest_macs(space: ResolvedSpace) -> int:
    """The smallest MACs any config of the space reaches."""
    return space.macs(smallest_sample(space))


def check_budget(space: ResolvedSpace, budget_macs: int) -> None:
    """Raise :class:`BudgetError` if no config of the space fits ``budget_macs``."""
    least = smallest_macs(space)
    if budget_macs < least:
        dense = space.dense_macs
        fraction = math.ceil(least / dense * 1e4) / 1e4  # rounded up, so it is reachable as given
        raise BudgetError(
            f"budget {budget_macs:,} MACs ({budget_macs / dense:.4f} of dense {dense:,}) is below "
            f"the smallest config space {space.space.source} allows for {space.model}: {least:,} MACs "
            f"({least / dense:.4f} of dense), every searched layer at its minimum rank and cheapest format. "
            f"Smallest reachable budget: fraction {fraction:.4f} or {{macs: {least}}}; "
            "or widen the space's rank ranges."
        )


# --- projection ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    """A sample repaired to fit a budget, with the sampled and final MACs."""

    sample: Sample
    macs: int
    sampled_macs: int
    scale: float
    projected: bool


def _scaled(space: ResolvedSpace, sample: Sample, s: float) -> Sample:
    units = {}
    for unit in space.units:
        choice = sample.units[unit.key]
        if choice.format == "dense":
            units[unit.key] = choice
        else:
            units[unit.key] = UnitChoice(choice.format, unit.clamp(choice.value * s))
    return sample.replace_units(units)


def _bisect(fits: Callable[[float], bool], lo: float, hi: float) -> float:
    """Largest ``x`` in ``[lo, hi]`` with ``fits(x)``, given ``fits(lo)`` and monotone ``fits``."""
    if fits(hi):
        return hi
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _fill(space: ResolvedSpace, sample: Sample, caps: Mapping[str, float], budget: int) -> Sample:
    """Raise units one rank level at a time (round-robin, up to ``caps``) while within budget."""
    units = dict(sample.units)
    total = space.macs(sample)
    levels = {u.key: u.levels() for u in space.units}
    changed = True
    while changed:
        changed = False
        for unit in space.units:
            choice = units[unit.key]
            if choice.format == "dense":
                continue
            higher = [v for v in levels[unit.key] if choice.value < v <= caps[unit.key] + 1e-12]
            if not higher:
                continue
            delta = unit.macs_delta(choice.format, higher[0]) - unit.macs_delta(choice.format, choice.value)
            if total + delta <= budget:
                units[unit.key] = UnitChoice(choice.format, higher[0])
                total += delta
                changed = True
    return sample.replace_units(units)


def _make_reachable(space: ResolvedSpace, sample: Sample, budget: int) -> Sample:
    """Switch dense units (largest first), then all units, to cheap formats until ``s=0`` fits."""
    if space.macs(_scaled(space, sample, 0.0)) <= budget:
        return sample
    units = dict(sample.units)
    dense_units = [u for u in space.units if units[u.key].format == "dense"]
    for unit in sorted(dense_units, key=lambda u: -sum(i.dense_macs for i in u.layers)):
        value = units[unit.key].value
        fmt = min(unit.low_rank_formats, key=lambda f: unit.macs_delta(f, unit.value_bounds[0]))
        units[unit.key] = UnitChoice(fmt, value)
        if space.macs(_scaled(space, sample.replace_units(units), 0.0)) <= budget:
            return sample.replace_units(units)
    for unit in space.units:
        lo = unit.value_bounds[0]
        units[unit.key] = UnitChoice(_cheapest_format(unit, lo), units[unit.key].value)
    out = sample.replace_units(units)
    if space.macs(_scaled(space, out, 0.0)) > budget:
        check_budget(space, budget)
        raise BudgetError(f"cannot project the sample onto {budget:,} MACs")  # pragma: no cover
    return out


def project(space: ResolvedSpace, sample: Sample, budget_macs: int, *, fill_up: bool = False) -> Projection:
    """Repair ``sample`` so its MACs are within ``budget_macs`` (see the module docstring).

    With ``fill_up`` a sample under the budget is scaled up towards it as well.
    """
    sampled = space.macs(sample)
    if sampled <= budget_macs and not fill_up:
        return Projection(sample, sampled, sampled, 1.0, False)

    def fits(base: Sample) -> Callable[[float], bool]:
        return lambda s: space.macs(_scaled(space, base, s)) <= budget_macs

    if sampled > budget_macs:
        base = _make_reachable(space, sample, budget_macs)
        scale = _bisect(fits(base), 0.0, 1.0)
        caps = {key: choice.value for key, choice in base.units.items()}
    else:
        base = sample
        top = max(
            (u.value_bounds[1] / max(sample.units[u.key].value, 1e-12) for u in space.units), default=1.0
        )
        scale = _bisect(fits(base), 1.0, max(top, 1.0))
        caps = {u.key: u.value_bounds[1] for u in space.units}
    out = _fill(space, _scaled(space, base, scale), caps, budget_macs)
    macs = space.macs(out)
    changed = out.units != sample.units
    return Projection(out if changed else sample, macs, sampled, scale, changed)


# --- uniform starting point ---------------------------------------------------------------------


def _uniform(space: ResolvedSpace, ratio: float, fmt: str, base: Sample) -> Sample:
    units = {}
    for unit in space.units:
        unit_fmt = fmt if fmt in unit.formats else unit.low_rank_formats[0]
        if unit.group.kind == "ratio":
            value = ratio
        else:
            value = ratio * max(max(f.values()) for i in unit.layers for f in i.full_ranks.values())
        units[unit.key] = UnitChoice(unit_fmt, unit.clamp(value))
    return base.replace_units(units)


def uniform_sample(
    space: ResolvedSpace,
    budget_macs: int,
    *,
    fmt: str = "tucker2",
    train_defaults: Mapping[str, float] | None = None,
) -> Sample:
    """The same rank ratio in every unit (Tucker-2 where allowed), as large as the budget allows.

    The ratio is found by bisection, then the rounding gap is filled one rank level at a time,
    so the result lands within about 1% of the budget whenever the space can reach it.
    Regularizer: ``dso`` at 1e-3 where the space allows it; train values: ``train_defaults``,
    both clamped into the space's ranges.
    """
    base = Sample({}, _default_regularizer(space), _default_train(space, train_defaults or {}))

    def fits(ratio: float) -> bool:
        return space.macs(_uniform(space, ratio, fmt, base)) <= budget_macs

    if not fits(0.0):
        return _uniform(space, 0.0, fmt, base)
    ratio = _bisect(fits, 0.0, 1.0)
    caps = {u.key: u.value_bounds[1] for u in space.units}
    return _fill(space, _uniform(space, ratio, fmt, base), caps, budget_macs)


def _default_regularizer(space: ResolvedSpace) -> RegularizerSpec:
    reg = space.space.regularizer
    if reg is None:
        return RegularizerSpec()
    kind = "dso" if "dso" in reg.kinds else next(k for k in REGULARIZER_NAMES if k in reg.kinds)
    return RegularizerSpec(kind, min(max(1e-3, reg.weight[0]), reg.weight[1]))


def _default_train(space: ResolvedSpace, defaults: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for name, (lo, hi) in space.space.train.items():
        value = defaults.get(name, (lo * hi) ** 0.5)
        out[name] = min(max(float(value), lo), hi)
    return out

"""Budgets: parsing, the smallest reachable budget, projection onto a budget, uniform configs.

A budget limits a *cost* of the sampled config, known before any training:

* MACs (:data:`MACS`): analytic multiply-accumulates of conv and linear layers, one sample,
  from :meth:`LayerInfo.macs` (``budget: 0.5``, ``{fraction: F}`` or ``{macs: N}``);
* latency (:class:`LatencyCost`): the latency in ms of a batch on a device, *predicted* from
  a prefilled per-layer :class:`~rank_search.latency.LatencyTable` without measuring
  (``budget: {latency_ms: X, device: cpu, batch_size: 32}``).

Every function below takes the cost as a :class:`CostModel` (default: MACs), so both budgets
share one code path.

Projection (the repair applied to every sampled config, so no trial trains over budget):

1. A sample over the budget is scaled down: every low-rank unit's value (ratio or rank)
   is multiplied by one factor ``s`` in [0, 1] (kept within the unit's range, ranks
   re-rounded), with ``s`` the largest factor that fits, found by bisection. MACs are
   monotone in ``s``, so bisection is exact up to rounding steps; measured latency is only
   roughly monotone, but bisection only ever keeps a factor that fits, so the result fits.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..config import REGULARIZER_NAMES, RegularizerSpec
from ..errors import BudgetError, ConfigError
from ..uniform import largest_fitting
from .space import ResolvedSpace, Sample, Unit, UnitChoice

if TYPE_CHECKING:
    from ..latency import LatencyBudget, LatencyTable

__all__ = [
    "MACS",
    "Budget",
    "CostModel",
    "LatencyCost",
    "MacsCost",
    "Projection",
    "check_budget",
    "parse_budget",
    "project",
    "smallest_cost",
    "smallest_macs",
    "smallest_sample",
    "uniform_formats",
    "uniform_sample",
]

_BISECT_STEPS = 40


@dataclass(frozen=True)
class Budget:
    """A MACs budget (a fraction of the dense model's MACs, or an absolute count) or a
    latency budget (``latency``: ms per batch on a device)."""

    fraction: float | None = None
    macs: int | None = None
    latency: LatencyBudget | None = None

    def resolve(self, dense_macs: int) -> int:
        """The budget in MACs for a model whose dense MACs are ``dense_macs`` (MACs budgets only)."""
        if self.macs is not None:
            return self.macs
        if self.fraction is None:
            raise ValueError("a latency budget has no MACs value")
        return int(self.fraction * dense_macs)

    def to_dict(self) -> dict[str, Any]:
        if self.latency is not None:
            return self.latency.to_dict()
        return {"macs": self.macs} if self.macs is not None else {"fraction": self.fraction}


def parse_budget(value: Any, key: str = "budget") -> Budget:
    """``0.5``, ``{fraction: 0.5}``, ``{macs: 20000000}`` or
    ``{latency_ms: 3.0, device: cpu, batch_size: 32, threads: N}`` (see
    :func:`rank_search.latency.parse_latency_budget` for the latency keys)."""
    if isinstance(value, dict) and _is_latency(value):
        return _parse_latency(value, key)
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


def _is_latency(value: Mapping[str, Any]) -> bool:
    from ..latency import LATENCY_KEYS

    return any(k in LATENCY_KEYS for k in value)


def _parse_latency(value: Mapping[str, Any], key: str) -> Budget:
    from ..latency import parse_latency_budget

    latency = parse_latency_budget(value, key=key, other_keys=("fraction", "macs"))
    mixed = sorted(k for k in ("fraction", "macs") if k in value)
    if latency is None or mixed:
        raise ConfigError(
            f"a budget is either MACs ({{fraction: F}} or {{macs: N}}) or latency "
            f"({{latency_ms: X, device: D, batch_size: B}}), not both; got {value!r}",
            key=key,
        )
    return Budget(latency=latency)


def _fraction(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(f"expected a fraction of the dense MACs in (0, 1], got {value!r}", key=key)
    return float(value)


# --- costs -----------------------------------------------------------------------------------------


class CostModel(Protocol):
    """What a budget limits: a cost of a sample, known before training (MACs or predicted latency)."""

    @property
    def metric(self) -> str:
        """Name of the cost in trial records and Ray metrics (``macs`` | ``latency_ms``)."""
        ...

    def __call__(self, space: ResolvedSpace, sample: Sample) -> float:
        """The cost of ``sample`` (lower is cheaper)."""
        ...

    def below_smallest(self, space: ResolvedSpace, budget: float, least: float) -> BudgetError:
        """The error for a ``budget`` below the smallest reachable cost ``least``."""
        ...


@dataclass(frozen=True)
class MacsCost:
    """Analytic MACs (conv + linear, one sample)."""

    metric: str = "macs"

    def __call__(self, space: ResolvedSpace, sample: Sample) -> float:
        return space.macs(sample)

    def below_smallest(self, space: ResolvedSpace, budget: float, least: float) -> BudgetError:
        budget_macs, least_macs, dense = int(budget), int(least), space.dense_macs
        fraction = math.ceil(least_macs / dense * 1e4) / 1e4  # rounded up, so it is reachable as given
        return BudgetError(
            f"budget {budget_macs:,} MACs ({budget_macs / dense:.4f} of dense {dense:,}) is below "
            f"the smallest config space {space.space.source} allows for {space.model}: {least_macs:,} MACs "
            f"({least_macs / dense:.4f} of dense), every searched layer at its minimum rank and cheapest "
            f"format. Smallest reachable budget: fraction {fraction:.4f} or {{macs: {least_macs}}}; "
            "or widen the space's rank ranges."
        )


MACS = MacsCost()


@dataclass(frozen=True)
class LatencyCost:
    """Predicted latency (ms per batch of ``batch_size``) from a prefilled ``table``; never measures.

    Picklable (the searcher holding it goes into Ray's experiment checkpoints).
    """

    table: LatencyTable
    batch_size: int
    metric: str = "latency_ms"

    def __call__(self, space: ResolvedSpace, sample: Sample) -> float:
        from ..latency import latency_of_config

        return latency_of_config(self.table, space.rank_config(sample), self.batch_size, measure=False)

    def below_smallest(self, space: ResolvedSpace, budget: float, least: float) -> BudgetError:
        reachable = math.ceil(least * 1e3) / 1e3  # rounded up, so it is reachable as given
        return BudgetError(
            f"latency budget {budget:.3f} ms (batch {self.batch_size}, {self.table.key}) is below the "
            f"smallest latency config space {space.space.source} reaches for {space.model}: {least:.3f} ms "
            "predicted, every searched layer at its minimum rank and fastest format. Smallest reachable "
            f"latency: {{latency_ms: {reachable}}}; or widen the space's rank ranges."
        )


def _with(sample: Sample, units: Mapping[str, UnitChoice], key: str, choice: UnitChoice) -> Sample:
    return sample.replace_units({**units, key: choice})


def _cheapest_format(
    space: ResolvedSpace,
    cost: CostModel,
    sample: Sample,
    unit: Unit,
    value: float,
    formats: Sequence[str] | None = None,
) -> str:
    """The format (of ``formats``, default the unit's) in which ``unit`` at ``value`` costs least
    with every other unit as in ``sample`` (first one on ties)."""
    units = sample.units
    return min(
        formats or unit.formats,
        key=lambda f: cost(space, _with(sample, units, unit.key, UnitChoice(f, value))),
    )


# --- smallest reachable budget ------------------------------------------------------------------


def smallest_sample(space: ResolvedSpace, cost: CostModel = MACS) -> Sample:
    """Every unit at its minimum value in its cheapest format at that value."""
    sample = Sample({u.key: UnitChoice(u.formats[0], u.value_bounds[0]) for u in space.units})
    for unit in space.units:
        lo = unit.value_bounds[0]
        fmt = _cheapest_format(space, cost, sample, unit, lo)
        sample = _with(sample, sample.units, unit.key, UnitChoice(fmt, lo))
    return sample


def smallest_cost(space: ResolvedSpace, cost: CostModel = MACS) -> float:
    """The smallest cost any config of the space reaches (MACs: exact; latency: the fastest
    format per unit at the minimum rank, measured latency being only roughly monotone)."""
    return cost(space, smallest_sample(space, cost))


def smallest_macs(space: ResolvedSpace) -> int:
    """The smallest MACs any config of the space reaches."""
    return space.macs(smallest_sample(space))


def check_budget(space: ResolvedSpace, budget: float, cost: CostModel = MACS) -> None:
    """Raise :class:`BudgetError` naming the smallest reachable budget if no config fits ``budget``."""
    least = smallest_cost(space, cost)
    if budget < least:
        raise cost.below_smallest(space, budget, least)


# --- projection ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    """A sample repaired to fit a budget, with the sampled and final MACs and cost (the budget's
    unit: MACs, or predicted latency in ms)."""

    sample: Sample
    macs: int
    sampled_macs: int
    scale: float
    projected: bool
    cost: float = math.nan
    sampled_cost: float = math.nan


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
    """Largest ``x`` in ``[lo, hi]`` with ``fits(x)`` (:func:`rank_search.uniform.largest_fitting`)."""
    return largest_fitting(fits, lo, hi, _BISECT_STEPS)[0]


def _fill(
    space: ResolvedSpace, sample: Sample, caps: Mapping[str, float], fits: Callable[[Sample], bool]
) -> Sample:
    """Raise units one rank level at a time (round-robin, up to ``caps``) while the sample fits."""
    units = dict(sample.units)
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
            raised = UnitChoice(choice.format, higher[0])
            if fits(_with(sample, units, unit.key, raised)):
                units[unit.key] = raised
                changed = True
    return sample.replace_units(units)


def _make_reachable(
    space: ResolvedSpace, sample: Sample, fits: Callable[[Sample], bool], cost: CostModel, budget: float
) -> Sample:
    """Switch dense units (largest first), then all units, to cheap formats until ``s=0`` fits."""
    if fits(_scaled(space, sample, 0.0)):
        return sample
    units = dict(sample.units)
    dense_units = [u for u in space.units if units[u.key].format == "dense"]
    for unit in sorted(dense_units, key=lambda u: -sum(i.dense_macs for i in u.layers)):
        current = sample.replace_units(units)
        fmt = _cheapest_format(space, cost, current, unit, unit.value_bounds[0], unit.low_rank_formats)
        units[unit.key] = UnitChoice(fmt, units[unit.key].value)
        if fits(_scaled(space, sample.replace_units(units), 0.0)):
            return sample.replace_units(units)
    for unit in space.units:
        fmt = _cheapest_format(space, cost, sample.replace_units(units), unit, unit.value_bounds[0])
        units[unit.key] = UnitChoice(fmt, units[unit.key].value)
    out = sample.replace_units(units)
    if not fits(_scaled(space, out, 0.0)):
        check_budget(space, budget, cost)
        raise BudgetError(f"cannot project the sample onto the budget {budget:,} ({cost.metric})")
    return out


def project(
    space: ResolvedSpace, sample: Sample, budget: float, *, fill_up: bool = False, cost: CostModel = MACS
) -> Projection:
    """Repair ``sample`` so its ``cost`` (default MACs) is within ``budget`` (see the module docstring).

    With ``fill_up`` a sample under the budget is scaled up towards it as well.
    """

    def fits(candidate: Sample) -> bool:
        return cost(space, candidate) <= budget

    sampled = cost(space, sample)
    if sampled <= budget and not fill_up:
        macs = space.macs(sample)
        return Projection(sample, macs, macs, 1.0, False, sampled, sampled)

    def scaled_fits(base: Sample) -> Callable[[float], bool]:
        return lambda s: fits(_scaled(space, base, s))

    if sampled > budget:
        base = _make_reachable(space, sample, fits, cost, budget)
        scale = _bisect(scaled_fits(base), 0.0, 1.0)
        caps = {key: choice.value for key, choice in base.units.items()}
    else:
        base = sample
        top = max(
            (u.value_bounds[1] / max(sample.units[u.key].value, 1e-12) for u in space.units), default=1.0
        )
        scale = _bisect(scaled_fits(base), 1.0, max(top, 1.0))
        caps = {u.key: u.value_bounds[1] for u in space.units}
    out = _fill(space, _scaled(space, base, scale), caps, fits)
    changed = out.units != sample.units
    final = out if changed else sample
    return Projection(
        final, space.macs(final), space.macs(sample), scale, changed, cost(space, final), sampled
    )


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
    budget: float,
    *,
    fmt: str = "tucker2",
    train_defaults: Mapping[str, float] | None = None,
    cost: CostModel = MACS,
) -> Sample:
    """The same rank ratio and format in every unit, as large as the budget allows.

    The format is ``fmt`` (Tucker-2) where the budget can be met in it; when even the space's
    minimum ratio in ``fmt`` is over the budget (MobileNetV2's 1x1 convs: Tucker-2 at the
    minimum ratio costs 0.79 of dense), the next format of the space that can meet it
    (SVD), so the point stays uniform instead of being projected into a mixed config. Units
    that do not offer the format take their first low-rank format. The ratio is found by
    :func:`rank_search.uniform.largest_fitting`, then the rounding gap is filled one rank
    level at a time, so the result lands within about 1% of a MACs budget whenever the
    space can reach it. When no single format reaches the budget, the minimum ratio in
    ``fmt`` is returned (the search's projection then repairs it; it is not uniform).
    Regularizer: ``dso`` at 1e-3 where the space allows it; train values:
    ``train_defaults``, both clamped into the space's ranges.
    """
    base = Sample({}, _default_regularizer(space), _default_train(space, train_defaults or {}))

    def fits(sample: Sample) -> bool:
        return cost(space, sample) <= budget

    def fits_at(candidate: str) -> Callable[[float], bool]:
        return lambda ratio: fits(_uniform(space, ratio, candidate, base))

    for candidate in uniform_formats(space, fmt):
        if fits_at(candidate)(0.0):
            ratio = _bisect(fits_at(candidate), 0.0, 1.0)
            caps = {u.key: u.value_bounds[1] for u in space.units}
            return _fill(space, _uniform(space, ratio, candidate, base), caps, fits)
    return _uniform(space, 0.0, fmt, base)


def uniform_formats(space: ResolvedSpace, fmt: str = "tucker2") -> list[str]:
    """The formats :func:`uniform_sample` tries, in order: ``fmt``, then the space's other
    low-rank formats (sorted)."""
    others = sorted({f for unit in space.units for f in unit.low_rank_formats} - {fmt})
    return [fmt, *others]


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

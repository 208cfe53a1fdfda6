"""Search spaces: which layers are searched, in which formats and rank ranges.

A space file (``spaces/*.yaml``) is model-agnostic: glob patterns pick layers by their
``named_modules()`` names, so one file serves resnet20 and resnet110 alike. Schema::

    models: [resnet20, resnet56]     # required: the models this space is written for
    description: "..."               # optional free text
    layers:                          # required: groups, tried in order; a layer joins the FIRST
      - match: "layer*.*.conv*"      #   group that matches it. Glob(s) (fnmatch, case-sensitive)
                                     #   over conv/linear names; unmatched layers stay dense.
        formats: [tucker2, dense]    # choices, subset of [tucker2, svd, dense] with at least one
                                     #   low-rank format (default [tucker2])
        ratio: [0.1, 1.0]            # rank as a fraction of the layer's full rank, each in (0, 1],
        # rank: [4, 64]              #   or absolute integer ranks; exactly one of the two
        round_to: 16                 # ranks are multiples of this (default: the CPU's vector
                                     #   width, 16 on AVX-512, 8 on AVX2, else 1; see `layers`)
        tie: none                    # none: a rank per layer; stage: one per prefix before the
                                     #   first '.'; block: one per prefix before the second '.'
    regularizer:                     # optional; default: not searched (dso, 1e-3)
      kinds: [dso, none]             # subset of [none, so, dso, mc, srip]
      weight: [1.0e-5, 1.0e-2]       # log-uniform
    train:                           # optional: training hyperparameters, log-uniform
      lr: [0.02, 0.2]
      weight_decay: [1.0e-5, 1.0e-3]

Rules:

* Layers that cannot take any of a group's low-rank formats (grouped/depthwise convs, or a
  Linear under ``formats: [tucker2]``) are skipped silently; a pattern matching only such
  layers is an error, as is a pattern matching no layer.
* A searched *unit* is a layer (``tie: none``) or all of a group's layers sharing a prefix.
  Its Optuna parameters are ``<unit>.format`` (when there is a choice) and ``<unit>.ratio``
  or ``<unit>.rank``, where ``<unit>`` is the layer name or the prefix (``layer2``,
  ``layer2.0``); a prefix already used by an earlier group gets ``@<group index>`` appended.
* Ratio units: each rank key (``rank_in``/``rank_out`` of Tucker-2, ``rank`` of SVD) is
  ``ratio * full rank``, rounded to the nearest multiple of ``round_to`` and kept in the
  allowed range ``[round(lo*full), round(hi*full)]`` (at least 1). Rank units: the rank is
  used for each rank key, capped at that key's full rank. A layer whose allowed range holds
  no multiple of ``round_to`` is an error.
* Regularizer weight and train ranges are log-uniform; the weight is sampled even when the
  kind is ``none`` (a static space suits the multivariate samplers).

Everything is checked before a search launches; errors are :class:`ConfigError` naming
the file and the dotted key (``layers[0].ratio``).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._validate import check_keys, require
from ..config import LAYER_FORMATS, REGULARIZER_NAMES, LayerSpec, ModelSpec, RankConfig, RegularizerSpec
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..convert import LayerInfo

__all__ = [
    "LOW_RANK",
    "TIES",
    "TRAIN_RANGES",
    "LayerGroup",
    "RegularizerRange",
    "ResolvedSpace",
    "Sample",
    "SearchSpace",
    "Unit",
    "UnitChoice",
    "load_space",
    "trials_warning",
    "parse_space",
    "resolve_space",
]

LOW_RANK = ("tucker2", "svd")
TIES = ("none", "stage", "block")
TRAIN_RANGES = ("lr", "weight_decay")
_TOP_KEYS = ("models", "description", "layers", "regularizer", "train")
_GROUP_KEYS = ("match", "formats", "ratio", "rank", "round_to", "tie")


@dataclass(frozen=True)
class LayerGroup:
    """One ``layers`` entry: patterns, formats, rank range, rounding and tying."""

    match: tuple[str, ...]
    formats: tuple[str, ...] = ("tucker2",)
    kind: str = "ratio"  # "ratio" | "rank"
    lo: float = 0.1
    hi: float = 1.0
    round_to: int = 1
    tie: str = "none"
    key: str = "layers[0]"


@dataclass(frozen=True)
class RegularizerRange:
    """Regularizer kinds to choose from and the log-uniform weight range."""

    kinds: tuple[str, ...] = ("dso",)
    weight: tuple[float, float] = (1e-3, 1e-3)


@dataclass(frozen=True)
class SearchSpace:
    """A parsed space file, not yet tied to a model."""

    models: tuple[str, ...]
    groups: tuple[LayerGroup, ...]
    regularizer: RegularizerRange | None = None
    train: dict[str, tuple[float, float]] = field(default_factory=dict)
    description: str = ""
    source: str = "<space>"


# --- parsing -----------------------------------------------------------------------------------


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space YAML file (structure only; see :func:`resolve_space`)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("space file not found", source=path) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read YAML: {exc}", source=path) from None
    return parse_space(data, source=str(path))


def parse_space(data: Any, source: str = "<space>") -> SearchSpace:
    """Validate the parsed YAML of a space file; errors name ``source`` and the key."""
    try:
        return _parse_space(data, source)
    except ConfigError as exc:
        raise exc.with_source(source) from None


def _parse_space(data: Any, source: str) -> SearchSpace:
    check_keys(data, _TOP_KEYS, "")
    models = _str_list(require(data, "models", ""), "models")
    layers = require(data, "layers", "")
    if not isinstance(layers, list) or not layers:
        raise ConfigError("expected a non-empty list of layer groups", key="layers")
    groups = tuple(_parse_group(entry, f"layers[{i}]") for i, entry in enumerate(layers))
    regularizer = _parse_regularizer(data["regularizer"]) if data.get("regularizer") is not None else None
    train = _parse_train(data.get("train") or {})
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("expected a string", key="description")
    return SearchSpace(tuple(models), groups, regularizer, train, description, source)


def _default_round_to() -> int:
    from ..latency._isa import default_round_to

    return default_round_to()


def _parse_group(data: Any, key: str) -> LayerGroup:
    check_keys(data, _GROUP_KEYS, key + ".")
    match = require(data, "match", key + ".")
    patterns = [match] if isinstance(match, str) else _str_list(match, key + ".match")
    if not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError("expected a glob pattern or a list of them", key=key + ".match")
    formats = _str_list(data.get("formats", ["tucker2"]), key + ".formats")
    for i, fmt in enumerate(formats):
        if fmt not in LAYER_FORMATS:
            raise ConfigError(
                f"unknown format {fmt!r}; expected a subset of {list(LAYER_FORMATS)}",
                key=f"{key}.formats[{i}]",
            )
    if len(set(formats)) != len(formats):
        raise ConfigError(f"duplicate formats in {formats}", key=key + ".formats")
    if not any(fmt in LOW_RANK for fmt in formats):
        raise ConfigError("needs tucker2 or svd (layers no group matches stay dense)", key=key + ".formats")
    kind, lo, hi = _parse_rank_range(data, key)
    round_to = data.get("round_to") if "round_to" in data else _default_round_to()
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"expected an integer >= 1, got {round_to!r}", key=key + ".round_to")
    tie = data.get("tie", "none")
    if tie not in TIES:
        raise ConfigError(f"expected one of {list(TIES)}, got {tie!r}", key=key + ".tie")
    return LayerGroup(tuple(patterns), tuple(formats), kind, lo, hi, round_to, tie, key)


def _parse_rank_range(data: Mapping[str, Any], key: str) -> tuple[str, float, float]:
    present = [k for k in ("ratio", "rank") if k in data]
    if len(present) != 1:
        raise ConfigError("give exactly one of 'ratio: [lo, hi]' or 'rank: [lo, hi]'", key=key)
    kind = present[0]
    lo, hi = _range(data[kind], f"{key}.{kind}", integer=kind == "rank")
    if kind == "ratio" and not (0 < lo <= 1 and 0 < hi <= 1):
        raise ConfigError(f"ratios must be in (0, 1], got [{lo}, {hi}]", key=f"{key}.ratio")
    if kind == "rank" and lo < 1:
        raise ConfigError(f"ranks must be >= 1, got [{lo}, {hi}]", key=f"{key}.rank")
    return kind, lo, hi


def _parse_regularizer(data: Any) -> RegularizerRange:
    check_keys(data, ("kinds", "weight"), "regularizer.")
    kinds = _str_list(data.get("kinds", ["dso"]), "regularizer.kinds")
    for i, kind in enumerate(kinds):
        if kind not in REGULARIZER_NAMES:
            raise ConfigError(
                f"unknown regularizer {kind!r}; expected a subset of {list(REGULARIZER_NAMES)}",
                key=f"regularizer.kinds[{i}]",
            )
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"duplicate kinds in {kinds}", key="regularizer.kinds")
    weight = _range(data.get("weight", [1e-3, 1e-3]), "regularizer.weight", positive=True)
    return RegularizerRange(tuple(kinds), weight)


def _parse_train(data: Any) -> dict[str, tuple[float, float]]:
    check_keys(data, TRAIN_RANGES, "train.")
    return {name: _range(value, f"train.{name}", positive=True) for name, value in data.items()}


def _range(value: Any, key: str, *, integer: bool = False, positive: bool = False) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigError(f"expected [lo, hi], got {value!r}", key=key)
    for v in value:
        bad_type = isinstance(v, bool) or not isinstance(v, int if integer else int | float)
        if bad_type or not math.isfinite(v):
            raise ConfigError(f"expected {'integers' if integer else 'numbers'}, got {value!r}", key=key)
    lo, hi = value
    if lo > hi:
        raise ConfigError(f"inverted range [{lo}, {hi}] (lo > hi)", key=key)
    if positive and lo <= 0:
        raise ConfigError(f"a log-scale range needs lo > 0, got [{lo}, {hi}]", key=key)
    return (lo, hi)


def _str_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"expected a non-empty list of strings, got {value!r}", key=key)
    return list(value)


# --- resolving against a model ----------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """Layers sharing one format and one rank parameter."""

    key: str
    group: LayerGroup
    layers: tuple[LayerInfo, ...]
    formats: tuple[str, ...]

    @property
    def low_rank_formats(self) -> tuple[str, ...]:
        return tuple(f for f in self.formats if f in LOW_RANK)

    @property
    def value_param(self) -> str:
        return f"{self.key}.{self.group.kind}"

    @property
    def format_param(self) -> str:
        return f"{self.key}.format"

    @property
    def value_bounds(self) -> tuple[float, float]:
        """Bounds of the sampled value (rank units: multiples of ``round_to``)."""
        g = self.group
        if g.kind == "ratio":
            return (g.lo, g.hi)
        m = g.round_to
        return (float(math.ceil(g.lo / m) * m), float(math.floor(g.hi / m) * m))

    def clamp(self, value: float) -> float:
        lo, hi = self.value_bounds
        return min(max(value, lo), hi)

    def ranks(self, info: LayerInfo, fmt: str, value: float) -> dict[str, int]:
        """The ranks of one of this unit's layers in ``fmt`` for the sampled ``value``."""
        return {k: _rank(self.group, full, value) for k, full in info.full_ranks[fmt].items()}

    def layer_specs(self, fmt: str, value: float) -> dict[str, LayerSpec]:
        if fmt == "dense":
            return {info.name: LayerSpec("dense") for info in self.layers}
        return {info.name: LayerSpec(fmt, **self.ranks(info, fmt, value)) for info in self.layers}

    def macs_delta(self, fmt: str, value: float) -> int:
        """MACs of this unit's layers in ``fmt`` minus their dense MACs."""
        if fmt == "dense":
            return 0
        return sum(info.macs(fmt, self.ranks(info, fmt, value)) - info.dense_macs for info in self.layers)

    def levels(self) -> list[float]:
        """Sorted values at which the unit's ranks change (its distinct settings), within bounds."""
        lo, hi = self.value_bounds
        if self.group.kind == "rank":
            return [float(v) for v in range(int(lo), int(hi) + 1, self.group.round_to)]
        points = {lo, hi}
        for info in self.layers:
            for fmt in self.low_rank_formats:
                for full in info.full_ranks[fmt].values():
                    a, b = rank_bounds(self.group, full)
                    points.update(
                        r / full for r in range(a, b + 1, self.group.round_to) if lo <= r / full <= hi
                    )
        return sorted(points)


def rank_bounds(group: LayerGroup, full: int) -> tuple[int, int]:
    """Smallest and largest allowed multiple of ``round_to`` for a rank key of full rank ``full``
    (the pair is inverted when none exists)."""
    if group.kind == "ratio":
        lo = max(1, _round_half_up(group.lo * full))
        hi = max(lo, _round_half_up(group.hi * full))
    else:
        lo, hi = min(int(group.lo), full), min(int(group.hi), full)
    m = group.round_to
    return (math.ceil(lo / m) * m, (hi // m) * m)


def _rank(group: LayerGroup, full: int, value: float) -> int:
    target = value * full if group.kind == "ratio" else min(value, full)
    m = group.round_to
    lo, hi = rank_bounds(group, full)
    return min(max(_round_half_up(target / m) * m, lo), hi)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)


@dataclass(frozen=True)
class UnitChoice:
    """A unit's format and sampled value (ratio or rank)."""

    format: str
    value: float


@dataclass(frozen=True)
class Sample:
    """One point of a resolved space: unit choices, regularizer and training overrides."""

    units: dict[str, UnitChoice]
    regularizer: RegularizerSpec = field(default_factory=RegularizerSpec)
    train: dict[str, float] = field(default_factory=dict)

    def replace_units(self, units: Mapping[str, UnitChoice]) -> Sample:
        return Sample(dict(units), self.regularizer, dict(self.train))


@dataclass(frozen=True)
class ResolvedSpace:
    """A space tied to one model and input size: its units and the model's dense cost."""

    space: SearchSpace
    model: str
    num_classes: int
    input_size: tuple[int, int, int]
    units: tuple[Unit, ...]
    dense_macs: int

    def unit(self, key: str) -> Unit:
        return next(u for u in self.units if u.key == key)

    def dimensions(self, tie: str | None = None) -> int:
        """Optuna parameters a sample draws; with ``tie`` as if every group used that tie."""
        units: dict[tuple[str, str], Unit] = {}
        for unit in self.units:
            for info in unit.layers:
                key = unit.key if tie is None else _tie_key(info.name, tie)
                units.setdefault((unit.group.key, key), unit)
        count = sum(1 + (len(unit.formats) > 1) for unit in units.values())
        reg = self.space.regularizer
        if reg is not None:
            count += (len(reg.kinds) > 1) + (reg.weight[0] < reg.weight[1])
        return count + sum(lo < hi for lo, hi in self.space.train.values())

    def layer_specs(self, sample: Sample) -> dict[str, LayerSpec]:
        specs: dict[str, LayerSpec] = {}
        for unit in self.units:
            choice = sample.units[unit.key]
            specs.update(unit.layer_specs(choice.format, choice.value))
        return specs

    def macs(self, sample: Sample) -> int:
        """Analytic MACs (conv + linear, one sample) of the model built from ``sample``."""
        return self.dense_macs + sum(
            u.macs_delta(sample.units[u.key].format, sample.units[u.key].value) for u in self.units
        )

    def rank_config(self, sample: Sample, provenance: dict[str, Any] | None = None) -> RankConfig:
        """The rank config of ``sample`` (dense layers omitted)."""
        layers = {n: s for n, s in self.layer_specs(sample).items() if s.format != "dense"}
        return RankConfig(
            ModelSpec(self.model, self.num_classes),
            self.input_size,
            layers,
            sample.regularizer,
            provenance=dict(provenance or {}),
        )

    def params(self, sample: Sample) -> dict[str, Any]:
        """The Optuna parameters that reproduce ``sample`` (for enqueueing starting points)."""
        out: dict[str, Any] = {}
        for unit in self.units:
            choice = sample.units[unit.key]
            if len(unit.formats) > 1:
                out[unit.format_param] = choice.format
            value = unit.clamp(choice.value)
            if unit.group.kind == "rank":
                m = unit.group.round_to
                value = unit.clamp(_round_half_up(value / m) * m)
                out[unit.value_param] = int(value)
            else:
                out[unit.value_param] = float(value)
        reg = self.space.regularizer
        if reg is not None:
            if len(reg.kinds) > 1:
                out["regularizer.kind"] = sample.regularizer.name
            if reg.weight[0] < reg.weight[1]:
                out["regularizer.weight"] = min(max(sample.regularizer.weight, reg.weight[0]), reg.weight[1])
        for name, (lo, hi) in self.space.train.items():
            if lo < hi and name in sample.train:
                out[f"train.{name}"] = min(max(sample.train[name], lo), hi)
        return out

    def sample_from_layers(
        self,
        layers: Mapping[str, LayerSpec],
        regularizer: RegularizerSpec | None = None,
        train: Mapping[str, float] | None = None,
    ) -> Sample:
        """The sample closest to a rank config's ``layers`` (e.g. one DPRP found).

        Per unit: the most common format among its layers (a format the unit lacks becomes its
        first low-rank one), and the mean ratio (or rank) of its low-rank layers, clamped into
        the unit's range.
        """
        units = {}
        for unit in self.units:
            specs = [layers.get(info.name, LayerSpec("dense")) for info in unit.layers]
            formats = [spec.format for spec in specs]
            fmt = max(sorted(set(formats)), key=formats.count)
            if fmt not in unit.formats:
                fmt = unit.low_rank_formats[0]
            values = [
                _spec_value(unit, info, spec)
                for info, spec in zip(unit.layers, specs)
                if spec.format != "dense"
            ]
            value = sum(values) / len(values) if values else unit.value_bounds[1]
            units[unit.key] = UnitChoice(fmt, unit.clamp(value))
        reg = self.space.regularizer
        if regularizer is None or (reg is not None and regularizer.name not in reg.kinds):
            regularizer = RegularizerSpec()
        return Sample(units, regularizer, dict(train or {}))

    def suggest(self, trial: Any) -> Sample:
        """Define-by-run: draw a sample with an Optuna trial (or ``FixedTrial``)."""
        units = {}
        for unit in self.units:
            fmt = unit.formats[0]
            if len(unit.formats) > 1:
                fmt = trial.suggest_categorical(unit.format_param, list(unit.formats))
            lo, hi = unit.value_bounds
            if unit.group.kind == "rank":
                value = float(trial.suggest_int(unit.value_param, int(lo), int(hi), step=unit.group.round_to))
            else:
                value = float(trial.suggest_float(unit.value_param, lo, hi))
            units[unit.key] = UnitChoice(fmt, value)
        return Sample(units, self._suggest_regularizer(trial), self._suggest_train(trial))

    def _suggest_regularizer(self, trial: Any) -> RegularizerSpec:
        reg = self.space.regularizer
        if reg is None:
            return RegularizerSpec()
        kind = reg.kinds[0]
        if len(reg.kinds) > 1:
            kind = trial.suggest_categorical("regularizer.kind", list(reg.kinds))
        weight = reg.weight[0]
        if reg.weight[0] < reg.weight[1]:
            weight = trial.suggest_float("regularizer.weight", reg.weight[0], reg.weight[1], log=True)
        return RegularizerSpec(kind, float(weight))

    def _suggest_train(self, trial: Any) -> dict[str, float]:
        out = {}
        for name, (lo, hi) in self.space.train.items():
            out[name] = (
                float(trial.suggest_float(f"train.{name}", lo, hi, log=True)) if lo < hi else float(lo)
            )
        return out


def _spec_value(unit: Unit, info: LayerInfo, spec: LayerSpec) -> float:
    ranks = spec.ranks()
    if unit.group.kind == "rank":
        return sum(ranks.values()) / len(ranks)
    full = info.full_ranks.get(spec.format, {})
    ratios = [ranks[k] / full[k] for k in ranks if k in full]
    return sum(ratios) / len(ratios) if ratios else unit.value_bounds[1]


def resolve_space(
    space: SearchSpace,
    model: str,
    infos: Sequence[LayerInfo],
    *,
    num_classes: int = 10,
    input_size: tuple[int, int, int] = (3, 32, 32),
) -> ResolvedSpace:
    """Tie ``space`` to ``model`` whose conv/linear layers are ``infos`` (from ``list_factorizable``).

    Raises :class:`ConfigError` (naming the space file and key) for a model not in ``models``,
    patterns matching no layer (or only unfactorizable ones) and impossible rounding.
    """
    try:
        if model not in space.models:
            raise ConfigError(
                f"model {model!r} is not one this space is written for: {list(space.models)}", key="models"
            )
        units = _units(space, infos)
    except ConfigError as exc:
        raise exc.with_source(space.source) from None
    dense = sum(info.dense_macs for info in infos)
    return ResolvedSpace(space, model, num_classes, input_size, tuple(units), dense)


def _units(space: SearchSpace, infos: Sequence[LayerInfo]) -> list[Unit]:
    claimed: dict[str, str] = {}  # layer name -> group key
    units: dict[str, Unit] = {}
    for index, group in enumerate(space.groups):
        members: dict[str, list[LayerInfo]] = {}
        for p_index, pattern in enumerate(group.match):
            key = f"{group.key}.match" + (f"[{p_index}]" if len(group.match) > 1 else "")
            for info in _match(pattern, infos, group, claimed, key):
                claimed[info.name] = group.key
                members.setdefault(_tie_key(info.name, group.tie), []).append(info)
        for prefix, layers in members.items():
            name = prefix if prefix not in units else f"{prefix}@{index}"
            units[name] = _make_unit(name, group, layers)
    order = {info.name: i for i, info in enumerate(infos)}
    return sorted(units.values(), key=lambda u: order[u.layers[0].name])


def _match(
    pattern: str, infos: Sequence[LayerInfo], group: LayerGroup, claimed: dict[str, str], key: str
) -> list[LayerInfo]:
    hits = [info for info in infos if fnmatch.fnmatchcase(info.name, pattern)]
    if not hits:
        raise ConfigError(
            f"pattern {pattern!r} matches no conv/linear layer; layers are e.g. "
            f"{', '.join(i.name for i in infos[:6])}",
            key=key,
        )
    usable = [i for i in hits if any(i.allows(f) for f in group.formats if f in LOW_RANK)]
    if not usable:
        reasons = "; ".join(
            f"{i.name}: {next(iter(i.reasons.values()), 'not factorizable')}" for i in hits[:3]
        )
        raise ConfigError(
            f"pattern {pattern!r} matches only layers that cannot take "
            f"{[f for f in group.formats if f in LOW_RANK]} ({reasons})",
            key=key,
        )
    free = [i for i in usable if i.name not in claimed]
    if not free:
        owner = claimed[usable[0].name]
        raise ConfigError(f"pattern {pattern!r} matches only layers already taken by {owner}", key=key)
    return free


def _tie_key(name: str, tie: str) -> str:
    parts = name.split(".")
    if tie == "stage":
        return parts[0]
    if tie == "block":
        return ".".join(parts[:2])
    return name


def _make_unit(name: str, group: LayerGroup, layers: list[LayerInfo]) -> Unit:
    formats = tuple(f for f in group.formats if f == "dense" or all(i.allows(f) for i in layers))
    if not any(f in LOW_RANK for f in formats):
        raise ConfigError(
            f"tied layers {[i.name for i in layers]} share no low-rank format of {list(group.formats)}",
            key=group.key + ".tie",
        )
    unit = Unit(name, group, tuple(layers), formats)
    lo, hi = unit.value_bounds
    if lo > hi:
        raise ConfigError(
            f"round_to {group.round_to} leaves no rank in [{group.lo}, {group.hi}]",
            key=group.key + ".round_to",
        )
    for info in layers:
        for fmt in unit.low_rank_formats:
            for rank_key, full in info.full_ranks[fmt].items():
                a, b = rank_bounds(group, full)
                if a > b:
                    raise ConfigError(
                        f"round_to {group.round_to} is larger than layer {info.name}'s allowed "
                        f"{fmt} {rank_key} (full rank {full}, allowed {_allowed_text(group, full)})",
                        key=group.key + ".round_to",
                    )
    return unit


def _allowed_text(group: LayerGroup, full: int) -> str:
    if group.kind == "ratio":
        lo = max(1, _round_half_up(group.lo * full))
        return f"{lo}..{max(lo, _round_half_up(group.hi * full))}"
    return f"{min(int(group.lo), full)}..{min(int(group.hi), full)}"


TRIALS_PER_DIMENSION = 5
"""A space with ``d`` sampled parameters wants at least ``5 d`` trials: Optuna's TPE draws its
first 10 trials at random and models each parameter from the trials so far, so with fewer than a
handful of trials per parameter it is no better than random sampling (the CPU evidence of issue
14: 20 trials in a 19-parameter space)."""


def trials_warning(space: ResolvedSpace, trials: int) -> str | None:
    """One line when ``trials`` are too few for the space's dimensions, naming the tie that fits
    (None when they suffice)."""
    dims = space.dimensions()
    need = TRIALS_PER_DIMENSION * dims
    if trials >= need:
        return None
    fits = [t for t in ("block", "stage") if TRIALS_PER_DIMENSION * space.dimensions(t) <= trials]
    coarser = [t for t in ("block", "stage") if space.dimensions(t) < dims]
    if fits and fits[0] in coarser:
        hint = f"tie: {fits[0]} ({space.dimensions(fits[0])} parameters) would fit"
    elif coarser:
        tie = coarser[-1]
        hint = f"even tie: {tie} has {space.dimensions(tie)} parameters; use more trials"
    else:
        hint = "use more trials or a smaller space"
    return (
        f"{trials} trials are too few for {dims} searched parameters (want >= {TRIALS_PER_DIMENSION} "
        f"per parameter, {need}): the sampler cannot beat random search; {hint}"
    )

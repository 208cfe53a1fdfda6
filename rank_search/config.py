"""The rank-config JSON: which layers are low-rank, in which format and ranks.

Written by search/export, read by training. Loading validates everything against the
model and never executes code (plain ``json``).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ._io import atomic_write_json
from ._validate import as_int, check_keys, close_names, require
from .convert import build_model
from .cost import config_cost, list_factorizable
from .errors import ConfigError
from .layers import LOW_RANK_CONV_CLASSES
from .models import create_model, default_num_classes, is_model
from .specs import RANK_KEYS as RANK_KEYS
from .specs import Cost as Cost
from .specs import LayerSpec as LayerSpec

FORMAT_ID = "rank-search/rank-config"
VERSION = 1
LAYER_FORMATS = ("dense", *LOW_RANK_CONV_CLASSES)  # the formats a layer spec may name
REGULARIZER_NAMES = ("none", "so", "dso", "mc", "srip")
REGULARIZER_SCHEDULES = ("constant", "cosine", "step")
TOP_KEYS = ("format", "version", "model", "input_size", "layers", "regularizer", "cost", "provenance")


class CostMismatchWarning(UserWarning):
    """The ``cost`` stored in a rank-config file differs from the recomputed one."""


DEFAULT_NUM_CLASSES = 10


@dataclass(frozen=True)
class ModelSpec:
    """The model's registry name and its number of classes (``num_classes_given``: whether the
    file named it, or the default was taken)."""

    name: str
    num_classes: int = 0
    """``0`` (the default) takes the model's own: 10 for the CIFAR ResNets, 1000 for torchvision's."""
    num_classes_given: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        if self.num_classes == 0:
            own = default_num_classes(self.name) if is_model(self.name) else DEFAULT_NUM_CLASSES
            object.__setattr__(self, "num_classes", own)

    def classes_text(self) -> str:
        """``"100 classes"``, or for a file without ``model.num_classes`` a text saying the
        default was taken."""
        if self.num_classes_given:
            return f"{self.num_classes} classes"
        return f"no model.num_classes (so the model's own {self.num_classes})"


@dataclass(frozen=True)
class RegularizerSpec:
    """Orthogonality regularizer on the factor matrices, its weight and weight schedule."""

    name: str = "dso"
    weight: float = 1e-3
    schedule: str = "constant"


@dataclass
class RankConfig:
    """A model, its input size and the low-rank format of each listed layer (others stay dense)."""

    model: ModelSpec
    input_size: tuple[int, int, int]
    layers: dict[str, LayerSpec] = field(default_factory=dict)
    regularizer: RegularizerSpec = field(default_factory=RegularizerSpec)
    cost: Cost | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def build(self, *, seed: int | None = None, init: str = "scratch") -> nn.Module:
        """The model with every listed layer in its low-rank form (fresh weights); see
        :func:`rank_search.convert.build_model`."""
        return build_model(self, seed=seed, init=init)

    def compute_cost(self) -> Cost:
        """MACs and params of the built model and MACs of the dense model (analytic, see
        :func:`rank_search.cost.config_cost`; no low-rank model is built)."""
        return config_cost(self)

    def with_cost(self) -> RankConfig:
        """A copy with ``cost`` recomputed."""
        layers, provenance = dict(self.layers), dict(self.provenance)
        return dataclasses.replace(self, layers=layers, cost=self.compute_cost(), provenance=provenance)

    def to_dict(self) -> dict[str, Any]:
        cost = self.cost or self.compute_cost()
        data: dict[str, Any] = {
            "format": FORMAT_ID,
            "version": VERSION,
            "model": {"name": self.model.name, "num_classes": self.model.num_classes},
            "input_size": list(self.input_size),
            "layers": {name: spec.to_dict() for name, spec in self.layers.items()},
            "regularizer": {
                "name": self.regularizer.name,
                "weight": self.regularizer.weight,
                "schedule": self.regularizer.schedule,
            },
            "cost": {"macs": cost.macs, "params": cost.params, "dense_macs": cost.dense_macs},
        }
        if self.provenance:
            data["provenance"] = self.provenance
        return data


# --- parsing and validation --------------------------------------------------------------------


def _parse_model(data: Any) -> ModelSpec:
    check_keys(data, ("name", "num_classes"), "model.")
    name = require(data, "name", "model.")
    if not isinstance(name, str):
        raise ConfigError(f"expected a string, got {name!r}", key="model.name")
    if "num_classes" not in data:
        return ModelSpec(name, num_classes_given=False)
    return ModelSpec(name, as_int(data["num_classes"], "model.num_classes", 1))


def _parse_input_size(data: Any) -> tuple[int, int, int]:
    if not isinstance(data, list) or len(data) != 3:
        raise ConfigError(f"expected [C, H, W], got {data!r}", key="input_size")
    c, h, w = (as_int(v, f"input_size[{i}]", 1) for i, v in enumerate(data))
    return (c, h, w)


def parse_layer_spec(data: Any, key: str) -> LayerSpec:
    """Parse one ``layers`` entry (format and ranks, types only; ranges are checked later)."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected an object like {{'format': 'tucker2', ...}}, got {data!r}", key=key)
    fmt = require(data, "format", key + ".")
    if fmt not in LAYER_FORMATS:
        raise ConfigError(
            f"unknown format {fmt!r}; expected one of {list(LAYER_FORMATS)}", key=key + ".format"
        )
    check_keys(data, ("format", *RANK_KEYS[fmt]), key + ".")
    ranks = {k: as_int(require(data, k, key + "."), f"{key}.{k}", 1) for k in RANK_KEYS[fmt]}
    return LayerSpec(fmt, **ranks)


def _parse_regularizer(data: Any) -> RegularizerSpec:
    check_keys(data, ("name", "weight", "schedule"), "regularizer.")
    name = data.get("name", "dso")
    if name not in REGULARIZER_NAMES:
        raise ConfigError(
            f"unknown regularizer {name!r}; expected one of {list(REGULARIZER_NAMES)}", key="regularizer.name"
        )
    weight = data.get("weight", 1e-3)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0 or weight != weight:
        raise ConfigError(f"expected a number >= 0, got {weight!r}", key="regularizer.weight")
    schedule = data.get("schedule", "constant")
    if schedule not in REGULARIZER_SCHEDULES:
        raise ConfigError(
            f"unknown schedule {schedule!r}; expected one of {list(REGULARIZER_SCHEDULES)}",
            key="regularizer.schedule",
        )
    return RegularizerSpec(name, float(weight), schedule)


def _parse_cost(data: Any) -> Cost:
    check_keys(data, ("macs", "params", "dense_macs"), "cost.")
    return Cost(
        *(as_int(require(data, k, "cost."), f"cost.{k}", 0) for k in ("macs", "params", "dense_macs"))
    )


def rank_config_from_dict(data: Any, *, validate: bool = True) -> RankConfig:
    """Build a :class:`RankConfig` from parsed JSON; with ``validate``, check it against the model."""
    check_keys(data, TOP_KEYS, "")
    if require(data, "format") != FORMAT_ID:
        raise ConfigError(f"expected {FORMAT_ID!r}, got {data['format']!r}", key="format")
    version = require(data, "version")
    if version != VERSION:
        raise ConfigError(
            f"unsupported version {version!r}; this rank-search reads version {VERSION}", key="version"
        )
    layers_data = data.get("layers", {})
    if not isinstance(layers_data, dict):
        raise ConfigError("expected an object mapping layer names to specs", key="layers")
    provenance = data.get("provenance", {})
    if not isinstance(provenance, dict):
        raise ConfigError("expected an object", key="provenance")
    config = RankConfig(
        model=_parse_model(require(data, "model")),
        input_size=_parse_input_size(require(data, "input_size")),
        layers={name: parse_layer_spec(spec, f"layers.{name}") for name, spec in layers_data.items()},
        regularizer=_parse_regularizer(data.get("regularizer", {})),
        cost=_parse_cost(data["cost"]) if "cost" in data else None,
        provenance=provenance,
    )
    if validate:
        validate_layers(config)
    return config


def validate_layers(config: RankConfig) -> None:
    """Check every layer name, format and rank against the model's factorizable layers."""
    model = create_model(config.model.name, num_classes=config.model.num_classes)
    try:
        infos = {info.name: info for info in list_factorizable(model, config.input_size)}
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(
            f"{config.model.name} cannot run at this input size: {reason}", key="input_size"
        ) from None
    for name, spec in config.layers.items():
        key = f"layers.{name}"
        info = infos.get(name)
        if info is None:
            raise ConfigError(
                f"'{name}' is not a conv/linear layer of {config.model.name}; "
                f"{close_names(name, list(infos))}",
                key=key,
            )
        if spec.format == "dense":
            continue
        if not info.allows(spec.format):
            raise ConfigError(
                f"cannot use format '{spec.format}': {info.reasons[spec.format]}", key=key + ".format"
            )
        for rank_key, value in spec.ranks().items():
            limit = info.full_ranks[spec.format][rank_key]
            if value > limit:
                raise ConfigError(f"{value} is above the layer's full rank {limit}", key=f"{key}.{rank_key}")


def load_rank_config(path: str | Path) -> RankConfig:
    """Read and validate a rank-config JSON file; ``cost`` is recomputed.

    A stored cost that differs from the recomputed one is reported with a
    :class:`CostMismatchWarning`; the returned config carries the recomputed cost.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", source=path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=path
        ) from None
    try:
        config = rank_config_from_dict(data)
    except ConfigError as exc:
        raise exc.with_source(path) from None
    stored = config.cost
    config = config.with_cost()
    if stored is not None and stored != config.cost:
        warnings.warn(
            f"{path}: key 'cost': stored {stored} differs from recomputed {config.cost}; "
            "using the recomputed cost",
            CostMismatchWarning,
            stacklevel=2,
        )
    return config


def save_rank_config(config: RankConfig, path: str | Path) -> Path:
    """Write ``config`` (with its cost recomputed) atomically as JSON."""
    return atomic_write_json(path, config.with_cost().to_dict())

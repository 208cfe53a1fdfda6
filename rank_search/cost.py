"""Costs in MACs (multiply-accumulates of conv and linear layers) and parameters.

Compression papers call these "FLOPs"; ``torch.utils.flop_counter`` counts 2 per MAC.
BatchNorm, activations, pooling and additions are not counted.

This module owns every cost formula and every cost sum:

* the formula table (:func:`conv_macs`, :func:`linear_macs`, :func:`conv_params`,
  :func:`linear_params`): MACs and parameters of one dense or low-rank layer, used by the
  layer classes (:meth:`rank_search.layers.LowRankLayer.macs`, :func:`rank_search.layers.dense_layer_macs`)
  and by :meth:`rank_search.convert.LayerInfo.macs` alike;
* analytic sums over a model's layers (:func:`analytic_macs`, :class:`AnalyticCost`): the cost
  of a rank config or of a live (pruned) model without building or running it;
* counting by a forward pass (:func:`count_cost`), used to list a model's layers and their sizes
  once, and by tests to check that analytic and counted MACs agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

# the formula table: pure arithmetic in ._formulas (imports nothing of ours), found here
from ._formulas import conv_macs as conv_macs
from ._formulas import conv_params as conv_params
from ._formulas import linear_macs as linear_macs
from ._formulas import linear_params as linear_params
from ._validate import close_names
from .errors import ConfigError
from .layers import (
    LOW_RANK_CONV_CLASSES,
    LowRankLayer,
    dense_layer_macs,
    full_ranks,
    low_rank_modules,
    unfactorizable_reason,
)
from .models import create_model
from .specs import Cost, LayerSpec

if TYPE_CHECKING:
    from .config import RankConfig

# --- the layers of a model ------------------------------------------------------------------------

LOW_RANK_FORMATS = tuple(LOW_RANK_CONV_CLASSES)  # ("tucker2", "svd")


@dataclass(frozen=True)
class LayerInfo:
    """A dense conv/linear layer of a model and what it could be factorized into."""

    name: str
    kind: str  # "conv" | "linear"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    dense_macs: int
    params: int
    full_ranks: dict[str, dict[str, int]] = field(default_factory=dict)  # format -> largest ranks
    reasons: dict[str, str] = field(default_factory=dict)  # format -> why it can't be used
    bias: bool = False

    def allows(self, fmt: str) -> bool:
        return fmt == "dense" or fmt in self.full_ranks

    def macs(self, fmt: str, ranks: Mapping[str, int]) -> int:
        """MACs for one sample if this layer were held in ``fmt`` with ``ranks`` (the formula
        table in :mod:`rank_search.cost`)."""
        if fmt == "dense":
            return self.dense_macs
        if self.kind == "linear":
            lead = math.prod(self.input_size[:-1])
            return linear_macs(fmt, self.in_channels, self.out_channels, lead, ranks)
        in_hw, out_hw = math.prod(self.input_size[1:]), math.prod(self.output_size[1:])
        shape = (self.in_channels, self.out_channels, self.kernel_size)
        return conv_macs(fmt, *shape, in_hw, out_hw, ranks, self.groups)

    def param_count(self, fmt: str, ranks: Mapping[str, int]) -> int:
        """Parameters of this layer if it were held in ``fmt`` with ``ranks`` (formula table)."""
        if fmt == "dense":
            return self.params
        if self.kind == "linear":
            return linear_params(fmt, self.in_channels, self.out_channels, self.bias, ranks)
        shape = (self.in_channels, self.out_channels, self.kernel_size)
        return conv_params(fmt, *shape, self.bias, ranks, self.groups)


def _info(
    name: str,
    module: nn.Conv2d | nn.Linear,
    in_size: tuple[int, ...],
    out_size: tuple[int, ...],
    macs: int,
    params: int,
) -> LayerInfo:
    ranks: dict[str, dict[str, int]] = {}
    reasons: dict[str, str] = {}
    for fmt in LOW_RANK_FORMATS:
        reason = unfactorizable_reason(module, fmt)
        if reason is None:
            ranks[fmt] = dict(full_ranks(module, fmt))
        else:
            reasons[fmt] = reason
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        shape = (module.in_features, module.out_features, (1, 1), (1, 1), 1)
        return LayerInfo(name, "linear", *shape, in_size, out_size, macs, params, ranks, reasons, bias)
    k, s = module.kernel_size, module.stride
    shape = (module.in_channels, module.out_channels, (k[0], k[1]), (s[0], s[1]), module.groups)
    return LayerInfo(name, "conv", *shape, in_size, out_size, macs, params, ranks, reasons, bias)


def list_factorizable(model: nn.Module, input_size: tuple[int, ...]) -> list[LayerInfo]:
    """Every dense conv/linear layer of ``model`` in execution order, with its shape,
    input/output size, dense MACs, and the largest useful ranks per low-rank format
    (or the reason a format does not apply, e.g. grouped convs)."""
    modules = dict(model.named_modules())
    infos = []
    seen: set[str] = set()
    for layer in count_cost(model, input_size).layers:
        module = modules[layer.name]
        if layer.name in seen or not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        seen.add(layer.name)
        infos.append(_info(layer.name, module, layer.input_size, layer.output_size, layer.macs, layer.params))
    return infos


def layer_infos(model_name: str, num_classes: int, input_size: tuple[int, ...]) -> dict[str, LayerInfo]:
    """:func:`list_factorizable` of the dense model ``model_name``, by layer name (execution order)."""
    model = create_model(model_name, num_classes=num_classes)
    return {info.name: info for info in list_factorizable(model, input_size)}


# --- analytic sums ----------------------------------------------------------------------------------


def analytic_macs(infos: Mapping[str, LayerInfo], layers: Mapping[str, LayerSpec]) -> int:
    """MACs of the model whose conv/linear layers are ``infos`` with ``layers`` applied.

    From the formula table (via :meth:`LayerInfo.macs`); no model is built or run. Layers
    not in ``layers`` are dense.
    """
    total = sum(info.dense_macs for info in infos.values())
    for name, spec in layers.items():
        total += infos[name].macs(spec.format, spec.ranks()) - infos[name].dense_macs
    return total


@dataclass(frozen=True)
class AnalyticCost:
    """Costs of one model at one input size from the formula table: listed once (one forward
    pass of the dense model, :meth:`of`), then any rank config or live model is costed
    without building or running it."""

    infos: Mapping[str, LayerInfo]
    dense_params: int

    @classmethod
    def of(cls, config: RankConfig) -> AnalyticCost:
        """The layers of ``config``'s dense model at ``config.input_size``."""
        dense = create_model(config.model.name, num_classes=config.model.num_classes)
        infos = {info.name: info for info in list_factorizable(dense, config.input_size)}
        return cls(infos, count_params(dense))

    @property
    def dense_macs(self) -> int:
        """MACs of the model with every layer dense."""
        return sum(info.dense_macs for info in self.infos.values())

    def of_layers(self, layers: Mapping[str, LayerSpec]) -> Cost:
        """MACs and params of the model with ``layers`` applied (what building and counting gives)."""
        self._check(layers)
        params = self.dense_params
        for name, spec in layers.items():
            info = self.infos[name]
            params += info.param_count(spec.format, spec.ranks()) - info.params
        return Cost(analytic_macs(self.infos, layers), params, self.dense_macs)

    def _check(self, layers: Mapping[str, LayerSpec]) -> None:
        """The errors building the model would give: unknown layers, formats a layer can't take."""
        for name, spec in layers.items():
            info = self.infos.get(name)
            if info is None:
                hint = close_names(name, list(self.infos))
                raise ConfigError(
                    f"'{name}' is not a conv/linear layer of the model; {hint}", key=f"layers.{name}"
                )
            if not info.allows(spec.format):
                reason = info.reasons[spec.format]
                raise ConfigError(f"cannot use format '{spec.format}': {reason}", key=f"layers.{name}.format")

    def of_model(self, model: nn.Module) -> Cost:
        """MACs and params of the live ``model`` (e.g. after DPRP shrank its SVD layers): its
        low-rank layers' current ranks through the formula table, its parameters counted."""
        return Cost(analytic_macs(self.infos, live_layers(model)), count_params(model), self.dense_macs)


def live_layers(model: nn.Module) -> dict[str, LayerSpec]:
    """The format and current ranks of every low-rank layer of ``model``."""
    return {name: LayerSpec(layer.format, **layer.ranks()) for name, layer in low_rank_modules(model)}


def config_cost(config: RankConfig) -> Cost:
    """MACs and params of the model ``config`` builds, and the dense MACs (analytic)."""
    return AnalyticCost.of(config).of_layers(config.layers)


# --- counting by a forward pass ---------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCost:
    """Cost of one conv/linear layer (dense or low-rank) for one sample."""

    name: str
    kind: str  # "conv" | "linear"
    format: str  # "dense" | "tucker2" | "svd"
    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    macs: int
    params: int
    ranks: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CostReport:
    """Per-layer and total MACs and parameters of a model at one input size."""

    input_size: tuple[int, ...]
    layers: tuple[LayerCost, ...]
    macs: int
    params: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": "MACs",
            "input_size": list(self.input_size),
            "macs": self.macs,
            "params": self.params,
            "layers": [asdict(layer) for layer in self.layers],
        }


def count_params(model: nn.Module) -> int:
    """All parameters of ``model`` (BatchNorm included, as published counts do)."""
    return sum(p.numel() for p in model.parameters())


def counted_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Low-rank layers as a whole, and dense conv/linear layers not inside one, in module order."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, LowRankLayer):
            inside.append(name)
            yield name, module
        elif isinstance(module, nn.Conv2d | nn.Linear):
            yield name, module


def _layer_cost(name: str, module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> LayerCost:
    in_size = tuple(inp.shape[1:])
    kind = "linear" if isinstance(module, nn.Linear) or getattr(module, "is_linear", False) else "conv"
    if isinstance(module, LowRankLayer):
        return LayerCost(
            name,
            kind,
            module.format,
            in_size,
            tuple(out.shape[1:]),
            module.macs(in_size),
            module.num_params(),
            dict(module.ranks()),
        )
    assert isinstance(module, nn.Conv2d | nn.Linear)
    params = sum(p.numel() for p in module.parameters())
    return LayerCost(
        name, kind, "dense", in_size, tuple(out.shape[1:]), dense_layer_macs(module, in_size), params
    )


def count_cost(model: nn.Module, input_size: tuple[int, ...]) -> CostReport:
    """Run one sample of ``input_size`` (C, H, W) through ``model`` and count per-layer MACs.

    Layers are listed in the order they execute. A module called twice is counted twice.
    """
    records: list[LayerCost] = []
    handles = []
    for name, module in counted_modules(model):

        def hook(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor, _name: str = name) -> None:
            records.append(_layer_cost(_name, mod, args[0], out))

        handles.append(module.register_forward_hook(hook))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    total = sum(r.macs for r in records)
    return CostReport(tuple(input_size), tuple(records), total, count_params(model))

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

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import Cost, LayerSpec, RankConfig
    from .convert import LayerInfo

# --- the formula table ----------------------------------------------------------------------------


def conv_macs(
    fmt: str,
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, int],
    in_hw: int,
    out_hw: int,
    ranks: Mapping[str, int],
    groups: int = 1,
) -> int:
    """MACs of one conv layer for one sample (``in_hw``/``out_hw``: input/output pixels, H*W).

    dense: ``out_hw*C_out*(C_in/groups)*kh*kw``; tucker2 (1x1, kh x kw core, 1x1):
    ``in_hw*C_in*r_in + out_hw*r_in*r_out*kh*kw + out_hw*r_out*C_out``; svd (kh x kw with r
    filters, 1x1): ``out_hw*r*(C_in*kh*kw + C_out)``.
    """
    kk = kernel_size[0] * kernel_size[1]
    if fmt == "dense":
        return out_hw * out_channels * (in_channels // groups) * kk
    if fmt == "tucker2":
        r_in, r_out = ranks["rank_in"], ranks["rank_out"]
        return in_hw * in_channels * r_in + out_hw * (r_in * r_out * kk + r_out * out_channels)
    if fmt == "svd":
        return out_hw * ranks["rank"] * (in_channels * kk + out_channels)
    raise ValueError(f"unknown format '{fmt}'")


def linear_macs(fmt: str, in_features: int, out_features: int, lead: int, ranks: Mapping[str, int]) -> int:
    """MACs of one linear layer for one sample (``lead``: product of the leading input dims).

    dense: ``lead*in*out``; svd: ``lead*r*(in + out)``.
    """
    if fmt == "dense":
        return lead * in_features * out_features
    if fmt == "svd":
        return lead * ranks["rank"] * (in_features + out_features)
    raise ValueError(f"format '{fmt}' does not apply to a linear layer")


def conv_params(
    fmt: str,
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, int],
    bias: bool,
    ranks: Mapping[str, int],
    groups: int = 1,
) -> int:
    """Parameters of one conv layer: dense ``C_out*(C_in/groups)*kh*kw``; tucker2
    ``C_in*r_in + r_in*r_out*kh*kw + r_out*C_out``; svd ``r*(C_in*kh*kw + 1 + C_out)``
    (the singular values are parameters); plus ``C_out`` for a bias."""
    kk = kernel_size[0] * kernel_size[1]
    extra = out_channels if bias else 0
    if fmt == "dense":
        return out_channels * (in_channels // groups) * kk + extra
    if fmt == "tucker2":
        r_in, r_out = ranks["rank_in"], ranks["rank_out"]
        return in_channels * r_in + r_in * r_out * kk + r_out * out_channels + extra
    if fmt == "svd":
        return ranks["rank"] * (in_channels * kk + 1 + out_channels) + extra
    raise ValueError(f"unknown format '{fmt}'")


def linear_params(fmt: str, in_features: int, out_features: int, bias: bool, ranks: Mapping[str, int]) -> int:
    """Parameters of one linear layer: dense ``in*out``; svd ``r*(in + 1 + out)``; plus ``out`` for a bias."""
    extra = out_features if bias else 0
    if fmt == "dense":
        return in_features * out_features + extra
    if fmt == "svd":
        return ranks["rank"] * (in_features + 1 + out_features) + extra
    raise ValueError(f"format '{fmt}' does not apply to a linear layer")


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
        from .convert import list_factorizable
        from .models import create_model

        dense = create_model(config.model.name, num_classes=config.model.num_classes)
        infos = {info.name: info for info in list_factorizable(dense, config.input_size)}
        return cls(infos, count_params(dense))

    @property
    def dense_macs(self) -> int:
        """MACs of the model with every layer dense."""
        return sum(info.dense_macs for info in self.infos.values())

    def of_layers(self, layers: Mapping[str, LayerSpec]) -> Cost:
        """MACs and params of the model with ``layers`` applied (what building and counting gives)."""
        from .config import Cost

        self._check(layers)
        params = self.dense_params
        for name, spec in layers.items():
            info = self.infos[name]
            params += info.param_count(spec.format, spec.ranks()) - info.params
        return Cost(analytic_macs(self.infos, layers), params, self.dense_macs)

    def _check(self, layers: Mapping[str, LayerSpec]) -> None:
        """The errors building the model would give: unknown layers, formats a layer can't take."""
        from .convert import close_names
        from .errors import ConfigError

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
        from .config import Cost

        return Cost(analytic_macs(self.infos, live_layers(model)), count_params(model), self.dense_macs)


def live_layers(model: nn.Module) -> dict[str, LayerSpec]:
    """The format and current ranks of every low-rank layer of ``model``."""
    from .config import LayerSpec
    from .layers import low_rank_modules

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
    from .layers import LowRankLayer

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
    from .layers import LowRankLayer, dense_layer_macs

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

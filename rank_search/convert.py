"""Model conversion: list factorizable layers and apply a rank config by module name."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import nn

from .cost import conv_macs, conv_params, count_cost, linear_macs, linear_params
from .errors import ConfigError
from .layers import LOW_RANK_CONV_CLASSES, full_ranks, make_low_rank, unfactorizable_reason

if TYPE_CHECKING:
    from .config import LayerSpec, RankConfig

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


def close_names(name: str, valid: list[str], n: int = 5) -> str:
    """A hint listing the valid names closest to ``name``."""
    close = difflib.get_close_matches(name, valid, n=n, cutoff=0.4)
    shown = close or valid[:n]
    return "close valid names: " + ", ".join(shown) if shown else "the model has no such layers"


@dataclass
class ConversionReport:
    """What :func:`apply_rank_config` changed and what it left dense, with reasons."""

    converted: dict[str, str] = field(default_factory=dict)  # name -> format
    left_dense: dict[str, str] = field(default_factory=dict)  # name -> reason


def apply_rank_config(
    model: nn.Module,
    layers: Mapping[str, LayerSpec],
    *,
    init: str = "scratch",
    skip_unfactorizable: bool = False,
) -> ConversionReport:
    """Replace the named layers of ``model`` in place by their low-rank forms.

    ``layers`` maps ``named_modules()`` names to :class:`LayerSpec`. Unknown names are
    an error listing close valid names. Layers that cannot take the asked format
    (grouped/depthwise convs) are an error, or are left dense and reported when
    ``skip_unfactorizable``. ``init`` is "scratch" (fresh low-rank init) or "svd"
    (truncated SVD/HOSVD of the current dense weights).
    """
    modules = dict(model.named_modules())
    valid = [n for n, m in modules.items() if isinstance(m, nn.Conv2d | nn.Linear)]
    report = ConversionReport()
    for name, spec in layers.items():
        module = modules.get(name)
        if not isinstance(module, nn.Conv2d | nn.Linear):
            what = "is not a conv/linear layer" if module is not None else "is not a layer of the model"
            raise ConfigError(f"'{name}' {what}; {close_names(name, valid)}", key=f"layers.{name}")
        if spec.format == "dense":
            continue
        reason = unfactorizable_reason(module, spec.format)
        if reason is not None:
            if skip_unfactorizable:
                report.left_dense[name] = reason
                continue
            raise ConfigError(f"cannot use format '{spec.format}': {reason}", key=f"layers.{name}.format")
        try:
            new = make_low_rank(module, spec.format, spec.ranks(), init=init)
        except ValueError as exc:
            raise ConfigError(str(exc), key=f"layers.{name}") from None
        model.set_submodule(name, new)
        report.converted[name] = spec.format
    return report


def layer_infos(model_name: str, num_classes: int, input_size: tuple[int, ...]) -> dict[str, LayerInfo]:
    """:func:`list_factorizable` of the dense model ``model_name``, by layer name (execution order)."""
    from .models import create_model

    model = create_model(model_name, num_classes=num_classes)
    return {info.name: info for info in list_factorizable(model, input_size)}


def build_model(config: RankConfig, *, seed: int | None = None, init: str = "scratch") -> nn.Module:
    """The model of ``config`` with every listed layer in its low-rank form (fresh weights).

    ``seed`` makes the dense and the low-rank initialization reproducible without touching
    the global RNG.
    """
    import torch

    from .models import create_model

    model = create_model(config.model.name, num_classes=config.model.num_classes, seed=seed)
    if seed is None:
        apply_rank_config(model, config.layers, init=init)
        return model
    with torch.random.fork_rng(devices=[]):  # the low-rank init is seeded too
        torch.manual_seed(seed + 1)
        apply_rank_config(model, config.layers, init=init)
    return model

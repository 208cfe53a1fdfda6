"""Model conversion: list factorizable layers and apply a rank config by module name."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import nn

from .cost import count_cost
from .errors import ConfigError
from .layers import LowRankLayer, full_ranks, make_low_rank, unfactorizable_reason

if TYPE_CHECKING:
    from .config import LayerSpec

LOW_RANK_FORMATS = ("tucker2", "svd")


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

    def allows(self, fmt: str) -> bool:
        return fmt == "dense" or fmt in self.full_ranks

    def macs(self, fmt: str, ranks: Mapping[str, int]) -> int:
        """MACs for one sample if this layer were held in ``fmt`` with ``ranks`` (analytic)."""
        if fmt == "dense":
            return self.dense_macs
        c_in, c_out = self.in_channels, self.out_channels
        if self.kind == "linear":
            lead = _prod(self.input_size[:-1])
            return lead * ranks["rank"] * (c_in + c_out)
        in_hw, out_hw = _prod(self.input_size[1:]), _prod(self.output_size[1:])
        kk = self.kernel_size[0] * self.kernel_size[1]
        if fmt == "tucker2":
            r_in, r_out = ranks["rank_in"], ranks["rank_out"]
            return in_hw * c_in * r_in + out_hw * (r_in * r_out * kk + r_out * c_out)
        if fmt == "svd":
            return out_hw * ranks["rank"] * (c_in * kk + c_out)
        raise ValueError(f"unknown format '{fmt}'")


def _prod(values: tuple[int, ...]) -> int:
    out = 1
    for value in values:
        out *= value
    return out


def _info(name: str, module: nn.Conv2d | nn.Linear, in_size: tuple[int, ...], out_size: tuple[int, ...],
          macs: int, params: int) -> LayerInfo:  # fmt: skip
    ranks: dict[str, dict[str, int]] = {}
    reasons: dict[str, str] = {}
    for fmt in LOW_RANK_FORMATS:
        reason = unfactorizable_reason(module, fmt)
        if reason is None:
            ranks[fmt] = dict(full_ranks(module, fmt))
        else:
            reasons[fmt] = reason
    if isinstance(module, nn.Linear):
        return LayerInfo(name, "linear", module.in_features, module.out_features, (1, 1), (1, 1), 1,
                         in_size, out_size, macs, params, ranks, reasons)  # fmt: skip
    k = module.kernel_size
    s = module.stride
    return LayerInfo(name, "conv", module.in_channels, module.out_channels, (k[0], k[1]), (s[0], s[1]),
                     module.groups, in_size, out_size, macs, params, ranks, reasons)  # fmt: skip


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


def low_rank_layers(model: nn.Module) -> dict[str, LowRankLayer]:
    """The low-rank layers of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLayer)}

"""Cost counting in MACs (multiply-accumulates of conv and linear layers) and parameters.

Compression papers call these "FLOPs"; ``torch.utils.flop_counter`` counts 2 per MAC.
BatchNorm, activations, pooling and additions are not counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .layers import LowRankLayer, dense_macs


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
            name, kind, module.format, in_size, tuple(out.shape[1:]), module.macs(in_size),
            module.num_params(), dict(module.ranks()),
        )  # fmt: skip
    assert isinstance(module, nn.Conv2d | nn.Linear)
    params = sum(p.numel() for p in module.parameters())
    return LayerCost(name, kind, "dense", in_size, tuple(out.shape[1:]), dense_macs(module, in_size), params)


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

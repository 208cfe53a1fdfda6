"""Dynamic rank pruning (DPRP) of SVD layers during training.

Training mode for models whose low-rank layers are in the ``svd`` format (``U diag(s) V^T``).
Besides the task loss it adds, with fixed weights from :class:`DPRPConfig`:

* the structure loss (:func:`rank_search.regularizers.dprp_structure_loss`): U and V
  orthonormal, ``s`` non-negative and sorted descending;
* the compression loss (:func:`rank_search.regularizers.dprp_compression_loss`): Hoyer
  ``||s||_1/||s||_2`` or L1 on ``s``, driving the minor singular values towards zero.

**Pruning criterion (energy threshold).** After epoch ``start_epoch`` and then every
``prune_every`` epochs, each SVD layer keeps the smallest rank ``r`` whose largest ``|s_i|``
(sorted descending) hold at least ``energy`` of ``sum(s_i^2)``, and never less than
``min_rank``. The DPRP paper's own criterion was not recovered; this energy threshold is the
common choice of prior SVD-training work (Yang et al. 2020), see the methods reference.

**Real shrinking.** A layer that loses singular values is rebuilt smaller: ``v`` keeps the
kept rows of V^T, ``s`` the kept values and ``u`` the kept columns of U (in descending order
of ``|s|``), so MACs and parameters drop for the following epochs. The optimizer is rebuilt
and its momentum buffers are sliced the same way (not reset), so training continues smoothly.

:func:`export_ranks` turns the ranks a run ended with into a rank config (format ``svd``);
:func:`svd_everywhere` builds a full-rank SVD starting config.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..config import LayerSpec, ModelSpec, RankConfig, RegularizerSpec
from ..cost import AnalyticCost, live_layers
from ..layers import SVDConv2d, SVDLinear, low_rank_modules
from .config import DPRPConfig

if TYPE_CHECKING:
    from .loop import TrainResult

__all__ = [
    "DPRPConfig",
    "current_rank_config",
    "export_ranks",
    "keep_indices",
    "prune_due",
    "prune_svd_layers",
    "shrink_svd_layer",
    "svd_everywhere",
    "transfer_momentum",
]

SVDLayer = SVDConv2d | SVDLinear


def prune_due(dprp: DPRPConfig, epoch: int) -> bool:
    """Whether to prune after the 1-based ``epoch``."""
    return epoch >= dprp.start_epoch and (epoch - dprp.start_epoch) % dprp.prune_every == 0


def keep_indices(s: Tensor, energy: float, min_rank: int = 1) -> Tensor:
    """Indices of the singular values to keep, largest ``|s|`` first (energy criterion)."""
    magnitude = s.detach().abs().double()
    order = torch.argsort(magnitude, descending=True, stable=True)
    cumulative = (magnitude[order] ** 2).cumsum(0)
    total = cumulative[-1]
    rank = int((cumulative < energy * total).sum().item()) + 1 if total > 0 else min_rank
    rank = min(len(s), max(rank, min_rank))
    return order[:rank].to(s.device)


def shrink_svd_layer(
    layer: SVDLayer, keep: Tensor, memory_format: torch.memory_format = torch.contiguous_format
) -> SVDLayer:
    """A copy of ``layer`` holding only the components ``keep`` (same device and dtype).

    Conv weights get ``memory_format`` (the trainer's layout; a 1x1 weight's strides can't
    tell contiguous from channels_last). Copies rather than constructs, so no initialization
    (an SVD per layer) is wasted.
    """
    rank = len(keep)
    new = copy.deepcopy(layer)
    with torch.no_grad():
        new.v.weight = nn.Parameter(_laid_out(layer.v.weight[keep], memory_format))
        new.s = nn.Parameter(layer.s[keep].clone())
        new.u.weight = nn.Parameter(_laid_out(layer.u.weight[:, keep], memory_format))
    if isinstance(new.v, nn.Conv2d) and isinstance(new.u, nn.Conv2d):
        new.v.out_channels, new.u.in_channels = rank, rank
    elif isinstance(new.v, nn.Linear) and isinstance(new.u, nn.Linear):
        new.v.out_features, new.u.in_features = rank, rank
    return new


def _laid_out(values: Tensor, memory_format: torch.memory_format) -> Tensor:
    """``values`` copied into a new tensor in ``memory_format`` (4-D) or contiguous."""
    fmt = memory_format if values.dim() == 4 else torch.contiguous_format
    return torch.empty_like(values, memory_format=fmt).copy_(values)


def prune_svd_layers(
    model: nn.Module, dprp: DPRPConfig, memory_format: torch.memory_format = torch.contiguous_format
) -> dict[str, Tensor]:
    """Shrink every SVD layer of ``model`` in place; returns ``{name: kept indices}`` of changed ones."""
    kept: dict[str, Tensor] = {}
    for name, layer in low_rank_modules(model):
        if not isinstance(layer, SVDConv2d | SVDLinear):
            continue
        keep = keep_indices(layer.s, dprp.energy, dprp.min_rank)
        if len(keep) < layer.rank:
            model.set_submodule(name, shrink_svd_layer(layer, keep, memory_format))
            kept[name] = keep
    return kept


def _slice(param_name: str, tensor: Tensor, kept: Mapping[str, Tensor]) -> Tensor:
    layer, _, leaf = param_name.rpartition(".")
    if leaf in ("weight", "bias"):
        owner, _, child = layer.rpartition(".")
        if owner in kept and child == "v" and leaf == "weight":
            return tensor[kept[owner]]
        if owner in kept and child == "u" and leaf == "weight":
            return tensor[:, kept[owner]]
    if leaf == "s" and layer in kept:
        return tensor[kept[layer]]
    return tensor


def transfer_momentum(
    old_state: Mapping[str, Tensor],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    kept: Mapping[str, Tensor],
) -> None:
    """Put momentum buffers ``old_state`` (by parameter name) into ``optimizer``, sliced like the layers."""
    for name, param in model.named_parameters():
        buffer = old_state.get(name)
        if buffer is None:
            continue
        sliced = _slice(name, buffer, kept)
        if sliced.shape != param.shape:
            continue
        optimizer.state[param]["momentum_buffer"] = torch.empty_like(param).copy_(sliced)


def momentum_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """The optimizer's momentum buffers keyed by parameter name."""
    out = {}
    for name, param in model.named_parameters():
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            out[name] = buffer
    return out


def current_rank_config(model: nn.Module, base: RankConfig, costs: AnalyticCost | None = None) -> RankConfig:
    """``base`` with the ranks of ``model``'s low-rank layers as they are now, cost recomputed
    analytically (``costs``: the run's :class:`~rank_search.cost.AnalyticCost`, else listed now)."""
    costs = costs or AnalyticCost.of(base)
    layers = {**base.layers, **live_layers(model)}
    return RankConfig(
        base.model, base.input_size, layers, base.regularizer, costs.of_model(model), dict(base.provenance)
    )


def export_ranks(result: TrainResult) -> RankConfig:
    """The ranks a (DPRP) training run ended with, as a rank config (SVD layers in format ``svd``).

    Save it with :func:`rank_search.config.save_rank_config`; :func:`~rank_search.config.load_rank_config`
    reads it back.
    """
    config = current_rank_config(result.model, result.rank_config)
    provenance = {**config.provenance, "source": "dprp", "epochs": result.epochs, "status": result.status}
    return RankConfig(
        config.model, config.input_size, config.layers, config.regularizer, config.cost, provenance
    )


def svd_everywhere(
    model_name: str,
    num_classes: int = 10,
    input_size: tuple[int, int, int] | None = None,
    *,
    names: list[str] | None = None,
    ratio: float = 1.0,
) -> RankConfig:
    """A rank config putting layers in the ``svd`` format at ``ratio`` of full rank (DPRP start).

    Default layers: every conv that allows ``svd`` and has a kernel larger than 1x1, except the
    first conv (the stem); linear layers and 1x1 (downsample) convs stay dense, following the
    group conventions for CIFAR and ImageNet ResNets. The orthogonality regularizer is ``none``
    (DPRP's structure loss keeps U and V orthonormal).
    """
    from ..convert import layer_infos
    from ..models import default_input_size

    size = input_size or default_input_size(model_name)
    by_name = layer_infos(model_name, num_classes, size)
    convs = [info for info in by_name.values() if info.kind == "conv"]
    if names is None:
        names = [i.name for i in convs[1:] if i.allows("svd") and i.kernel_size != (1, 1)]
    layers = {}
    for name in names:
        full = by_name[name].full_ranks["svd"]["rank"]
        layers[name] = LayerSpec.svd(max(1, min(full, round(full * ratio))))
    return RankConfig(
        ModelSpec(model_name, num_classes),
        size,
        layers,
        RegularizerSpec("none", 0.0, "constant"),
        provenance={"source": "svd_everywhere", "ratio": ratio},
    )

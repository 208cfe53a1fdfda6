"""Model conversion: apply a rank config by module name, build the model of a rank config.

The listing of a model's layers (:class:`LayerInfo`, :func:`list_factorizable`,
:func:`layer_infos`) lives in :mod:`rank_search.cost`, beside the formulas and sums that use it
(cost sits below convert, docs/architecture.md); it is re-exported here under its old names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import nn

from ._validate import close_names as close_names
from .cost import LOW_RANK_FORMATS as LOW_RANK_FORMATS
from .cost import LayerInfo as LayerInfo
from .cost import layer_infos as layer_infos
from .cost import list_factorizable as list_factorizable
from .errors import ConfigError
from .layers import make_low_rank, unfactorizable_reason
from .models import create_model

if TYPE_CHECKING:
    from .config import RankConfig
    from .specs import LayerSpec


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


def build_model(config: RankConfig, *, seed: int | None = None, init: str = "scratch") -> nn.Module:
    """The model of ``config`` with every listed layer in its low-rank form (fresh weights).

    ``seed`` makes the dense and the low-rank initialization reproducible without touching
    the global RNG.
    """
    import torch

    model = create_model(config.model.name, num_classes=config.model.num_classes, seed=seed)
    if seed is None:
        apply_rank_config(model, config.layers, init=init)
        return model
    with torch.random.fork_rng(devices=[]):  # the low-rank init is seeded too
        torch.manual_seed(seed + 1)
        apply_rank_config(model, config.layers, init=init)
    return model

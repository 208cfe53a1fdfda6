"""Singular-value spectra and effective ranks of a trained run's layers.

For every conv/linear layer, in network order, the spectrum is the singular values of the
layer's *dense* weight unfolded as ``C_out x (C_in*kh*kw)``: for low-rank layers the weight is
reconstructed with ``to_dense()`` (so Tucker-2 and SVD layers are measured the same way; for an
SVD layer this equals its ``s`` only when ``U`` and ``V`` are exactly orthonormal, which
training does not guarantee), and dense layers use their weight directly. The ``source``
column says which.

The effective rank at ``p`` is the smallest ``r`` whose top-``r`` singular values hold a
fraction ``p`` of the energy ``sum(s_i**2)``; reported at 90% and 99%.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..runs import load_run_model as load_run_model

if TYPE_CHECKING:
    from torch import nn

ENERGY_LEVELS = (0.9, 0.99)


@dataclass(frozen=True)
class LayerSpectrum:
    """One layer's singular values (descending) and where its weight came from."""

    layer: str
    format: str  # dense | tucker2 | svd
    source: str  # "to_dense" for low-rank layers, "weight" for dense ones
    singular_values: np.ndarray
    config_rank: int | None  # the rank the layer was built with (tucker2: rank_out, svd: rank)

    @property
    def full_rank(self) -> int:
        return len(self.singular_values)

    def effective_rank(self, energy: float) -> int:
        """Smallest r with ``sum(s[:r]**2) >= energy * sum(s**2)`` (0 for an all-zero weight)."""
        power = self.singular_values.astype(float) ** 2
        total = power.sum()
        if total <= 0:
            return 0
        cumulative = np.cumsum(power) / total
        return int(np.searchsorted(cumulative, energy - 1e-12) + 1)


def layer_spectra(model: nn.Module) -> list[LayerSpectrum]:
    """Spectra of every conv/linear layer of ``model`` not inside a low-rank layer, in module order."""
    import torch

    from ..cost import counted_modules
    from ..layers import LowRankLayer

    out: list[LayerSpectrum] = []
    for name, module in counted_modules(model):
        rank: int | None = None
        if isinstance(module, LowRankLayer):
            weight, fmt, source = module.to_dense().weight, module.format, "to_dense"
            ranks = module.ranks()
            rank = ranks.get("rank_out", ranks.get("rank"))
        else:
            assert isinstance(module.weight, torch.Tensor)
            weight, fmt, source = module.weight, "dense", "weight"
        with torch.no_grad():
            values = torch.linalg.svdvals(weight.detach().float().flatten(1)).cpu().numpy()
        out.append(LayerSpectrum(name, fmt, source, values, rank))
    return out


def spectra_table(spectra: list[LayerSpectrum]) -> pd.DataFrame:
    """One row per layer: format, source, full rank, configured rank, effective ranks at 90/99%."""
    rows = []
    for spec in spectra:
        row: dict[str, object] = {
            "layer": spec.layer,
            "format": spec.format,
            "source": spec.source,
            "full_rank": spec.full_rank,
            "config_rank": spec.config_rank,
        }
        for level in ENERGY_LEVELS:
            erank = spec.effective_rank(level)
            row[f"erank{round(level * 100)}"] = erank
            row[f"erank{round(level * 100)}_ratio"] = erank / spec.full_rank if spec.full_rank else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def spectra_matrix(spectra: list[LayerSpectrum]) -> np.ndarray:
    """Layers x max-length matrix of ``s_i / s_0`` (NaN past a layer's full rank), for heat maps."""
    width = max((s.full_rank for s in spectra), default=0)
    matrix = np.full((len(spectra), width), np.nan)
    for row, spec in enumerate(spectra):
        top = spec.singular_values[0] if spec.full_rank and spec.singular_values[0] > 0 else 1.0
        matrix[row, : spec.full_rank] = spec.singular_values / top
    return matrix


def run_label(run_dir: str | Path) -> str:
    """A short name for a run: its directory name and final accuracy from metrics.json if present."""
    run = Path(run_dir)
    label = run.resolve().name
    try:
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return label
    accuracy = metrics.get("val_accuracy") if isinstance(metrics, dict) else None
    return f"{label} (val acc {accuracy:.3f})" if isinstance(accuracy, int | float) else label

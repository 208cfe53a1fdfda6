"""Analysis of a rank search: load trials, Pareto fronts, selection, export, redundancy, spectra.

Data modules (``results``, ``pareto``, ``export``, ``redundancy``, ``spectra``, ``allocation``)
return plain DataFrames and dataclasses and never import matplotlib or Optuna at import time;
``plots`` draws them and ``report`` assembles ``report.html``. Names below load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SearchResults": "results",
    "load_search": "results",
    "non_dominated": "pareto",
    "pareto_front": "pareto",
    "fit_front": "pareto",
    "FrontFit": "pareto",
    "select_at_budget": "pareto",
    "resolve_budget": "pareto",
    "export_best": "export",
    "rank_distribution": "redundancy",
    "layer_sensitivity": "redundancy",
    "layer_spectra": "spectra",
    "load_run_model": "spectra",
    "allocation_vs_uniform": "allocation",
    "baselines": "baselines",
    "compute_analysis": "pipeline",
    "write_analysis": "pipeline",
    "analyze": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'rank_search.analysis' has no attribute '{name}'")

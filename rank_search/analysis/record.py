"""The :class:`Analysis` record: everything ``rank-search analyze`` computes about one search.

Plain data, here so that :mod:`rank_search.analysis.pipeline` (which computes it) and
:mod:`rank_search.analysis.report` (which renders it) both import it without importing each
other; ``pipeline`` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .allocation import Allocation
from .baselines import Baselines
from .pareto import FrontFit, FrontPrediction
from .results import SearchResults, status_counts
from .spectra import LayerSpectrum


@dataclass
class Analysis:
    """Everything ``rank-search analyze`` computes about one search directory."""

    results: SearchResults
    budget_macs: int | None
    front: pd.DataFrame
    fit: FrontFit
    prediction: FrontPrediction | None
    baselines: Baselines
    selection: pd.DataFrame
    selection_error: str | None
    chosen_id: str | None
    allocation: Allocation | None
    distribution: pd.DataFrame
    sensitivity: pd.DataFrame
    importance_note: str
    importances: dict[str, float] | None
    rungs: list[int]
    curves: pd.DataFrame
    spectra: list[tuple[str, list[LayerSpectrum]]] = field(default_factory=list)
    top_fraction: float = 0.25
    axis: str = "macs"  # what the front, fit and selection use as cost: macs | latency
    budget_latency_ms: float | None = None  # the budget on the latency axis (budget_macs is None then)

    @property
    def budget(self) -> float | None:
        """The budget on :attr:`axis` (MACs, or ms of predicted latency)."""
        return self.budget_latency_ms if self.axis == "latency" else self.budget_macs

    @property
    def axis_column(self) -> str:
        return "latency_ms" if self.axis == "latency" else "macs"

    @property
    def counts(self) -> dict[str, int]:
        return status_counts(self.results.trials)

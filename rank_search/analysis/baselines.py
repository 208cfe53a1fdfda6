"""Reference points for a search: the dense model and the uniform-ratio configs.

Trials tagged ``"dense"`` give the dense model's accuracy; trials tagged ``"uniform"`` (the
same rank ratio in every layer) are the baseline a searched allocation must beat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ..search.records import UNIFORM_TAG
from .results import SearchResults, has_tag


@dataclass(frozen=True)
class Baselines:
    """Dense MACs and accuracy (if a fully-trained ``dense`` trial exists) and the uniform trials."""

    dense_macs: float
    dense_accuracy: float
    dense_trial_id: str | None
    uniform: pd.DataFrame  # fully-trained "uniform" trials, by MACs ascending

    def best_uniform_at(
        self, budget: float | None, metric: str = "val_accuracy", column: str = "macs"
    ) -> pd.Series | None:
        """The most accurate fully-trained uniform trial with ``column`` (``macs`` or ``latency_ms``)
        within ``budget`` (in that column's unit: MACs or ms; any, if None)."""
        pool = self.uniform if budget is None else self.uniform[self.uniform[column] <= budget]
        if pool.empty:
            return None
        return pool.sort_values([metric, column], ascending=[False, True], kind="stable").iloc[0]


def baselines(results: SearchResults, metric: str = "val_accuracy") -> Baselines:
    """The dense and uniform reference points of ``results``."""
    trials = results.trials
    full = trials[trials["fully_trained"]]
    dense_rows = full[has_tag(full, "dense")]
    dense_accuracy, dense_id = math.nan, None
    if not dense_rows.empty:
        best = dense_rows.sort_values(metric, ascending=False, kind="stable").iloc[0]
        dense_accuracy, dense_id = float(best[metric]), str(best["trial_id"])
    dense_macs = float(results.dense_macs) if results.dense_macs else math.nan
    uniform = full[has_tag(full, UNIFORM_TAG)].sort_values("macs", kind="stable")
    return Baselines(dense_macs, dense_accuracy, dense_id, uniform)

"""Pareto fronts, the fitted accuracy-vs-cost front, and selection under a budget.

The fronts and the selection live in :mod:`rank_search.search.selection` (the search selects its
best trial with them) and are re-exported here; the fitted front (:func:`fit_front`) is here.

The rules on the cost axis, which trials may be on a front and duplicates are
:mod:`rank_search.search.selection`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..search.selection import ALPHA as ALPHA
from ..search.selection import AXES as AXES
from ..search.selection import AXIS_UNITS as AXIS_UNITS
from ..search.selection import COST_TIE as COST_TIE
from ..search.selection import DIRECTIONS as DIRECTIONS
from ..search.selection import SELECTION_NOTE as SELECTION_NOTE
from ..search.selection import _amount, _on_axis
from ..search.selection import axis_column as axis_column
from ..search.selection import non_dominated as non_dominated
from ..search.selection import pareto_front as pareto_front
from ..search.selection import resolve_budget as resolve_budget
from ..search.selection import select_at_budget as select_at_budget
from ..search.selection import selection_note as selection_note
from ..search.selection import selection_summary as selection_summary
from ..search.selection import tied_count as tied_count

MIN_FIT_POINTS = 3


@dataclass(frozen=True)
class FrontPrediction:
    """Predicted accuracy at ``macs`` (the cost on the fit's axis) with a ``level`` band; NaN where
    the fit can't say."""

    macs: float
    accuracy: float
    low: float
    high: float
    level: float
    extrapolated: bool
    ok: bool
    message: str = ""


@dataclass(frozen=True)
class FrontFit:
    """Monotone piecewise-linear front in log(MACs), with a bootstrap band.

    On ``axis="latency"`` read "latency" for "MACs" throughout (``knots_macs`` hold ms).

    How: the non-dominated fully-trained trials, sorted by MACs, have strictly increasing
    accuracy, so linear interpolation between them in log(MACs) is already a monotone
    non-decreasing curve that passes exactly through every front point; no smoothing is
    needed or wanted. Below the cheapest front point the curve is undefined (NaN: nothing that
    cheap was trained); above the most expensive it is held flat (a lower bound, ``extrapolated``).

    Why: a budget decision needs the *best* accuracy reachable at a cost, i.e. the upper
    envelope, not the typical trial (isotonic regression of all trials would estimate that).
    log(MACs) because accuracy varies roughly linearly in log-compute and budgets span orders
    of magnitude, so the interpolation does not depend on the MACs unit.

    Band: the front is re-fitted on ``n_boot`` bootstrap resamples of the fully-trained trials
    and the band is their ``(1-level)/2 .. (1+level)/2`` percentile range at each MACs value.
    Resampling can only drop trials, so the band mostly reaches below the curve: it shows how
    much the front rests on single (possibly lucky) trials, not seed-to-seed noise, which the
    search does not measure.
    """

    knots_macs: np.ndarray
    knots_accuracy: np.ndarray
    ok: bool
    message: str
    n_trials: int
    level: float = 0.9
    boot_knots: tuple[tuple[np.ndarray, np.ndarray], ...] = field(default=())
    axis: str = "macs"

    def curve(self, macs: np.ndarray | Sequence[float]) -> np.ndarray:
        """Fitted accuracy at each of ``macs`` (NaN when not ``ok`` or below the range)."""
        x = np.asarray(macs, dtype=float)
        if not self.ok:
            return np.full(x.shape, math.nan)
        return _interp_front(x, self.knots_macs, self.knots_accuracy)

    def band(self, macs: np.ndarray | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bootstrap percentiles at each of ``macs`` (NaN where unknown)."""
        x = np.asarray(macs, dtype=float)
        if not self.ok or not self.boot_knots:
            return np.full(x.shape, math.nan), np.full(x.shape, math.nan)
        curves = np.stack([_interp_front(x, kx, ky) for kx, ky in self.boot_knots])
        defined = (~np.isnan(curves)).sum(axis=0)
        q = 100 * np.array([(1 - self.level) / 2, (1 + self.level) / 2])
        low, high = np.full(x.shape, math.nan), np.full(x.shape, math.nan)
        enough = defined * 2 >= len(self.boot_knots)
        if enough.any():
            pct = np.nanpercentile(curves[:, enough], q, axis=0)
            low[enough], high[enough] = pct[0], pct[1]
        return low, high

    def predict(self, macs: float) -> FrontPrediction:
        """The fitted accuracy and band at one MACs value."""
        if not self.ok:
            return FrontPrediction(macs, math.nan, math.nan, math.nan, self.level, False, False, self.message)
        accuracy = float(self.curve([macs])[0])
        low, high = (float(v[0]) for v in self.band([macs]))
        extrapolated = macs > float(self.knots_macs[-1])
        message = ""
        if math.isnan(accuracy):
            cheapest = _amount(float(self.knots_macs[0]), self.axis)
            message = f"{_amount(macs, self.axis)} is below the cheapest front point ({cheapest})"
        elif extrapolated:
            message = "above the most expensive front point: held flat (a lower bound)"
        return FrontPrediction(macs, accuracy, low, high, self.level, extrapolated, True, message)


def _interp_front(x: np.ndarray, knots_x: np.ndarray, knots_y: np.ndarray) -> np.ndarray:
    """Piecewise-linear in log(x) through the knots; NaN below the first, flat above the last."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lx = np.log(np.where(x > 0, x, np.nan))
    return np.interp(lx, np.log(knots_x), knots_y, left=math.nan, right=float(knots_y[-1]))


def _front_knots(macs: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = non_dominated(np.column_stack([macs, accuracy]), ["min", "max"])
    order = index[np.argsort(macs[index], kind="stable")]
    return macs[order], accuracy[order]


def fit_front(
    trials: pd.DataFrame,
    metric: str = "val_accuracy",
    *,
    n_boot: int = 200,
    level: float = 0.9,
    seed: int = 0,
    axis: str = "macs",
) -> FrontFit:
    """Fit the monotone front of the fully-trained trials on ``axis`` (see :class:`FrontFit`).

    Needs at least 3 non-dominated points; otherwise the result has ``ok=False`` and says so.
    """
    pool, column = _on_axis(trials, axis), axis_column(axis)
    pool = pool[pool[column] > 0]
    macs, accuracy = pool[column].to_numpy(float), pool[metric].to_numpy(float)
    if len(pool) == 0:
        kx, ky = np.array([]), np.array([])
    else:
        kx, ky = _front_knots(macs, accuracy)
    if len(kx) < MIN_FIT_POINTS:
        message = (
            f"not enough points to fit a front (need >= {MIN_FIT_POINTS} non-dominated fully-trained "
            f"trials, have {len(kx)} from {len(pool)} fully-trained)"
        )
        return FrontFit(kx, ky, False, message, len(pool), level, axis=axis)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        pick = np.unique(rng.integers(0, len(pool), len(pool)))
        boots.append(_front_knots(macs[pick], accuracy[pick]))
    message = f"{len(kx)} front points from {len(pool)} fully-trained trials; band: {n_boot} bootstraps"
    return FrontFit(kx, ky, True, message, len(pool), level, tuple(boots), axis)


# --- budgets and selection ----------------------------------------------------------------------

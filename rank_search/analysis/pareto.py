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
    """Monotone accuracy-vs-cost front in log(MACs), with a bootstrap band.

    On ``axis="latency"`` read "latency" for "MACs" throughout (``knots_macs`` hold ms).

    How: isotonic regression (scikit-learn's pool-adjacent-violators) of accuracy on log(MACs)
    over *every* fully-trained trial: the non-decreasing step function closest to them in least
    squares. The knots are its values at the distinct trial costs; between knots the curve is
    linear in log(MACs). Below the cheapest trial it is undefined (NaN: nothing that cheap was
    trained); above the most expensive it is held flat (``extrapolated``).

    Why: a trial's accuracy is a noisy draw (validation images, training noise), so the upper
    envelope of the trials (the non-dominated points, still drawn as markers) is biased up by
    the luckiest trial, and needs 3 non-dominated points to exist at all. The isotonic fit
    averages neighbouring trials instead, exists for any 3 or more fully-trained trials, and is
    monotone by construction (more MACs never predicts less accuracy). log(MACs) because
    accuracy varies roughly linearly in log-compute and budgets span orders of magnitude; the fit
    does not depend on the MACs unit.

    Band: the fit is repeated on ``n_boot`` bootstrap resamples of the trials (drawn with
    replacement) and the band is their ``(1-level)/2 .. (1+level)/2`` percentile range at each
    cost: how much the front rests on individual trials.
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
    """The isotonic fit's value at each distinct cost (ascending)."""
    from sklearn.isotonic import IsotonicRegression

    log_cost = np.log(macs)
    fitted = IsotonicRegression(increasing=True).fit(log_cost, accuracy)
    knots = np.unique(macs)
    return knots, np.asarray(fitted.predict(np.log(knots)), dtype=float)


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

    Needs at least 3 fully-trained trials with a cost; otherwise the result has ``ok=False`` and
    says so.
    """
    pool, column = _on_axis(trials, axis), axis_column(axis)
    pool = pool[(pool[column] > 0) & pool[metric].notna()]
    macs, accuracy = pool[column].to_numpy(float), pool[metric].to_numpy(float)
    if len(pool) < MIN_FIT_POINTS:
        need = f"need >= {MIN_FIT_POINTS} fully-trained trials, have {len(pool)}"
        message = f"not enough trials to fit a front ({need})"
        return FrontFit(np.array([]), np.array([]), False, message, len(pool), level, axis=axis)
    kx, ky = _front_knots(macs, accuracy)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(pool), len(pool))
        boots.append(_front_knots(macs[pick], accuracy[pick]))
    message = f"isotonic fit of {len(pool)} fully-trained trials ({len(kx)} distinct costs)"
    message += f"; band: {n_boot} bootstraps"
    return FrontFit(kx, ky, True, message, len(pool), level, tuple(boots), axis)


# --- budgets and selection ----------------------------------------------------------------------

"""Pareto fronts, the fitted accuracy-vs-MACs front, and selection under a MACs budget.

Only fully-trained trials (status ``completed`` and every planned epoch run) can be on the
front or be selected: an early-stopped, failed, diverged or still-running trial's accuracy is
not comparable to a fully-trained one.

Duplicates: trials with exactly the same objective values are all non-dominated or all
dominated; :func:`non_dominated` keeps only the first of them (the earliest trial in the
frame's trial order) by default (``duplicates="first"``), or all with ``duplicates="all"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import BudgetError, RankSearchError

DIRECTIONS = ("min", "max")


def non_dominated(
    points: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str], *, duplicates: str = "first"
) -> np.ndarray:
    """Indices (ascending) of the rows of ``points`` (n x k) that no other row dominates.

    ``directions[j]`` is ``"min"`` or ``"max"`` for objective ``j``. Row ``a`` dominates ``b``
    when it is at least as good in every objective and strictly better in one. Rows with a NaN
    are never on the front. Rows with identical values: ``duplicates="first"`` keeps the lowest
    index, ``"all"`` keeps every copy.
    """
    values = np.asarray(points, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(directions):
        raise ValueError(f"points must be n x {len(directions)}, got shape {values.shape}")
    if any(d not in DIRECTIONS for d in directions):
        raise ValueError(f"directions must be 'min' or 'max', got {list(directions)}")
    if duplicates not in ("first", "all"):
        raise ValueError(f"duplicates must be 'first' or 'all', got {duplicates!r}")
    signs = np.array([1.0 if d == "min" else -1.0 for d in directions])
    cost = values * signs  # now every objective is minimized
    valid = np.flatnonzero(~np.isnan(cost).any(axis=1))
    keep = []
    for i in valid:
        others = cost[valid]
        no_worse = (others <= cost[i]).all(axis=1)
        better = (others < cost[i]).any(axis=1)
        if (no_worse & better).any():
            continue
        same_earlier = (others == cost[i]).all(axis=1) & (valid < i)
        if duplicates == "first" and same_earlier.any():
            continue
        keep.append(i)
    return np.array(keep, dtype=int)


def pareto_front(
    trials: pd.DataFrame, metric: str = "val_accuracy", *, duplicates: str = "first"
) -> pd.DataFrame:
    """The fully-trained trials not dominated in (``metric`` up, ``macs`` down), by MACs ascending.

    Along the returned front both MACs and ``metric`` strictly increase.
    """
    pool = trials[trials["fully_trained"]]
    if pool.empty:
        return pool.copy()
    index = non_dominated(pool[["macs", metric]].to_numpy(float), ["min", "max"], duplicates=duplicates)
    return pool.iloc[index].sort_values("macs", kind="stable")


# --- the fitted front ---------------------------------------------------------------------------


MIN_FIT_POINTS = 3


@dataclass(frozen=True)
class FrontPrediction:
    """Predicted accuracy at ``macs`` with a ``level`` band; NaN where the fit can't say."""

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
            message = f"{macs:,.0f} MACs is below the cheapest front point ({self.knots_macs[0]:,.0f})"
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
) -> FrontFit:
    """Fit the monotone front of the fully-trained trials (see :class:`FrontFit`).

    Needs at least 3 non-dominated points; otherwise the result has ``ok=False`` and says so.
    """
    pool = trials[trials["fully_trained"] & (trials["macs"] > 0)]
    macs, accuracy = pool["macs"].to_numpy(float), pool[metric].to_numpy(float)
    if len(pool) == 0:
        kx, ky = np.array([]), np.array([])
    else:
        kx, ky = _front_knots(macs, accuracy)
    if len(kx) < MIN_FIT_POINTS:
        message = (
            f"not enough points to fit a front (need >= {MIN_FIT_POINTS} non-dominated fully-trained "
            f"trials, have {len(kx)} from {len(pool)} fully-trained)"
        )
        return FrontFit(kx, ky, False, message, len(pool), level)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        pick = np.unique(rng.integers(0, len(pool), len(pool)))
        boots.append(_front_knots(macs[pick], accuracy[pick]))
    message = f"{len(kx)} front points from {len(pool)} fully-trained trials; band: {n_boot} bootstraps"
    return FrontFit(kx, ky, True, message, len(pool), level, tuple(boots))


# --- budgets and selection ----------------------------------------------------------------------


def resolve_budget(
    dense_macs: int | None, *, fraction: float | None = None, max_macs: float | None = None
) -> int | None:
    """A MACs budget from a fraction of the dense model's MACs or an absolute count (or None)."""
    if fraction is not None and max_macs is not None:
        raise RankSearchError("give either a budget fraction or --max-macs, not both")
    if fraction is not None:
        if not fraction > 0:
            raise RankSearchError(f"budget fraction must be > 0, got {fraction}")
        if not dense_macs:
            raise RankSearchError("cannot use a budget fraction: the dense model's MACs are unknown")
        return math.floor(fraction * dense_macs)
    if max_macs is not None:
        if not max_macs > 0:
            raise RankSearchError(f"--max-macs must be > 0, got {max_macs}")
        return int(max_macs)
    return None


def _describe(row: pd.Series) -> str:
    number = row["optuna_trial_number"]
    optuna = f" (optuna #{int(number)})" if not pd.isna(number) else ""
    fraction = row["macs_fraction"]
    frac = f", {fraction:.3f} of dense" if math.isfinite(fraction) else ""
    return f"trial {row['trial_id']}{optuna} with {int(row['macs']):,} MACs{frac}"


def select_at_budget(
    trials: pd.DataFrame, max_macs: float, *, top: int = 1, metric: str = "val_accuracy"
) -> pd.DataFrame:
    """The ``top`` fully-trained trials with ``macs <= max_macs``, best ``metric`` first.

    Ties in ``metric`` go to fewer MACs, then the earlier trial. Raises :class:`BudgetError`
    naming the cheapest fully-trained trial when none fits (or when none is fully trained).
    """
    if top < 1:
        raise RankSearchError(f"--top must be >= 1, got {top}")
    pool = trials[trials["fully_trained"]]
    if pool.empty:
        counts = trials["status"].value_counts().to_dict()
        raise BudgetError(f"no fully-trained trial yet (trials by status: {counts})")
    fits = pool[pool["macs"] <= max_macs]
    if fits.empty:
        cheapest = pool.sort_values(["macs"], kind="stable").iloc[0]
        dense = cheapest["dense_macs"]
        budget = f"{max_macs:,.0f} MACs" + (f" ({max_macs / dense:.3f} of dense)" if dense > 0 else "")
        raise BudgetError(
            f"no fully-trained trial meets the budget of {budget}; the cheapest fully-trained is "
            f"{_describe(cheapest)}"
        )
    ranked = fits.assign(_order=np.arange(len(fits)))
    ranked = ranked.sort_values([metric, "macs", "_order"], ascending=[False, True, True], kind="stable")
    return ranked.drop(columns="_order").head(top)

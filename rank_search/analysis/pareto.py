"""Pareto fronts, the fitted accuracy-vs-cost front, and selection under a budget.

The cost axis is MACs (``axis="macs"``, the ``macs`` column) or the predicted latency of a
latency-budget search (``axis="latency"``, the ``latency_ms`` column, ms per batch on the
search's device); every function here takes ``axis`` (default MACs). Trials without a value
on the axis are left out.

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
from ..search.records import UNIFORM_TAG
from .results import has_tag

DIRECTIONS = ("min", "max")
AXES = {"macs": "macs", "latency": "latency_ms"}  # axis -> trials column
AXIS_UNITS = {"macs": "MACs", "latency": "ms"}


def axis_column(axis: str) -> str:
    """The trials column of ``axis`` (``macs`` | ``latency``)."""
    if axis not in AXES:
        raise RankSearchError(f"axis must be one of {list(AXES)}, got {axis!r}")
    return AXES[axis]


def _on_axis(trials: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Fully-trained trials with a value on ``axis``."""
    column = axis_column(axis)
    if column not in trials:
        return trials.iloc[0:0]
    return trials[trials["fully_trained"] & trials[column].notna()]


def _amount(value: float, axis: str) -> str:
    return f"{value:,.0f} MACs" if axis == "macs" else f"{value:.3f} ms"


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
    trials: pd.DataFrame, metric: str = "val_accuracy", *, duplicates: str = "first", axis: str = "macs"
) -> pd.DataFrame:
    """The fully-trained trials not dominated in (``metric`` up, cost down), by cost ascending.

    The cost is the ``axis`` column (MACs or ``latency_ms``). Along the returned front both the
    cost and ``metric`` strictly increase.
    """
    pool, column = _on_axis(trials, axis), axis_column(axis)
    if pool.empty:
        return pool.copy()
    index = non_dominated(pool[[column, metric]].to_numpy(float), ["min", "max"], duplicates=duplicates)
    return pool.iloc[index].sort_values(column, kind="stable")


# --- the fitted front ---------------------------------------------------------------------------


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


def _describe(row: pd.Series, axis: str = "macs") -> str:
    number = row["optuna_trial_number"]
    optuna = f" (optuna #{int(number)})" if not pd.isna(number) else ""
    fraction = row["macs_fraction"]
    frac = f", {fraction:.3f} of dense" if math.isfinite(fraction) else ""
    latency = f", {row['latency_ms']:.3f} ms predicted latency" if axis == "latency" else ""
    return f"trial {row['trial_id']}{optuna} with {int(row['macs']):,} MACs{frac}{latency}"


NOISE_Z = 2.0
"""The selection keeps the search's uniform starting point first unless the best trial leads it
by more than this many standard errors of the difference of two validation accuracies."""


def noise_margin(a: float, b: float, val_size: float, z: float = NOISE_Z) -> float:
    """``z`` binomial standard errors of the difference of two accuracies ``a`` and ``b``, each
    measured on ``val_size`` images: a lead this small is what re-drawing the validation images
    alone can give (trial-to-trial training noise comes on top)."""
    return z * math.sqrt((a * (1 - a) + b * (1 - b)) / val_size)


def _uniform_unless_beaten(ranked: pd.DataFrame, metric: str, z: float) -> pd.DataFrame:
    """``ranked`` with the fitting uniform starting point moved first when the best trial's lead
    over it is within :func:`noise_margin` (a search cannot claim an allocation it cannot tell
    from uniform)."""
    if z <= 0 or metric != "val_accuracy" or "val_size" not in ranked or "tags" not in ranked:
        return ranked
    uniform = ranked[has_tag(ranked, UNIFORM_TAG)]
    if uniform.empty or uniform.index[0] == ranked.index[0]:
        return ranked
    best, base = ranked.iloc[0], uniform.iloc[0]
    size = float(base["val_size"])
    if not (math.isfinite(size) and size > 0):
        return ranked  # records from before val_size was kept: plain best-first
    lead, margin = best[metric] - base[metric], noise_margin(best[metric], base[metric], size, z)
    if lead > margin:
        return ranked
    out = pd.concat([uniform.iloc[:1], ranked.drop(index=uniform.index[0])])
    out.attrs[SELECTION_NOTE] = (
        f"kept the uniform starting point (trial {base['trial_id']}): the best trial "
        f"{best['trial_id']} led it by {lead:.4f} in {metric}, within the noise margin {margin:.4f} "
        f"({z:g} standard errors on {size:.0f} validation images)"
    )
    return out


SELECTION_NOTE = "selection_note"


def selection_note(chosen: pd.DataFrame) -> str | None:
    """Why :func:`select_at_budget` put the uniform starting point first, or None when it did not."""
    note = chosen.attrs.get(SELECTION_NOTE)
    return str(note) if note else None


def select_at_budget(
    trials: pd.DataFrame,
    max_macs: float,
    *,
    top: int = 1,
    metric: str = "val_accuracy",
    axis: str = "macs",
    noise_z: float = NOISE_Z,
) -> pd.DataFrame:
    """The ``top`` fully-trained trials with cost ``<= max_macs``, best ``metric`` first.

    The cost is the ``axis`` column (``max_macs`` is then in ms for ``axis="latency"``). Ties in
    ``metric`` go to the cheaper trial, then the earlier one. The one exception: the search's
    uniform starting point (tag ``uniform``) comes first when the best trial leads it by no more
    than ``noise_z`` standard errors of the validation accuracies (:func:`noise_margin`; 0 turns
    this off). Raises :class:`BudgetError` naming the cheapest fully-trained trial when none fits
    (or when none is fully trained).
    """
    if top < 1:
        raise RankSearchError(f"--top must be >= 1, got {top}")
    column = axis_column(axis)
    pool = _on_axis(trials, axis)
    if pool.empty:
        counts = trials["status"].value_counts().to_dict()
        what = "" if axis == "macs" else " with a recorded latency_ms"
        raise BudgetError(f"no fully-trained trial{what} yet (trials by status: {counts})")
    fits = pool[pool[column] <= max_macs]
    if fits.empty:
        cheapest = pool.sort_values([column], kind="stable").iloc[0]
        dense = cheapest["dense_macs"]
        budget = _amount(max_macs, axis)
        if axis == "macs" and dense > 0:
            budget += f" ({max_macs / dense:.3f} of dense)"
        raise BudgetError(
            f"no fully-trained trial meets the budget of {budget}; the cheapest fully-trained is "
            f"{_describe(cheapest, axis)}"
        )
    ranked = fits.assign(_order=np.arange(len(fits)))
    ranked = ranked.sort_values([metric, column, "_order"], ascending=[False, True, True], kind="stable")
    ranked = _uniform_unless_beaten(ranked.drop(columns="_order"), metric, noise_z)
    chosen = ranked.head(top)
    chosen.attrs = dict(ranked.attrs)
    return chosen

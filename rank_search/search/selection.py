"""Pareto fronts and selection under a budget (the fitted front is in :mod:`rank_search.analysis.pareto`).

Below both the search (which selects and exports ``best.json`` at its end) and the analysis
(which re-exports these names from :mod:`rank_search.analysis.pareto`).

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

import numpy as np
import pandas as pd

from ..errors import BudgetError, RankSearchError
from .records import UNIFORM_TAG
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
    budget: float,
    *,
    top: int = 1,
    metric: str = "val_accuracy",
    axis: str = "macs",
    noise_z: float = NOISE_Z,
) -> pd.DataFrame:
    """The ``top`` fully-trained trials with cost ``<= budget``, best ``metric`` first.

    The cost is the ``axis`` column, and ``budget`` is in its unit (:data:`AXIS_UNITS`: MACs,
    or ms for ``axis="latency"``). Ties in
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
    fits = pool[pool[column] <= budget]
    if fits.empty:
        cheapest = pool.sort_values([column], kind="stable").iloc[0]
        dense = cheapest["dense_macs"]
        shown = _amount(budget, axis)
        if axis == "macs" and dense > 0:
            shown += f" ({budget / dense:.3f} of dense)"
        raise BudgetError(
            f"no fully-trained trial meets the budget of {shown}; the cheapest fully-trained is "
            f"{_describe(cheapest, axis)}"
        )
    ranked = fits.assign(_order=np.arange(len(fits)))
    ranked = ranked.sort_values([metric, column, "_order"], ascending=[False, True, True], kind="stable")
    ranked = _uniform_unless_beaten(ranked.drop(columns="_order"), metric, noise_z)
    chosen = ranked.head(top)
    chosen.attrs = dict(ranked.attrs)
    return chosen

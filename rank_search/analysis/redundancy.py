"""Per-layer redundancy: which ranks the best trials chose, and how much each layer matters.

* :func:`rank_distribution`: each layer's rank ratio (``rank:<layer>``, fraction of full rank)
  over the best fully-trained trials (the top ``fraction`` by accuracy). A layer whose best
  trials all sit at low ratios is redundant; one pinned high is not.
* :func:`layer_sensitivity`: across all fully-trained trials, the Spearman rank correlation of
  each layer's ratio with accuracy, and a partial Spearman correlation that first removes the
  (rank-)linear effect of total log MACs, since under a budget every ratio also moves the MACs.
* :func:`optuna_importances`: Optuna's fANOVA importances of the sampled parameters, when the
  study can be loaded (guarded: ``None`` and a reason otherwise). Optuna's completed trials
  include ASHA-stopped ones, so these importances mix partly trained results.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .results import SearchManifest, ratio_columns

MIN_CORRELATION_TRIALS = 6
"""Fewer fully-trained trials than this: no per-layer correlation is shown (with 4 trials a
Spearman correlation of +-1 comes from chance one time in twelve)."""


def _best_count(pool_size: int, fraction: float, min_count: int) -> int:
    return max(math.ceil(fraction * pool_size), min(min_count, pool_size))


def best_trials(
    trials: pd.DataFrame, fraction: float = 0.25, *, min_count: int = 3, metric: str = "val_accuracy"
) -> pd.DataFrame:
    """The top ``fraction`` of fully-trained trials by ``metric`` (at least ``min_count`` if there)."""
    pool = trials[trials["fully_trained"]].sort_values(metric, ascending=False, kind="stable")
    return pool.head(_best_count(len(pool), fraction, min_count))


def best_trials_label(trials: pd.DataFrame, fraction: float = 0.25, *, min_count: int = 3) -> str:
    """What :func:`best_trials` shows, in words: ``"best 3 of 4 fully-trained trials (top 25%,
    at least 3)"``."""
    pool = int(trials["fully_trained"].sum())
    count = _best_count(pool, fraction, min_count)
    return f"best {count} of {pool} fully-trained trials (top {fraction:.0%}, at least {min_count})"


def chance_correlation(n: int) -> float:
    """About the largest ``|Spearman|`` that chance alone gives in 95% of cases over ``n``
    trials (``1.96/sqrt(n-1)``, the large-sample approximation); NaN for ``n < 3``."""
    return 1.96 / math.sqrt(n - 1) if n >= 3 else math.nan


def rank_distribution(
    trials: pd.DataFrame, fraction: float = 0.25, *, metric: str = "val_accuracy"
) -> pd.DataFrame:
    """Long table ``layer, trial_id, ratio, <metric>`` over the best trials, layers in network order."""
    best = best_trials(trials, fraction, metric=metric)
    columns = ratio_columns(trials)
    long = best.melt(id_vars=["trial_id", metric], value_vars=columns, var_name="layer", value_name="ratio")
    long["layer"] = long["layer"].str.removeprefix("rank:")
    order = {c.removeprefix("rank:"): i for i, c in enumerate(columns)}
    long = long.assign(_o=long["layer"].map(order)).sort_values(["_o", "trial_id"], kind="stable")
    return long.drop(columns="_o")[["layer", "trial_id", "ratio", metric]].reset_index(drop=True)


def _ranks(values: np.ndarray) -> np.ndarray:
    return pd.Series(values).rank(method="average").to_numpy(float)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either side is constant or n < 3."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return math.nan
    rx, ry = _ranks(x[ok]), _ranks(y[ok])
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Spearman correlation of ``x`` and ``y`` after removing the linear effect of rank(``z``)."""
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    if ok.sum() < 4:
        return math.nan
    rx, ry, rz = _ranks(x[ok]), _ranks(y[ok]), _ranks(z[ok])
    if rz.std() == 0:
        return spearman(x[ok], y[ok])
    design = np.column_stack([np.ones_like(rz), rz])
    res_x = rx - design @ np.linalg.lstsq(design, rx, rcond=None)[0]
    res_y = ry - design @ np.linalg.lstsq(design, ry, rcond=None)[0]
    if res_x.std() < 1e-12 or res_y.std() < 1e-12:
        return math.nan
    return float(np.corrcoef(res_x, res_y)[0, 1])


def layer_sensitivity(
    trials: pd.DataFrame,
    *,
    metric: str = "val_accuracy",
    importances: dict[str, float] | None = None,
    min_trials: int = MIN_CORRELATION_TRIALS,
) -> pd.DataFrame:
    """Per layer (network order): ``spearman``, ``partial_spearman`` (given log MACs), ``n``,
    ``ratio_median`` over all fully-trained trials, and ``importance`` (summed Optuna
    importance of the parameters naming the layer; NaN without ``importances``).

    Correlations over fewer than ``min_trials`` trials are NaN (not shown): see
    :data:`MIN_CORRELATION_TRIALS` and :func:`chance_correlation` for the caveat to print."""
    pool = trials[trials["fully_trained"]]
    y = pool[metric].to_numpy(float)
    z = np.log(pool["macs"].to_numpy(float).clip(min=1))
    rows = []
    for column in ratio_columns(trials):
        layer = column.removeprefix("rank:")
        x = pool[column].to_numpy(float)
        n = int(np.isfinite(x).sum())
        enough = n >= min_trials
        rows.append(
            {
                "layer": layer,
                "spearman": spearman(x, y) if enough else math.nan,
                "partial_spearman": partial_spearman(x, y, z) if enough else math.nan,
                "n": n,
                "ratio_median": float(np.nanmedian(x)) if np.isfinite(x).any() else math.nan,
                "importance": layer_importance(layer, importances) if importances else math.nan,
            }
        )
    return pd.DataFrame(
        rows, columns=["layer", "spearman", "partial_spearman", "n", "ratio_median", "importance"]
    )


def layer_importance(layer: str, importances: dict[str, float]) -> float:
    """Sum of the importances of the parameters naming ``layer`` (``layer1.0.conv1.ratio``,
    ``ratio:layer1.0.conv1``; the name must not continue, so ``conv1`` is not ``layer1.0.conv1``)."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(layer)}(?!\w)")
    values = [v for name, v in importances.items() if pattern.search(name)]
    return float(sum(values)) if values else math.nan


def optuna_importances(manifest: SearchManifest, *, seed: int = 0) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances of the sampled parameters from the Optuna study, or ``(None, reason)``."""
    if not manifest.storage:
        return None, "no Optuna storage in search.json"
    if manifest.storage.startswith("sqlite:///"):
        database = Path(manifest.storage.removeprefix("sqlite:///"))
        if not database.is_file():  # loading would create an empty database file
            return None, f"no Optuna database at {database}"
    if (
        manifest.storage.startswith("journal:")
        and not Path(manifest.storage.removeprefix("journal:")).is_file()
    ):
        return None, f"no Optuna journal at {manifest.storage.removeprefix('journal:')}"
    try:
        import optuna
    except ImportError:
        return None, "optuna is not installed"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        from ..search.runner import open_storage

        study = optuna.load_study(study_name=manifest.study_name, storage=open_storage(manifest.storage))
        kwargs: dict[str, Any] = {}
        if len(study.directions) > 1:
            kwargs["target"] = lambda t: t.values[0]
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        result = optuna.importance.get_param_importances(study, evaluator=evaluator, **kwargs)
    except Exception as exc:  # the study may be missing, locked, too small or single-valued
        return None, f"Optuna importances unavailable: {type(exc).__name__}: {exc}"
    return {str(k): float(v) for k, v in result.items()}, "Optuna fANOVA over completed Optuna trials"

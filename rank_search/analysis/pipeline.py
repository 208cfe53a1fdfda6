"""``rank-search analyze``: compute everything about a search directory, then write it.

:func:`compute_analysis` returns an :class:`Analysis` (plain data, no files, no plotting);
:func:`write_analysis` writes the tables, figures (PNG + PDF) and ``report.html`` into
``DIR/analysis/`` (every file atomically) and :func:`analyze` does both.
"""

from __future__ import annotations

import importlib.util
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .._io import atomic_write, atomic_write_json, atomic_write_text
from ..errors import BudgetError, RankSearchError
from .allocation import allocation_vs_uniform
from .baselines import baselines
from .pareto import (
    fit_front,
    pareto_front,
    resolve_budget,
    select_at_budget,
    selection_note,
    selection_summary,
)
from .record import Analysis as Analysis
from .redundancy import best_trials_label, layer_sensitivity, optuna_importances, rank_distribution
from .results import SearchResults, flat_for_csv, has_tag, learning_curves, load_search
from .spectra import LayerSpectrum

FIGURES = ("pareto", "allocation", "redundancy", "learning_curves", "spectra")


def _select(
    trials: pd.DataFrame, budget: float | None, top: int, axis: str = "macs"
) -> tuple[pd.DataFrame, str | None, str | None]:
    """Top-k under the budget, an error text if none fits, and the trial to show the allocation of."""
    if budget is not None:
        try:
            chosen = select_at_budget(trials, budget, top=top, axis=axis)
        except BudgetError as exc:
            return trials.iloc[0:0], str(exc), None
        return chosen, None, str(chosen.iloc[0]["trial_id"])
    pool = trials[trials["fully_trained"] & ~has_tag(trials, "dense")]
    best = pool.sort_values("val_accuracy", ascending=False, kind="stable").head(1)
    return trials.iloc[0:0], None, (str(best.iloc[0]["trial_id"]) if len(best) else None)


def _load_spectra(runs: Sequence[str | Path]) -> list[tuple[str, list[LayerSpectrum]]]:
    from .spectra import layer_spectra, load_run_model, run_label

    return [(run_label(run), layer_spectra(load_run_model(run)[0])) for run in runs]


def choose_axis(results: SearchResults, axis: str | None, *, macs_budget: bool, latency_budget: bool) -> str:
    """``axis`` if given, else ``latency`` when a latency budget is given or the search had one,
    else ``macs``. Raises for a budget on the other axis or a latency axis without latencies."""
    if axis is None:
        macs_given = macs_budget and not latency_budget
        axis = (
            "latency" if latency_budget or (results.manifest.budget_latency_ms and not macs_given) else "macs"
        )
    if axis not in ("macs", "latency"):
        raise RankSearchError(f"--axis must be macs or latency, got {axis!r}")
    if (axis == "macs" and latency_budget) or (axis == "latency" and macs_budget):
        raise RankSearchError(
            f"a {'latency' if latency_budget else 'MACs'} budget does not apply to --axis {axis}"
        )
    if axis == "latency" and not results.trials["latency_ms"].notna().any():
        raise RankSearchError(
            f"{results.directory}: no trial recorded a latency_ms (a MACs-budget search); use --axis macs"
        )
    return axis


def compute_analysis(
    directory: str | Path, *, budget_fraction: float | None = None, max_macs: float | None = None,
    runs: Sequence[str | Path] = (), top: int = 5, importance: bool = True, n_boot: int = 200,
    top_fraction: float = 0.25, max_latency_ms: float | None = None, axis: str | None = None,
) -> Analysis:  # fmt: skip
    """Load ``directory`` and compute the front, fit, selection, redundancy, curves and spectra.

    ``axis`` (``macs`` | ``latency``; default: see :func:`choose_axis`) is the cost of the front,
    fit and selection. The budget is ``budget_fraction`` of dense MACs or ``max_macs`` (MACs
    axis) or ``max_latency_ms`` (latency axis); none -> the search's own budget on that axis.
    """
    results = load_search(directory)
    trials = results.trials
    if max_latency_ms is not None and not max_latency_ms > 0:
        raise RankSearchError(f"--max-latency-ms must be > 0, got {max_latency_ms}")
    macs_given = budget_fraction is not None or max_macs is not None
    axis = choose_axis(results, axis, macs_budget=macs_given, latency_budget=max_latency_ms is not None)
    budget = resolve_budget(results.dense_macs, fraction=budget_fraction, max_macs=max_macs)
    if budget is None and axis == "macs":
        budget = results.manifest.budget_macs
    latency = max_latency_ms if max_latency_ms is not None else results.manifest.budget_latency_ms
    on_axis = latency if axis == "latency" else budget
    fit = fit_front(trials, n_boot=n_boot, axis=axis)
    selection, error, chosen_id = _select(trials, on_axis, top, axis)
    importances, note = optuna_importances(results.manifest) if importance else (None, "not requested")
    planned = int(trials["epochs_planned"].max()) if len(trials) else 0
    return Analysis(
        results=results,
        budget_macs=budget if axis == "macs" else None,
        front=pareto_front(trials, axis=axis),
        fit=fit,
        prediction=fit.predict(on_axis) if on_axis is not None else None,
        baselines=baselines(results),
        selection=selection,
        selection_error=error,
        chosen_id=chosen_id,
        allocation=allocation_vs_uniform(results, chosen_id) if chosen_id else None,
        distribution=rank_distribution(trials, top_fraction),
        sensitivity=layer_sensitivity(trials, importances=importances),
        importance_note=note,
        importances=importances,
        rungs=results.manifest.asha.rungs(results.manifest.epochs_per_trial or planned),
        curves=learning_curves(trials),
        spectra=_load_spectra(runs),
        top_fraction=top_fraction,
        axis=axis,
        budget_latency_ms=latency if axis == "latency" else None,
    )


# --- writing ------------------------------------------------------------------------------------


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    return atomic_write_text(path, frame.to_csv(index=False))


def _write_tables(analysis: Analysis, out: Path) -> list[Path]:
    trials = analysis.results.trials
    paths = [_write_csv(flat_for_csv(trials), out / "trials.csv")]
    if importlib.util.find_spec("pyarrow") is not None:
        buffer = io.BytesIO()
        try:
            trials.to_parquet(buffer, index=False)
        except Exception as exc:  # e.g. a sampled parameter holding both numbers and strings
            warnings.warn(f"trials.parquet not written: {exc}", stacklevel=2)
        else:
            paths.append(atomic_write(out / "trials.parquet", lambda h: h.write(buffer.getvalue())))
    base = [
        "trial_id",
        "optuna_trial_number",
        "macs",
        "macs_fraction",
        "params",
        "val_accuracy",
        "epochs",
        "tags",
    ]
    if analysis.axis == "latency":
        base.insert(5, "latency_ms")
    paths.append(_write_csv(flat_for_csv(analysis.front[base]), out / "pareto.csv"))
    if not analysis.selection.empty:
        paths.append(_write_csv(flat_for_csv(analysis.selection[base]), out / "top.csv"))
    paths.append(_write_csv(analysis.sensitivity, out / "sensitivity.csv"))
    if analysis.spectra:
        from .spectra import spectra_table

        tables = [spectra_table(s).assign(run=label) for label, s in analysis.spectra]
        paths.append(_write_csv(pd.concat(tables, ignore_index=True), out / "spectra.csv"))
    paths.append(atomic_write_json(out / "summary.json", summary(analysis)))
    return paths


def make_figures(analysis: Analysis) -> dict[str, Any]:
    """The analysis figures by name (matplotlib Figures); absent when there is no data for one."""
    from . import plots

    planned = int(analysis.results.trials["epochs_planned"].max())
    figures: dict[str, Any] = {
        "pareto": plots.plot_pareto(analysis.results.trials, analysis.front, analysis.fit, analysis.baselines,
                                    budget=analysis.budget, chosen_id=analysis.chosen_id,
                                    axis=analysis.axis),
        "learning_curves": plots.plot_learning_curves(analysis.curves, rungs=analysis.rungs,
                                                      epochs_planned=planned),
    }  # fmt: skip
    if analysis.allocation is not None:
        figures["allocation"] = plots.plot_allocation(analysis.allocation)
    if not analysis.distribution.empty:
        label = best_trials_label(analysis.results.trials, analysis.top_fraction)
        figures["redundancy"] = plots.plot_redundancy(
            analysis.distribution, analysis.sensitivity, top_label=label
        )
    if analysis.spectra:
        figures["spectra"] = plots.plot_spectra(analysis.spectra)
    return figures


def write_analysis(analysis: Analysis, out_dir: str | Path | None = None) -> dict[str, list[Path]]:
    """Write tables, figures (PNG + PDF) and ``report.html``; return the paths by kind."""
    from .plots import save_figure
    from .report import write_report

    out = Path(out_dir) if out_dir is not None else analysis.results.directory / "analysis"
    written: dict[str, list[Path]] = {"tables": _write_tables(analysis, out)}
    figures = make_figures(analysis)
    for name, fig in figures.items():
        written[name] = save_figure(fig, out, name)
    written["report"] = [write_report(analysis, out, [name for name in FIGURES if name in figures])]
    return written


def analyze(
    directory: str | Path, *, out_dir: str | Path | None = None, **options: Any
) -> tuple[Analysis, dict[str, list[Path]]]:
    """:func:`compute_analysis` then :func:`write_analysis`."""
    analysis = compute_analysis(directory, **options)
    return analysis, write_analysis(analysis, out_dir)


# --- key numbers --------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _trial_summary(row: pd.Series) -> dict[str, Any]:
    keys = ["trial_id", "optuna_trial_number", "macs", "macs_fraction", "params", "val_accuracy", "epochs"]
    if "latency_ms" in row and not pd.isna(row["latency_ms"]):
        keys.append("latency_ms")
    out = {k: _clean(None if pd.isna(row[k]) else row[k]) for k in keys}
    for key in ("macs", "params"):
        out[key] = None if out[key] is None else int(out[key])
    out["tags"] = list(row["tags"])
    return out


def summary(analysis: Analysis) -> dict[str, Any]:
    """The key numbers as a JSON-able dict (also written to ``summary.json``)."""
    base = analysis.baselines
    uniform = base.best_uniform_at(analysis.budget, column=analysis.axis_column)
    prediction = analysis.prediction
    manifest = analysis.results.manifest
    return {
        "search_dir": str(analysis.results.directory),
        "study": manifest.study_name,
        "search_status": manifest.status,
        "trials": analysis.counts,
        "axis": analysis.axis,
        "budget_macs": analysis.budget_macs,
        "budget_latency_ms": analysis.budget_latency_ms,
        "budget_fraction": _clean(analysis.budget_macs / base.dense_macs)
        if analysis.budget_macs and base.dense_macs > 0 else None,
        "best_at_budget": [_trial_summary(row) for _, row in analysis.selection.iterrows()],
        "selection_error": analysis.selection_error,
        "selection_note": selection_note(analysis.selection),
        "selection_detail": selection_summary(analysis.selection),
        "dense": {"macs": _clean(base.dense_macs), "val_accuracy": _clean(base.dense_accuracy),
                  "trial_id": base.dense_trial_id},
        "uniform_at_budget": _trial_summary(uniform) if uniform is not None else None,
        "front_points": len(analysis.front),
        "fit": {"ok": analysis.fit.ok, "message": analysis.fit.message},
        "prediction_at_budget": None if prediction is None else {
            "accuracy": _clean(prediction.accuracy), "low": _clean(prediction.low),
            "high": _clean(prediction.high), "level": prediction.level,
            "extrapolated": prediction.extrapolated, "message": prediction.message,
        },
        "importance": analysis.importance_note,
    }  # fmt: skip

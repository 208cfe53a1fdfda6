"""Matplotlib figures of a search analysis; each function takes computed data, returns a Figure.

Figures are made with :class:`matplotlib.figure.Figure` directly (no pyplot, no global style,
no GUI backend), so they work headless. :func:`save_figure` writes PNG and PDF atomically.
"""

from __future__ import annotations

import io
import math
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator
from numpy.typing import ArrayLike

from .._io import atomic_write
from .allocation import Allocation
from .baselines import Baselines
from .pareto import FrontFit
from .spectra import ENERGY_LEVELS, LayerSpectrum, spectra_matrix

STATUS_STYLE = {  # marker, colour, label
    "stopped": ("v", "tab:orange", "early-stopped (ASHA)"),
    "running": ("o", "tab:blue", "running"),
    "completed": ("o", "0.45", "completed, not fully trained"),
}
FAILED_STATUSES = ("failed", "diverged")


def _write_bytes(handle: IO[bytes], data: bytes) -> None:
    handle.write(data)


def save_figure(fig: Figure, directory: str | Path, stem: str, *, dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` in ``directory`` (atomic); return both."""
    paths = []
    for ext in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=dpi, bbox_inches="tight")
        data = buffer.getvalue()
        paths.append(atomic_write(Path(directory) / f"{stem}.{ext}", partial(_write_bytes, data=data)))
    return paths


# --- Pareto -------------------------------------------------------------------------------------


def _scatter_trials(ax: Axes, trials: pd.DataFrame, metric: str, x: str = "macs") -> None:
    full = trials[trials["fully_trained"]]
    ax.scatter(full[x], full[metric], s=18, color="0.35", alpha=0.35, label="fully trained", zorder=2)
    partial = trials[~trials["fully_trained"] & ~trials["status"].isin(FAILED_STATUSES)]
    for status, group in partial.groupby("status"):
        marker, colour, label = STATUS_STYLE.get(str(status), ("o", "0.6", str(status)))
        ax.scatter(
            group[x],
            group[metric],
            s=22,
            marker=marker,
            facecolors="none",
            edgecolors=colour,
            alpha=0.7,
            label=label,
            zorder=2,
        )
    failed = trials[trials["status"].isin(FAILED_STATUSES)]
    if not failed.empty:  # no accuracy: mark them along the bottom edge
        ax.scatter(
            failed[x],
            np.zeros(len(failed)),
            marker="x",
            color="tab:red",
            s=26,
            zorder=3,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label="failed / diverged",
        )


def _draw_fit(ax: Axes, fit: FrontFit, x_max: float) -> None:
    if not fit.ok:
        box = {"facecolor": "white", "alpha": 0.8, "linewidth": 0}
        ax.text(0.02, 0.98, fit.message, transform=ax.transAxes, fontsize=7, color="0.3", va="top", bbox=box)
        return
    grid = np.geomspace(fit.knots_macs[0], max(x_max, fit.knots_macs[-1]), 200)
    ax.plot(grid, fit.curve(grid), color="tab:green", lw=1.5, label="fitted front", zorder=3)
    low, high = fit.band(grid)
    ax.fill_between(
        grid,
        low,
        high,
        color="tab:green",
        alpha=0.15,
        lw=0,
        label=f"{round(fit.level * 100)}% bootstrap band",
        zorder=1,
    )


def _draw_baselines(ax: Axes, base: Baselines, metric: str, x: str = "macs") -> None:
    if not base.uniform.empty:
        ax.plot(
            base.uniform[x],
            base.uniform[metric],
            "D--",
            color="tab:purple",
            ms=5,
            lw=1,
            label="uniform ratio",
            zorder=4,
        )
    if x == "macs" and math.isfinite(base.dense_macs):  # the dense model's latency is not recorded
        if math.isfinite(base.dense_accuracy):
            ax.scatter(
                [base.dense_macs],
                [base.dense_accuracy],
                marker="*",
                s=160,
                color="gold",
                edgecolors="black",
                label="dense",
                zorder=5,
            )
        else:
            ax.axvline(base.dense_macs, color="0.5", ls=":", lw=1, label="dense MACs")


def _fraction_axis(ax: Axes, dense: float) -> None:
    """A top axis in fractions of the dense model's MACs."""

    def to_fraction(x: ArrayLike) -> np.ndarray:
        return np.asarray(x, dtype=float) / dense

    def to_macs(f: ArrayLike) -> np.ndarray:
        return np.asarray(f, dtype=float) * dense

    top = ax.secondary_xaxis("top", functions=(to_fraction, to_macs))
    top.set_xlabel("fraction of dense MACs")
    _plain_log_ticks(top.xaxis)


AXIS_LABELS = {"macs": "MACs per sample (log)", "latency": "predicted latency, ms per batch (log)"}


def plot_pareto(
    trials: pd.DataFrame,
    front: pd.DataFrame,
    fit: FrontFit,
    base: Baselines,
    *,
    budget: float | None = None,
    chosen_id: str | None = None,
    metric: str = "val_accuracy",
    axis: str = "macs",
) -> Figure:
    """Accuracy vs cost: every trial (faded; early-stopped, running and failed marked apart),
    the non-dominated front (attained, as steps), the fitted front with its band, the dense and
    uniform baselines, the budget line and the chosen trial.

    ``axis``: ``macs`` (x = MACs, with a top axis in fractions of dense) or ``latency`` (x = the
    predicted ``latency_ms``; ``budget`` is then in ms and the dense point is not drawn). ``budget``
    is in the unit of ``axis``: MACs, or ms of predicted latency.
    """
    x = "latency_ms" if axis == "latency" else "macs"
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.add_subplot()
    _scatter_trials(ax, trials, metric, x)
    x_max = float(np.nanmax(trials[x])) if trials[x].notna().any() else 1.0
    if not front.empty:
        ax.step(
            front[x],
            front[metric],
            where="post",
            color="black",
            lw=1.2,
            marker="o",
            ms=5,
            label="Pareto front (fully trained)",
            zorder=4,
        )
    _draw_fit(ax, fit, x_max)
    _draw_baselines(ax, base, metric, x)
    if budget:
        ax.axvline(budget, color="tab:red", ls="--", lw=1, label="budget")
    chosen = trials[trials["trial_id"] == chosen_id]
    if not chosen.empty:
        ax.scatter(
            chosen[x],
            chosen[metric],
            s=140,
            facecolors="none",
            edgecolors="tab:red",
            lw=2,
            label=f"chosen ({chosen_id})",
            zorder=6,
        )
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel(AXIS_LABELS.get(axis, x))
    ax.set_ylabel(metric.replace("_", " "))
    if axis == "macs" and math.isfinite(base.dense_macs) and base.dense_macs > 0:
        _fraction_axis(ax, base.dense_macs)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    return fig


# --- allocation and redundancy ------------------------------------------------------------------


def _short_number(value: float, _position: object = None) -> str:
    """Tick label: 5e6 -> '5M', 0.25 -> '0.25'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _plain_log_ticks(axis: Any) -> None:
    axis.set_major_formatter(FuncFormatter(_short_number))
    axis.set_minor_formatter(FuncFormatter(_short_number))


def _layer_axis(ax: Axes, layers: list[str]) -> None:
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=70, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(layers) - 0.4)


def plot_allocation(allocation: Allocation) -> Figure:
    """Bars of the chosen trial's per-layer rank ratio; markers for the uniform reference (labelled
    with what it is: :attr:`Allocation.uniform_source`)."""
    frame = allocation.layers
    fig = Figure(figsize=(max(6.0, 0.35 * len(frame) + 2), 4.2))
    ax = fig.add_subplot()
    x = np.arange(len(frame))
    chosen = f"chosen {allocation.trial_id} ({allocation.chosen_macs:,.0f} MACs)"
    uniform = (
        f"uniform: {allocation.uniform_source}; median ratio {allocation.uniform_ratio:.3f}, "
        f"{allocation.uniform_macs:,.0f} MACs"
    )
    ax.bar(x, frame["chosen"], color="tab:blue", alpha=0.8, label=chosen)
    ax.plot(x, frame["uniform"], "D", color="tab:purple", ms=5, label=uniform)
    _layer_axis(ax, list(frame["layer"]))
    ax.set_ylabel("rank / full rank")
    ax.set_ylim(0, 1.05)
    ax.grid(True, axis="y", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def plot_redundancy(
    distribution: pd.DataFrame, sensitivity: pd.DataFrame, *, top_label: str = "best trials"
) -> Figure:
    """Top: each layer's rank ratio over the best trials (box + points). Bottom: each layer's
    Spearman correlation of ratio with accuracy (raw and given total MACs), over ``n`` trials,
    with the band chance alone reaches (dotted); none drawn below
    :data:`~rank_search.analysis.redundancy.MIN_CORRELATION_TRIALS` trials."""
    from .redundancy import MIN_CORRELATION_TRIALS, chance_correlation

    layers = list(sensitivity["layer"]) or list(dict.fromkeys(distribution["layer"]))
    fig = Figure(figsize=(max(6.0, 0.35 * len(layers) + 2), 6.5))
    ax_box, ax_corr = fig.subplots(2, 1, sharex=True)
    groups = [distribution.loc[distribution["layer"] == name, "ratio"].dropna().to_numpy() for name in layers]
    x = np.arange(len(layers))
    ax_box.boxplot(groups, positions=x, widths=0.6, showfliers=False)
    rng = np.random.default_rng(0)
    for pos, values in zip(x, groups):
        ax_box.scatter(pos + rng.uniform(-0.15, 0.15, len(values)), values, s=8, color="tab:blue", alpha=0.6)
    ax_box.set_ylabel(f"rank ratio ({top_label})")
    ax_box.set_ylim(0, 1.05)
    ax_box.grid(True, axis="y", alpha=0.25)
    series = [
        ("spearman", "tab:green", "Spearman"),
        ("partial_spearman", "tab:olive", "partial, given log MACs"),
    ]
    if sensitivity["importance"].notna().any():
        series.append(("importance", "tab:gray", "Optuna fANOVA importance"))
    width = 0.8 / len(series)
    for index, (column, colour, label) in enumerate(series):
        offset = (index - (len(series) - 1) / 2) * width
        ax_corr.bar(x + offset, sensitivity[column].fillna(0), width, color=colour, label=label)
    ax_corr.axhline(0, color="black", lw=0.8)
    n = int(sensitivity["n"].max()) if len(sensitivity) else 0
    chance = chance_correlation(n)
    if sensitivity[["spearman", "partial_spearman"]].notna().any().any() and chance < 1:
        for sign in (1, -1):
            ax_corr.axhline(
                sign * chance,
                color="0.4",
                ls=":",
                lw=1,
                label=f"chance level, n={n} (|rho| < {chance:.2f})" if sign > 0 else None,
            )
    elif n < MIN_CORRELATION_TRIALS:
        note = f"n={n} fully-trained trials: correlations need at least {MIN_CORRELATION_TRIALS}, not shown"
        ax_corr.text(0.5, 0.5, note, transform=ax_corr.transAxes, ha="center", fontsize=8, color="0.3")
    ax_corr.set_ylim(-1, 1)
    ax_corr.set_ylabel(f"corr(ratio, accuracy), n={n}\nor importance")
    ax_corr.legend(fontsize=7)
    ax_corr.grid(True, axis="y", alpha=0.25)
    _layer_axis(ax_corr, layers)
    return fig


# --- spectra and learning curves ----------------------------------------------------------------


def plot_spectra(runs: list[tuple[str, list[LayerSpectrum]]]) -> Figure:
    """Heat map per run: layers x singular-value index of ``s_i / s_0`` (log colour scale), with
    the 90% and 99% energy effective ranks marked."""
    from matplotlib.colors import LogNorm

    fig = Figure(figsize=(7.5, 0.28 * max(len(s) for _, s in runs) * len(runs) + 1.5))
    axes = fig.subplots(len(runs), 1, squeeze=False)[:, 0]
    for ax, (label, spectra) in zip(axes, runs):
        matrix = spectra_matrix(spectra)
        positive = matrix[np.isfinite(matrix) & (matrix > 0)]
        vmin = max(float(positive.min()) if positive.size else 1e-3, 1e-4)
        image = ax.imshow(
            np.where(matrix > 0, matrix, np.nan),
            aspect="auto",
            cmap="viridis",
            norm=LogNorm(vmin=vmin, vmax=1.0),
            interpolation="nearest",
        )
        for level, marker in zip(ENERGY_LEVELS, ("|", "x")):
            eranks = [s.effective_rank(level) - 1 for s in spectra]
            ax.scatter(
                eranks,
                range(len(spectra)),
                marker=marker,
                color="red",
                s=22,
                label=f"effective rank ({round(level * 100)}% energy)",
            )
        ax.set_yticks(range(len(spectra)))
        ax.set_yticklabels([f"{s.layer} [{s.format}]" for s in spectra], fontsize=6)
        ax.set_xlabel("singular value index (dense weight C_out x C_in*k*k; low-rank via to_dense)")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
        fig.colorbar(image, ax=ax, label="s_i / s_0")
    return fig


def plot_learning_curves(
    curves: pd.DataFrame, *, rungs: list[int] | None = None, epochs_planned: int | None = None
) -> Figure:
    """Validation accuracy per epoch of every trial, coloured by status, ASHA rungs marked."""
    colours = {
        "completed": "tab:green",
        "stopped": "tab:orange",
        "running": "tab:blue",
        "failed": "tab:red",
        "diverged": "tab:red",
    }
    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.add_subplot()
    seen: set[str] = set()
    for _, group in curves.groupby("trial_id", sort=False):
        status = str(group["status"].iloc[0])
        label = status if status not in seen else None
        seen.add(status)
        ax.plot(
            group["epoch"],
            group["val_accuracy"],
            color=colours.get(status, "0.5"),
            alpha=0.55,
            lw=1,
            marker="." if len(group) == 1 else None,
            label=label,
        )
    for index, rung in enumerate(rungs or []):
        ax.axvline(rung, color="0.4", ls=":", lw=1, label="ASHA rung" if index == 0 else None)
    if epochs_planned:
        ax.set_xlim(0.8, epochs_planned + 0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    return fig

"""``report.html``: one self-contained page (figures embedded as base64 PNG) with the key numbers."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .._io import atomic_write_text
from .._version import __version__
from .pareto import selection_note

if TYPE_CHECKING:
    from .record import Analysis

CAPTIONS = {
    "pareto": "Accuracy vs MACs. Grey: fully-trained trials; hollow: early-stopped/running; x: failed. "
    "Black steps: the Pareto front of fully-trained trials; green: the fitted monotone front "
    "(piecewise-linear in log MACs) with its bootstrap band.",
    "allocation": "Rank ratio per layer (network order) of the chosen config vs the uniform reference "
    "(the search's uniform starting point; the legend says at which MACs).",
    "redundancy": "Top: rank ratio of each layer over the best fully-trained trials (the axis label "
    "says how many). Bottom: Spearman correlation of each layer's ratio with accuracy over all "
    "fully-trained trials (raw, and given log MACs); dotted: the level chance alone reaches; not "
    "shown with fewer than 6 trials.",
    "learning_curves": "Validation accuracy per epoch of every trial; dotted lines: ASHA rungs.",
    "spectra": "Singular values s_i/s_0 of each layer's dense weight (low-rank layers reconstructed with "
    "to_dense()); markers: effective ranks at 90% and 99% energy.",
}
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
figcaption{font-size:13px;color:#555}.warn{color:#a40}"""


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = ""
    for row in rows:
        cells = "".join(
            f'<td class="{"n" if isinstance(v, int | float) and not isinstance(v, bool) else ""}">'
            f"{html.escape(_fmt(v))}</td>"
            for v in row
        )
        body += f"<tr>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _trial_rows(frame: pd.DataFrame, latency: bool = False) -> list[list[Any]]:
    rows = []
    for place, (_, row) in enumerate(frame.iterrows(), 1):
        number = None if pd.isna(row["optuna_trial_number"]) else int(row["optuna_trial_number"])
        cells = [place, row["trial_id"], number, int(row["macs"]), float(row["macs_fraction"])]
        cells += [float(row["latency_ms"])] if latency else []
        rows.append([*cells, float(row["val_accuracy"]), int(row["epochs"]), list(row["tags"])])
    return rows


def _key_numbers(analysis: Analysis) -> str:
    counts = analysis.counts
    parts = ["<h2>Trials</h2>", _table(list(counts), [list(counts.values())])]
    budget = analysis.budget
    dense = analysis.baselines.dense_macs
    if budget is not None:
        if analysis.axis == "latency":
            text = f"{budget:.3f} ms predicted latency"
        else:
            text = f"{budget:,} MACs" + (f" ({budget / dense:.3f} of dense)" if dense > 0 else "")
        parts.append(f"<h2>Best at the budget: {html.escape(text)}</h2>")
        if analysis.selection_error:
            parts.append(f'<p class="warn">{html.escape(analysis.selection_error)}</p>')
        else:
            latency = analysis.axis == "latency"
            headers = ["place", "trial", "optuna #", "MACs", "fraction"] + (["latency ms"] if latency else [])
            headers += ["val acc", "epochs", "tags"]
            parts.append(_table(headers, _trial_rows(analysis.selection, latency)))
            if note := selection_note(analysis.selection):
                parts.append(f"<p>{html.escape(note)}</p>")
    else:
        parts.append("<p>No budget given and none recorded in search.json.</p>")
    parts.append(
        "<h2>Baselines and fitted front</h2>" + _table(["quantity", "value"], _baseline_rows(analysis))
    )
    return "\n".join(parts)


def _baseline_rows(analysis: Analysis) -> list[list[Any]]:
    base = analysis.baselines
    dense_accuracy = base.dense_accuracy if base.dense_trial_id else "no dense trial"
    rows: list[list[Any]] = [["dense MACs", base.dense_macs], ["dense val accuracy", dense_accuracy]]
    uniform = base.best_uniform_at(analysis.budget, column=analysis.axis_column)
    if uniform is not None:
        latency = f", {uniform['latency_ms']:.3f} ms" if analysis.axis == "latency" else ""
        rows.append(
            [
                f"best uniform within budget ({uniform['trial_id']})",
                f"{uniform['val_accuracy']:.4f} at {int(uniform['macs']):,} MACs{latency}",
            ]
        )
    else:
        rows.append(["uniform baseline", "no fully-trained uniform trial within the budget"])
    rows.append(["Pareto front points", len(analysis.front)])
    rows.append(["front fit", analysis.fit.message])
    pred = analysis.prediction
    if pred is not None:
        value = "–" if math.isnan(pred.accuracy) else f"{pred.accuracy:.4f}"
        if not math.isnan(pred.low):
            value += f" ({pred.level:.0%} band {pred.low:.4f} – {pred.high:.4f})"
        rows.append(["fitted accuracy at the budget", value + (f"; {pred.message}" if pred.message else "")])
    rows.append(["Optuna importances", analysis.importance_note])
    return rows


def _figure(name: str, out: Path) -> str:
    data = base64.b64encode((out / f"{name}.png").read_bytes()).decode("ascii")
    caption = f'{html.escape(CAPTIONS.get(name, name))} (<a href="{name}.pdf">PDF</a>)'
    image = f'<img alt="{name}" src="data:image/png;base64,{data}">'
    return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"


def _sensitivity(analysis: Analysis) -> str:
    frame = analysis.sensitivity
    columns = ["layer", "ratio_median", "spearman", "partial_spearman", "importance", "n"]
    rows = [[r[c] for c in columns] for _, r in frame.iterrows()]
    headers = ["layer", "median ratio", "Spearman", "partial (given MACs)", "Optuna importance", "n"]
    return "<h2>Per-layer sensitivity</h2>" + _correlation_caveat(frame) + _table(headers, rows)


def _correlation_caveat(frame: pd.DataFrame) -> str:
    from .redundancy import MIN_CORRELATION_TRIALS, chance_correlation

    n = int(frame["n"].max()) if len(frame) else 0
    if n < MIN_CORRELATION_TRIALS:
        text = (
            f"Only {n} fully-trained trials: per-layer correlations need at least "
            f"{MIN_CORRELATION_TRIALS} and are not shown (with 4 trials chance alone gives +-1.00 "
            "one time in twelve)."
        )
    else:
        text = (
            f"Correlations over n={n} fully-trained trials: |Spearman| below about "
            f"{chance_correlation(n):.2f} is within what chance alone gives (95%)."
        )
    return f'<p class="warn">{html.escape(text)}</p>'


def _spectra(analysis: Analysis) -> str:
    from .spectra import spectra_table

    parts = []
    for label, spectra in analysis.spectra:
        frame = spectra_table(spectra)
        keys = ["layer", "format", "source", "full_rank", "config_rank", "erank90", "erank99"]
        rows = [[r[k] for k in keys] for _, r in frame.iterrows()]
        headers = ["layer", "format", "source", "full rank", "config rank", "eff. rank 90%", "eff. rank 99%"]
        parts.append(f"<h2>Spectra: {html.escape(label)}</h2>" + _table(headers, rows))
    return "\n".join(parts)


def render_report(analysis: Analysis, out: Path, figures: Sequence[str]) -> str:
    """The HTML text; figures are read from ``out/<name>.png`` and embedded."""
    manifest = analysis.results.manifest
    title = f"rank-search analysis: {manifest.study_name}"
    directory, status = html.escape(str(analysis.results.directory)), html.escape(manifest.status)
    mode = html.escape(str(manifest.mode))
    header = (
        f"<h1>{html.escape(title)}</h1><p>Search directory <code>{directory}</code>, search status "
        f"<b>{status}</b>, mode {mode}; rank-search {__version__}.</p>"
    )
    body = [
        header,
        _key_numbers(analysis),
        *(_figure(name, out) for name in figures),
        _sensitivity(analysis),
        _spectra(analysis),
    ]
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_report(analysis: Analysis, out: Path, figures: Sequence[str]) -> Path:
    """Write ``out/report.html`` atomically."""
    return atomic_write_text(out / "report.html", render_report(analysis, out, figures))

"""``rank-search analyze | export``: read a search directory, report on it, export the best configs."""

from __future__ import annotations

import argparse
from typing import Any

from ._table import format_table, human


def _budget_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--budget", type=float, metavar="FRACTION",
                       help="MACs budget as a fraction of the dense model's MACs, e.g. 0.3")  # fmt: skip
    group.add_argument("--max-macs", type=float, metavar="N", help="MACs budget as an absolute count")
    group.add_argument("--max-latency-ms", type=float, metavar="MS",
                       help="latency budget: predicted ms per batch (latency-budget searches)")  # fmt: skip


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("analyze", help="tables, plots and report.html for a search directory",
                       description="Read DIR (written by `rank-search search`, finished, running or "
                       "interrupted) and write DIR/analysis/: trials.csv/.parquet, pareto.csv, "
                       "figures (PNG + PDF) and report.html.")  # fmt: skip
    p.add_argument("directory", metavar="DIR", help="search directory (with search.json)")
    _budget_args(p, required=False)
    p.add_argument("--axis", choices=("macs", "latency"),
                   help="cost axis of the front and selection (default: latency if the search had a "
                   "latency budget, else macs)")  # fmt: skip
    p.add_argument("--run", action="append", default=[], metavar="RUN_DIR", dest="runs",
                   help="a `rank-search train` run directory for the spectra plot (repeatable)")  # fmt: skip
    p.add_argument("--top", type=int, default=5, help="configs listed at the budget (default 5)")
    p.add_argument("--out", metavar="DIR", help="output folder (default DIR/analysis)")
    p.add_argument("--no-importance", action="store_true", help="skip Optuna fANOVA importances")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap resamples for the band")
    p.set_defaults(run=run_analyze)

    p = sub.add_parser("export", help="write the best config(s) under a MACs budget as rank-config JSON",
                       description="Write the best fully-trained config(s) with MACs <= budget. "
                       "With --top K>1 the k-th best goes to <stem>-k.json beside OUTPUT (best.json, "
                       "best-2.json, ...); if OUTPUT is a folder, into it.")  # fmt: skip
    p.add_argument("directory", metavar="DIR", help="search directory (with search.json)")
    _budget_args(p, required=True)
    p.add_argument("--top", type=int, default=1, metavar="K", help="export the K best (default 1)")
    p.add_argument("--alpha", type=float, metavar="A",
                   help="significance level of the paired test (McNemar on per-image validation "
                        "outcomes): the cheapest trial the best one does not beat at this level is "
                        "exported (default 0.05; 0: plain best first)")  # fmt: skip
    p.add_argument("-o", "--output", default="best.json", help="output file or folder (default best.json)")
    p.set_defaults(run=run_export)


def run_analyze(args: argparse.Namespace) -> int:
    from ..analysis.pipeline import analyze, summary

    analysis, written = analyze(
        args.directory, out_dir=args.out, budget_fraction=args.budget, max_macs=args.max_macs, runs=args.runs,
        top=args.top, importance=not args.no_importance, n_boot=args.bootstrap,
        max_latency_ms=args.max_latency_ms, axis=args.axis,
    )  # fmt: skip
    info = summary(analysis)
    counts = info["trials"]
    print(
        f"{counts['total']} trials: " + ", ".join(f"{k} {v}" for k, v in counts.items() if k != "total" and v)
    )
    if analysis.budget_macs is not None:
        print(f"budget: {human(analysis.budget_macs)} MACs")
    if analysis.budget_latency_ms is not None:
        print(f"budget: {analysis.budget_latency_ms:.3f} ms predicted latency")
    if analysis.selection_error:
        print(f"no config at the budget: {analysis.selection_error}")
    elif not analysis.selection.empty:
        print(_selection_table(analysis.selection, analysis.axis == "latency"))
        from ..analysis.pareto import selection_note

        if note := selection_note(analysis.selection):
            print(f"selection: {note}")
    print(f"front: {analysis.fit.message}")
    print(f"wrote {written['report'][0]}")
    return 0


def _selection_table(selection: Any, latency: bool) -> str:
    headers = ["trial", "MACs", "fraction"] + (["latency_ms"] if latency else []) + ["val_accuracy"]
    rows = []
    for _, r in selection.iterrows():
        cost = [float(r["latency_ms"])] if latency else []
        rows.append(
            (r["trial_id"], human(r["macs"]), float(r["macs_fraction"]), *cost, float(r["val_accuracy"]))
        )
    return format_table(headers, rows)


def run_export(args: argparse.Namespace) -> int:
    from ..analysis.export import export_rows
    from ..analysis.pareto import ALPHA, resolve_budget, select_at_budget, selection_note
    from ..analysis.results import load_search
    from ..errors import RankSearchError

    results = load_search(args.directory)
    if args.max_latency_ms is not None:
        if not args.max_latency_ms > 0:
            raise RankSearchError(f"--max-latency-ms must be > 0, got {args.max_latency_ms}")
        budget: float | None = args.max_latency_ms
    else:
        budget = resolve_budget(results.dense_macs, fraction=args.budget, max_macs=args.max_macs)
    assert budget is not None  # the argument group is required
    axis = "latency" if args.max_latency_ms is not None else "macs"
    alpha = ALPHA if args.alpha is None else args.alpha
    if not 0 <= alpha < 1:
        raise RankSearchError(f"--alpha must be in [0, 1), got {alpha}")
    chosen = select_at_budget(results.trials, budget, top=args.top, axis=axis, alpha=alpha)
    for path in export_rows(results, chosen, budget, args.output, axis=axis):
        print(f"wrote {path}")
    if note := selection_note(chosen):
        print(f"selection: {note}")
    return 0

"""``rank-search search STUDY.yaml -o DIR``: search per-layer ranks under a MACs or latency budget.

SIGTERM (how job schedulers stop a job) is taken as Ctrl-C: the search stops, keeps what ran and
prints the command that continues it. A search that stops for a cause outside its trials (no
space left, the data gone) prints one line saying why and that command, and exits with 3.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from ._table import format_table, human


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "search",
        help="search per-layer ranks with Ray Tune + Optuna + ASHA under a MACs budget",
        description="Run (or --resume) a rank search described by a study YAML file. Trials run on this "
        "machine unless --address names a Ray cluster, in which case DIR must be on storage every node sees.",
    )
    p.add_argument("study", help="study YAML file, or the name of one in the repo's studies/ folder")
    p.add_argument(
        "-o", "--out", required=True, metavar="DIR", help="output directory (trial records, best.json)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a study key by dotted path, e.g. --set trials=16 --set asha.enabled=false",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the search saved in DIR (its saved study wins)"
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="with --resume: also rerun trials that errored"
    )
    p.add_argument(
        "--address", metavar="ADDR", help="join an existing Ray cluster (e.g. 'auto' or HOST:6379)"
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's and Optuna's own messages, the trial table and the trials' output",
    )
    p.set_defaults(run=run_search_command)


STOPPED_EXIT = 3


def resume_command(args: argparse.Namespace, *, retry_failed: bool = False) -> str:
    """The command that continues this search (its saved study wins, so no --set is repeated)."""
    address = f" --address {shlex.quote(args.address)}" if args.address else ""
    retry = " --retry-failed" if retry_failed or getattr(args, "retry_failed", False) else ""
    study, out = shlex.quote(args.study), shlex.quote(str(args.out))
    return f"rank-search search {study} -o {out} --resume{retry}{address}"


def run_search_command(args: argparse.Namespace) -> int:
    from ..errors import SearchStopped
    from ..search.runner import run_search
    from ..search.study import load_study

    study = load_study(args.study, args.overrides)
    try:
        outcome = run_search(
            study,
            args.out,
            resume=args.resume,
            address=args.address,
            verbose=args.verbose,
            retry_failed=args.retry_failed,
            sigterm_as_ctrl_c=True,
        )
    except KeyboardInterrupt:
        print(f"\nsearch interrupted; continue it with:\n  {resume_command(args)}", flush=True)
        raise
    except SearchStopped as exc:
        command = resume_command(args, retry_failed=exc.retry_failed)
        print(f"error: search stopped: {exc}; continue it with: {command}", file=sys.stderr, flush=True)
        return STOPPED_EXIT
    counts: dict[str, int] = {}
    for record in outcome.records:
        counts[record.status] = counts.get(record.status, 0) + 1
    if outcome.left_out:
        counts["left out (unreadable record, in trials/invalid/)"] = len(outcome.left_out)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"\nsearch {outcome.status}: {len(outcome.records)} trials ({summary})")
    print(f"results: {outcome.out_dir} (trial records in {outcome.out_dir / 'trials'})")
    if outcome.status == "interrupted":
        print(f"continue the search with:\n  {resume_command(args)}")
    if study.mode == "front" and outcome.front:
        rows = [(r.trial_id, r.macs, human(r.macs), round(r.val_accuracy or 0.0, 4)) for r in outcome.front]
        header = ["trial", "MACs", "(short)", "val_acc"]
        print("Pareto front of fully trained trials:\n" + format_table(header, rows))
    if outcome.best is None or outcome.best_path is None:
        print("no trial completed all its epochs: no best config")
        return 1 if outcome.status == "finished" else 130
    best = outcome.best
    print(
        f"best: trial {best.trial_id} val_accuracy {best.val_accuracy:.4f} at {best.macs:,} MACs "
        f"({human(best.macs)}, {best.macs / best.dense_macs:.3f} of dense)"
        + (f", predicted latency {best.latency_ms:.3f} ms" if best.latency_ms is not None else "")
    )
    if outcome.selection:
        print(f"selection: {outcome.selection}")
    if outcome.tied > 1:
        print(
            f"warning: the top {outcome.tied} trials are statistically tied: this search cannot tell "
            "their allocations apart (longer trials or more validation images would)"
        )
    print(f"best rank config: {outcome.best_path}")
    return 0 if outcome.status == "finished" else 130

"""Make the README figures from a finished search directory.

Runs ``rank-search analyze`` on DIR (writing DIR/analysis/) and copies its Pareto, redundancy
and allocation figures into ``docs/`` as ``docs/<prefix>pareto.png`` and so on.

    rank-search search studies/quickstart.yaml -o runs/quickstart
    python benchmarks/make_docs_plots.py runs/quickstart [--run RUN_DIR] [--budget 0.5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("pareto", "redundancy", "allocation", "spectra")


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("directory", type=Path, help="search directory (written by `rank-search search`)")
    parser.add_argument("--run", action="append", default=[], help="train run dir for the spectra figure")
    parser.add_argument("--budget", type=float, help="budget, fraction of dense MACs (default: the search's)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="PNG folder (default docs/)")
    parser.add_argument("--prefix", default="", help="file name prefix, e.g. 'quickstart-'")
    args = parser.parse_args(argv)

    from rank_search.analysis.pipeline import analyze
    from rank_search.errors import RankSearchError

    try:
        _, written = analyze(args.directory, budget_fraction=args.budget, runs=args.run, n_boot=500)
    except RankSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.docs.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:
        if name in written:
            target = args.docs / f"{args.prefix}{name}.png"
            shutil.copyfile(written[name][0], target)
            print(f"wrote {target}")
    print(f"report: {written['report'][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Experiment 2: searched per-layer ranks against one uniform rank ratio at the same MACs.

For each case (ResNet-20 at 0.50 and 0.28 of dense MACs, ResNet-56 at 0.40): run the shipped
study (``studies/resnet20-cifar10.yaml`` / ``resnet56-cifar10.yaml``: ASHA + TPE) at that budget,
export its best config, train it in full with every seed; then train the uniform-ratio Tucker-2
config over the same layers at the same MACs (within 1%, bisection on the ratio) with the same
seeds. The searched configs are copied to ``benchmarks/configs/<case>.json``.

Layout under ``OUT``: ``search/<case>/`` (search folders), ``configs/<case>-{searched,uniform}.json``,
``train/<case>-{searched,uniform}/seed<N>/``, ``exp2.json`` and ``exp2.md``. Re-running with the
same ``OUT`` reuses finished work and resumes unfinished work.

    python benchmarks/evidence/exp2_searched_vs_uniform.py --data imagefolder:/tmp/cifar10-jpeg
    python benchmarks/evidence/exp2_searched_vs_uniform.py --cases r20-0.50 --set trials=32
    python benchmarks/evidence/exp2_searched_vs_uniform.py --profile cpu --data imagefolder:DIR
    python benchmarks/evidence/exp2_searched_vs_uniform.py --smoke
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    REPO,
    STUDIES,
    Arm,
    apply_profile,
    base_parser,
    export_at_budget,
    fmt,
    run_info,
    run_study,
    save_config,
    search_facts,
    summarize_arm,
    train_seeds,
    training_table,
    uniform_at_macs,
    write_results,
)
from profiles import PROFILES


@dataclass(frozen=True)
class Case:
    """One model at one MACs budget (fraction of the dense model's)."""

    name: str
    model: str
    fraction: float

    @property
    def study(self) -> Path:
        return STUDIES / f"{self.model}-cifar10.yaml"


CASES = (
    Case("r20-0.50", "resnet20", 0.50),
    Case("r20-0.28", "resnet20", 0.28),
    Case("r56-0.40", "resnet56", 0.40),
)


def study_overrides(case: Case, args: argparse.Namespace) -> list[str]:
    """``--set`` overrides of the case's study: data, budget, the profile's, then the user's."""
    return [f"data={args.data}", f"budget={case.fraction}", *args.study_sets, *args.set]


def searched_config(case: Case, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Run the case's search, export its best config; returns the file and search facts."""
    from rank_search.config import load_rank_config

    search_dir = run_study(
        case.study, args.out / "search" / case.name, study_overrides(case, args), cli=args.cli
    )
    path = args.out / "configs" / f"{case.name}-searched.json"
    save_config(
        load_rank_config(export_at_budget(search_dir, case.fraction, path)),
        args.configs_dir / f"{case.name}.json",
    )
    return path, search_facts(search_dir, case.fraction)


def uniform_config_file(case: Case, searched: Path, args: argparse.Namespace) -> Path:
    """Write the uniform-ratio Tucker-2 config at the searched config's MACs; returns its file."""
    from rank_search.config import load_rank_config

    config = load_rank_config(searched)
    assert config.cost is not None
    size, classes = config.input_size, config.model.num_classes
    uniform = uniform_at_macs(case.study, case.model, classes, size, config.cost.macs)
    return save_config(uniform, args.out / "configs" / f"{case.name}-uniform.json")


def run_case(case: Case, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Search, export, build the uniform baseline and train both with every seed."""
    searched, facts = searched_config(case, args)
    uniform = uniform_config_file(case, searched, args)
    rows = []
    for kind, path in (("searched", searched), ("uniform", uniform)):
        arm = Arm(f"{case.name}-{kind}", config_path=path, extra={"case": case.name, "budget": case.fraction})
        if kind == "searched":
            arm.extra.update(facts)
        rows.append(summarize_arm(arm, train_seeds(arm, args.out / "train", args)))
    return rows


def search_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of each case's search: trials, best validation accuracy, device time."""
    lines = ["| case | budget | trials | best val acc % | search device time |", "|---|---|---|---|---|"]
    for r in rows:
        if "search_dir" in r:
            val = None if r["search_best_val"] is None else 100 * r["search_best_val"]
            lines.append(
                f"| {r['case']} | {r['budget']:.2f} | {r['search_trials']} | {fmt(val, '.2f')} | "
                f"{r['search_unit']} {60 * r['search_hours']:.1f} min |"
            )
    return "\n".join(lines)


def main() -> None:
    """Run the selected cases and write the combined table."""
    p = base_parser(__doc__, "exp2")
    p.add_argument("--cases", nargs="+", choices=[c.name for c in CASES], help="default: the profile's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra study override")
    p.add_argument("--cli", action="store_true", help="run searches through the rank-search CLI")
    p.add_argument("--configs-dir", type=Path, default=REPO / "benchmarks" / "configs")
    args = apply_profile(p.parse_args())
    args.cases = args.cases or list(PROFILES[args.profile].cases)
    if args.smoke:
        args.configs_dir = args.out / "benchmark-configs"
    started = time.time()
    rows = [row for case in CASES if case.name in args.cases for row in run_case(case, args)]
    summary = f"Searched vs uniform Tucker-2 at equal MACs, {args.epochs} epochs, seeds {args.seeds}."
    payload = {
        "experiment": "exp2_searched_vs_uniform",
        "summary": summary,
        "rows": rows,
        **run_info(args, started),
    }
    write_results(args.out, "exp2", payload, training_table(rows) + "\n\n" + search_table(rows))


if __name__ == "__main__":
    main()

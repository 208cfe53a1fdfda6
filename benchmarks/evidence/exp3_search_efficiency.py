"""Experiment 3: search efficiency, ASHA + TPE against random sampling at the same GPU-hours.

For one budget (default ResNet-20 at 0.50 of dense MACs) and each search seed: run the shipped
study (ASHA + TPE), measure the device time its trials used (sum of trial ``wall_time_s`` x the
trial's GPU share), then run the same study with ``sampler=random`` and ASHA off, its trial
count capped so that it gets the same device time (one fully trained trial costs what the first
search's fully trained trials cost on average). Compared: the best validation accuracy of a fully
trained trial within the budget, and the device time each used. With ``--train-best`` the best
config of each search is also trained in full (``--epochs``) with the search's seed.

Layout under ``OUT``: ``search/seed<N>/{asha-tpe,random}/``, ``exp3.json``, ``exp3.md``. Re-running
with the same ``OUT`` reuses finished searches and resumes interrupted ones.

    python benchmarks/evidence/exp3_search_efficiency.py --data imagefolder:/tmp/cifar10-jpeg --seeds 0 1
    python benchmarks/evidence/exp3_search_efficiency.py --profile cpu --data imagefolder:DIR --train-best
    python benchmarks/evidence/exp3_search_efficiency.py --smoke
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from common import (
    STUDIES,
    Arm,
    apply_profile,
    base_parser,
    best_val_accuracy,
    export_at_budget,
    fmt,
    mean_spread,
    run_info,
    run_study,
    search_cost,
    search_resources,
    summarize_arm,
    train_seeds,
    training_table,
    trial_records,
    write_results,
)
from profiles import PROFILES

RANDOM = ("sampler=random", "asha.enabled=false")


def overrides(args: argparse.Namespace, seed: int) -> list[str]:
    """Study overrides shared by both searches: data, budget, seed, the profile's, the user's."""
    return [f"data={args.data}", f"budget={args.budget}", f"seed={seed}", *args.study_sets, *args.set]


def full_trial_seconds(search_dir: Path) -> float:
    """Device seconds of one fully trained trial: the mean over the search's completed trials
    (extrapolated from its per-epoch cost when none completed)."""
    res = search_resources(search_dir)
    share = res["gpu"] if res["gpu"] > 0 else res["cpu"]
    records = trial_records(search_dir)
    done = [r.wall_time_s for r in records if r.status == "completed"]
    if done:
        return share * sum(done) / len(done)
    planned = max(r.epochs_planned for r in records)
    return search_cost(search_dir).seconds_per_epoch * planned


def random_trials(asha_dir: Path) -> int:
    """How many full random trials fit in the ASHA search's total trial device time."""
    budget_s = 3600.0 * search_cost(asha_dir).hours
    return max(1, math.floor(budget_s / full_trial_seconds(asha_dir)))


def search_row(label: str, seed: int, search_dir: Path, fraction: float) -> dict[str, Any]:
    """One search's result: trials, fully trained trials, best validation accuracy, device time."""
    cost = search_cost(search_dir)
    val, trial = best_val_accuracy(search_dir, fraction)
    completed = sum(r.status == "completed" for r in trial_records(search_dir))
    return {
        "search": label,
        "seed": seed,
        "search_dir": str(search_dir),
        "trials": cost.trials,
        "completed": completed,
        "epochs_trained": cost.epochs,
        "best_val": val,
        "best_trial": trial,
        "unit": cost.unit,
        "hours": cost.hours,
    }


def run_seed(seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Both searches for one seed: ASHA + TPE first, then random capped at its device time."""
    root = args.out / "search" / f"seed{seed}"
    base = overrides(args, seed)
    asha = run_study(args.study, root / "asha-tpe", base, cli=args.cli)
    count = random_trials(asha)
    print(f"seed {seed}: random search gets {count} full trials (same device time)", flush=True)
    rand = run_study(args.study, root / "random", [*base, *RANDOM, f"trials={count}"], cli=args.cli)
    return [search_row("asha+tpe", seed, asha, args.budget), search_row("random", seed, rand, args.budget)]


def train_best(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train the best config of every search in full (``--epochs``) with its search seed."""
    out = []
    for row in rows:
        label = f"{row['search'].replace('+', '-')}-seed{row['seed']}"
        path = export_at_budget(Path(row["search_dir"]), args.budget, args.out / "configs" / f"{label}.json")
        arm = Arm(label, config_path=path)
        seed_args = argparse.Namespace(**{**vars(args), "seeds": [row["seed"]]})
        out.append(summarize_arm(arm, train_seeds(arm, args.out / "train", seed_args)))
    return out


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table per search kind: best validation accuracy mean ± sd over seeds, device time."""
    lines = [
        "| search | seeds | trials (fully trained) | best val acc % (mean ± sd) | device time per search |",
        "|---|---|---|---|---|",
    ]
    for label in dict.fromkeys(r["search"] for r in rows):
        mine = [r for r in rows if r["search"] == label]
        vals = [100 * r["best_val"] for r in mine if r["best_val"] is not None]
        mean, spread = mean_spread(vals)
        trials = ", ".join(f"{r['trials']} ({r['completed']})" for r in mine)
        hours = sum(r["hours"] for r in mine) / len(mine)
        lines.append(
            f"| {label} | {len(mine)} | {trials} | {fmt(mean, '.2f')} ± {fmt(spread, '.2f')} | "
            f"{mine[0]['unit']} {hours * 60:.1f} min |"
        )
    return "\n".join(lines)


def main() -> None:
    """Run both searches for every seed and write the comparison."""
    p = base_parser(__doc__, "exp3")
    p.add_argument("--study", type=Path, default=STUDIES / "resnet20-cifar10.yaml")
    p.add_argument("--budget", type=float, default=0.50, help="fraction of dense MACs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra study override")
    p.add_argument("--cli", action="store_true", help="run searches through the rank-search CLI")
    p.add_argument("--train-best", action="store_true", help="also train each search's best in full")
    args = p.parse_args()
    search_seeds = args.seeds
    args = apply_profile(args)
    profile = PROFILES[args.profile]
    args.seeds = search_seeds or list(profile.search_seeds)
    started = time.time()
    rows = [row for seed in args.seeds for row in run_seed(seed, args)]
    table = comparison_table(rows)
    trained = train_best(rows, args) if args.train_best else []
    if trained:
        table += "\n\n" + training_table(trained)
    summary = (
        f"ASHA + TPE vs random (no early stopping) at equal device time, budget {args.budget} of dense MACs."
    )
    payload = {
        "experiment": "exp3_search_efficiency",
        "summary": summary,
        "rows": rows,
        "trained": trained,
        **run_info(args, started),
    }
    write_results(args.out, "exp3", payload, table)


if __name__ == "__main__":
    main()

"""Plot the compress evidence: test accuracy of each method zero-shot, after BatchNorm
recalibration and after fine-tuning, per budget, beside the fine-tuned dense reference.

    python benchmarks/plot_compress.py runs/compress-evidence/results.json -o docs/compress-evidence.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

STAGES = (
    ("test_zero_shot", "zero-shot"),
    ("test_bn_recalibrated", "BN recalibrated"),
    ("finetuned", "fine-tuned"),
)


def bars(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (budget, method, stage): mean and SD of the test accuracy in %."""
    rows = []
    for budget, methods in results["budgets"].items():
        for method, row in methods.items():
            if row.get("same_config_as"):
                continue
            for key, stage in STAGES:
                values = row[key] if isinstance(row[key], list) else [row[key]]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                rows.append({"budget": budget, "method": method, "stage": stage,
                             "mean": 100 * statistics.mean(values), "sd": 100 * sd})  # fmt: skip
    return rows


def draw(rows: list[dict[str, Any]], dense: list[float], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["budget"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 3.8), sharey=True)
    axes = axes if len(budgets) > 1 else [axes]
    for ax, budget in zip(axes, budgets, strict=True):
        mine = [r for r in rows if r["budget"] == budget]
        methods = list(dict.fromkeys(r["method"] for r in mine))
        width = 0.8 / len(STAGES)
        for s, (_, stage) in enumerate(STAGES):
            picked = [next(r for r in mine if r["method"] == m and r["stage"] == stage) for m in methods]
            xs = [i + (s - 1) * width for i in range(len(methods))]
            ax.bar(
                xs, [r["mean"] for r in picked], width, yerr=[r["sd"] for r in picked], label=stage, capsize=2
            )
        ax.axhline(
            100 * statistics.mean(dense), color="black", linestyle="--", linewidth=1, label="dense fine-tuned"
        )
        ax.set_xticks(range(len(methods)), methods)
        ax.set_title(f"{budget} of dense MACs")
        ax.set_ylabel("test accuracy %")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("results", type=Path)
    p.add_argument("-o", "--output", type=Path, default=Path("docs/compress-evidence.png"))
    args = p.parse_args()
    results = json.loads(args.results.read_text())
    draw(bars(results), results["dense_finetuned"], args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

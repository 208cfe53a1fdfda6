"""Test accuracy against MACs of the evidence suite's full trainings (dense, uniform, searched):
the real-data accuracy-vs-MACs front for README.md.

    python benchmarks/evidence/plot_front.py runs/evidence-cpu/results.json -o docs/evidence-front.png

Reads ``results.json`` (written by ``run_all.py``); draws each config's mean test accuracy over
its seeds with its sample SD as an error bar, the uniform configs joined to dense by one line and
the searched configs by another.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Point:
    """One config's full-training result."""

    label: str
    kind: str  # "dense" | "uniform" | "searched"
    mac_ratio: float
    mean: float
    sd: float


def points(results: dict[str, Any]) -> list[Point]:
    """Dense, uniform and searched rows of ``results.json``, by kind then MACs (compute)."""
    out = []
    for row in results["rows"]:
        name = str(row["config"])
        kind = "dense" if name.startswith("dense") else "uniform" if name.endswith("uniform") else "searched"
        out.append(Point(name, kind, float(row["macs_ratio"]), row["test_acc_mean"], row["test_acc_spread"]))
    return sorted(out, key=lambda p: (p.kind, p.mac_ratio))


def plot(pts: list[Point], title: str, output: Path) -> Path:
    """Draw ``pts`` to ``output`` (plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = [p for p in pts if p.kind == "dense"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for kind, color, marker in (("uniform", "tab:purple", "D"), ("searched", "tab:orange", "o")):
        line = sorted([p for p in pts if p.kind == kind] + dense, key=lambda p: p.mac_ratio)
        ax.errorbar(
            [p.mac_ratio for p in line],
            [p.mean for p in line],
            yerr=[p.sd for p in line],
            color=color,
            marker=marker,
            capsize=3,
            label=f"{kind} Tucker-2 (and dense)",
        )
    for p in dense:
        ax.annotate("dense", (p.mac_ratio, p.mean), textcoords="offset points", xytext=(-30, 6))
    ax.set_xlabel("MACs, fraction of dense ResNet-20")
    ax.set_ylabel("test accuracy % (mean ± SD, 3 seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json of run_all.py")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/evidence-front.png"))
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    profile = results["profile"]
    title = (
        f"CIFAR-10 at {profile['image_size'] or 32}px, {profile['max_train_samples'] or 50000} images, "
        f"{profile['epochs']} epochs ({profile['name']} profile)"
    )
    print(f"wrote {plot(points(results), title, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

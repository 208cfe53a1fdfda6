"""Experiment 1: the dense models trained in full (gpu profile: ResNet-20 and ResNet-56), 3 seeds each.

The reference every compressed model is judged against: test accuracy of the dense networks
under the same recipe (``rank_search.train``: SGD Nesterov, warmup + cosine, label smoothing
0.1, weight decay 5e-4, crop + flip, bf16 on CUDA). Results: ``OUT/exp1.json`` and
``OUT/exp1.md``; run folders ``OUT/train/dense-<model>/seed<N>`` (re-running resumes).

    python benchmarks/evidence/exp1_dense_baselines.py --data imagefolder:/tmp/cifar10-jpeg
    python benchmarks/evidence/exp1_dense_baselines.py --profile cpu --data imagefolder:DIR
    python benchmarks/evidence/exp1_dense_baselines.py --smoke     # CPU, builtin data, minutes
"""

from __future__ import annotations

import time

from common import (
    Arm,
    apply_profile,
    base_parser,
    run_info,
    summarize_arm,
    train_seeds,
    training_table,
    write_results,
)
from profiles import PROFILES

MODELS = ("resnet20", "resnet56")


def main() -> None:
    """Train each dense model with every seed, then print and write the table."""
    p = base_parser(__doc__, "exp1")
    p.add_argument("--models", nargs="+", choices=MODELS, help="dense models (default: the profile's)")
    args = apply_profile(p.parse_args())
    models = args.models or list(PROFILES[args.profile].dense_models)
    started = time.time()
    rows = []
    for model in models:
        arm = Arm(label=f"dense-{model}", model=model)
        rows.append(summarize_arm(arm, train_seeds(arm, args.out / "train", args)))
    summary = f"Dense baselines, {args.epochs} epochs, seeds {args.seeds}, data {args.data}."
    payload = {
        "experiment": "exp1_dense_baselines",
        "summary": summary,
        "rows": rows,
        **run_info(args, started),
    }
    write_results(args.out, "exp1", payload, training_table(rows))


if __name__ == "__main__":
    main()

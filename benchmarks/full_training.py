"""Full training: dense ResNet-20 against Tucker-2 ResNet-20 at about 40% of its MACs.

Both are trained from scratch with the same recipe (``rank_search.train.fit``: SGD Nesterov,
warmup + cosine, label smoothing 0.1, weight decay 5e-4, crop + flip; DSO 1e-3 on the Tucker-2
factors) and evaluated on the test split. GPU-scale: 150 epochs of CIFAR-10 take minutes per
run on an H100 and days on a CPU. A smoke run::

    python benchmarks/full_training.py --data imagefolder:/tmp/cifar10-jpeg --epochs 1 \\
        --max-train-samples 2000 --device cpu

The Tucker-2 ranks are one uniform ratio over the 18 block convs (stem and classifier dense),
found by bisection so that MACs ~= ``--fraction`` of the dense model's.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from rank_search.config import RankConfig
from rank_search.convert import layer_infos
from rank_search.cost import analytic_macs
from rank_search.data import DataOptions, load_data
from rank_search.train import TrainConfig, fit
from rank_search.uniform import uniform_config, uniform_layers, uniform_ratio_bounds

BLOCK_CONVS = [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(3) for c in (1, 2)]


def tucker_at_fraction(num_classes: int, input_size: tuple[int, int, int], fraction: float) -> RankConfig:
    """Uniform-ratio Tucker-2 ResNet-20 whose MACs are closest to ``fraction`` of dense (bisection)."""
    infos = layer_infos("resnet20", num_classes, input_size)
    target = fraction * sum(info.dense_macs for info in infos.values())
    formats = dict.fromkeys(BLOCK_CONVS, "tucker2")

    def gap(ratio: float) -> float:
        return abs(analytic_macs(infos, uniform_layers(infos, ratio, formats)) - target)

    best = min(uniform_ratio_bounds(infos, formats, target), key=gap)
    return uniform_config("resnet20", num_classes, input_size, best, BLOCK_CONVS).with_cost()


def run(config: RankConfig, data: Any, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    train = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        device=args.device,
        speedup=args.speedup,
        eval_test=True,
    )
    result = fit(config, data, train, progress=not args.quiet)
    return {
        "model": config.provenance.get("label"),
        "seed": seed,
        "status": result.status,
        "test_accuracy": result.test_accuracy,
        "val_accuracy": result.val_accuracy,
        "macs": result.macs,
        "dense_macs": result.dense_macs,
        "params": result.params,
        "wall_time_s": result.wall_time_s,
        "mean_epoch_s": statistics.mean(s.epoch_time_s for s in result.history) if result.history else None,
    }


def summarize(rows: list[dict[str, Any]]) -> None:
    print(f"{'model':<14} {'MACs':>12} {'of dense':>9} {'test acc %':>16} {'s/epoch':>8} {'runs':>5}")
    for label in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == label and r["test_accuracy"] is not None]
        if not mine:
            print(f"{label:<14} no completed run")
            continue
        accs = [100 * r["test_accuracy"] for r in mine]
        spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        share = 100 * mine[0]["macs"] / mine[0]["dense_macs"]
        epoch_s = statistics.mean(r["mean_epoch_s"] for r in mine)
        print(
            f"{label:<14} {mine[0]['macs']:>12,} {share:>8.1f}% {statistics.mean(accs):>9.2f}{spread:<7} "
            f"{epoch_s:>8.2f} {len(mine):>5}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="cifar10:ROOT or imagefolder:ROOT")
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--fraction", type=float, default=0.4, help="Tucker-2 MACs as a fraction of dense")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--speedup", default="none", choices=("none", "compile", "cudagraphs"))
    p.add_argument("--device", default="auto")
    p.add_argument("--max-train-samples", type=int, help="smoke runs: a stratified subset")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("-o", "--output", type=Path, help="write the rows as JSON")
    args = p.parse_args()
    data = load_data(args.data, DataOptions(val_fraction=0.1, max_train_samples=args.max_train_samples))
    dense = RankConfig(
        uniform_config("resnet20", data.num_classes, data.input_size, 1.0, []).model, data.input_size
    )
    configs = {
        "dense": dense,
        "tucker2": tucker_at_fraction(data.num_classes, data.input_size, args.fraction),
    }
    rows = []
    for label, config in configs.items():
        config.provenance["label"] = label
        for seed in args.seeds:
            rows.append(run(config, data, args, seed))
            print(json.dumps(rows[-1]))
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    print(f"\n{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, device {device}, data {args.data}")
    summarize(rows)
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Costing a rank config and a live model: analytic formula table vs building and counting.

Before issue 10 ``RankConfig.compute_cost`` built the low-rank model (an SVD/init per layer)
and counted MACs with a forward pass, and the trainer's live cost ran a batch-1 forward after
every DPRP prune. Now both come from the formula table (``rank_search.cost.AnalyticCost``).
This script times both ways in the same process, interleaved, and checks that they agree.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/config_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from rank_search.config import Cost, ModelSpec, RankConfig
from rank_search.convert import layer_infos
from rank_search.cost import AnalyticCost, count_cost, count_params
from rank_search.uniform import uniform_layers


def counted(config: RankConfig) -> Cost:
    """The old way: build dense and low-rank models, count both by a forward pass."""
    dense = RankConfig(config.model, config.input_size).build()
    built = config.build()
    return Cost(
        count_cost(built, config.input_size).macs,
        count_params(built),
        count_cost(dense, config.input_size).macs,
    )


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def row(name: str, size: tuple[int, int, int], repeats: int) -> str:
    """One table row: medians (and ranges) of both ways, interleaved, after checking they agree."""
    num_classes = 1000 if name == "resnet18" else 10
    infos = layer_infos(name, num_classes, size)
    formats = {n: "tucker2" for n, i in infos.items() if i.allows("tucker2") and i.kernel_size == (3, 3)}
    config = RankConfig(ModelSpec(name, num_classes), size, uniform_layers(infos, 0.5, formats))
    assert config.compute_cost() == counted(config), name
    model = config.build()
    costs = AnalyticCost.of(config)
    assert costs.of_model(model).macs == count_cost(model, size).macs
    old, new, old_live, new_live = [], [], [], []
    for _ in range(repeats):  # interleaved
        old.append(timed(lambda: counted(config)))
        new.append(timed(config.compute_cost))
        old_live.append(timed(lambda: count_cost(model, size)))
        new_live.append(timed(lambda: costs.of_model(model)))
    med = statistics.median
    return (
        f"| {name} | {size[1]}x{size[2]} | {med(old):.3f} ({min(old):.3f}-{max(old):.3f}) "
        f"| {med(new):.3f} ({min(new):.3f}-{max(new):.3f}) | {med(old) / med(new):.1f}x "
        f"| {med(old_live):.4f} | {med(new_live):.5f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | input | config: build+count s | analytic s | ratio | live: forward s | analytic s |")
    print("|---|---|---|---|---|---|---|")
    for name, size in [("resnet56", (3, 32, 32)), ("resnet18", (3, 224, 224))]:
        print(row(name, size, args.repeats))


if __name__ == "__main__":
    main()

"""Is a Tucker-2 ResNet at 50% of the dense MACs actually faster? Measured, beside the MAC ratio.

For each CIFAR ResNet below, the uniform Tucker-2 config (both 3x3 convs of every block low-rank,
stem and classifier dense, one rank ratio for all) with the largest ratio whose MACs are at most
50% of the dense model's is found by bisection. Its inference export is timed against the dense
model's, interleaved (``rank_search.bench``), at batch 1 and 32 on the CPU (2 threads) and at
batch 1 and 1024 on CUDA when present (eager, and with CUDA-graph replay). Reported per batch:
dense and low-rank median ms, speedup, MAC ratio, speedup as a % of the MAC ratio, and the
latency predicted by a fresh per-layer latency table against the measured one. A random mixed
config (dense / Tucker-2 / SVD per layer, random ratios) checks the prediction away from the
table's own uniform reference model.

    python benchmarks/latency.py                      # ~2-4 min on a 2-core CPU
    python benchmarks/latency.py --config searched.json -o results.json

``--runtime onnxruntime`` (issue 12) runs the ONNX Runtime goals instead, 1 thread, each config
against its dense model side by side (``rank_search.bench`` with ``runtime="onnxruntime"``: the
low-rank model ships with its fastest equivalent form per layer, chosen by timing at each batch):
uniform Tucker-2 at ranks 0.5 x C for ResNet-20 (goal >= 1.35x dense at batch 1) and ResNet-56
(>= 1.4x), torchvision ResNet-18 at 224 px, uniform Tucker-2 at 40% of the MACs (>= 2x, batch 1
only: batch 32 at 224 px takes seconds per call on one thread), and random per-layer configs;
every config >= 0.97x dense at batch 1 and 32.

    python benchmarks/latency.py --runtime onnxruntime -o ort.json   # ~5 min on a 2-core CPU

Timings are single runs on a possibly shared machine: quote ratios measured side by side.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from rank_search.bench import BenchOptions, bench_config
from rank_search.config import LayerSpec, ModelSpec, RankConfig, load_rank_config
from rank_search.convert import LayerInfo, list_factorizable
from rank_search.latency import LatencyTable, TimingSettings, default_round_to
from rank_search.models import create_model
from rank_search.uniform import uniform_config, uniform_ratio_bounds

MODELS = ("resnet20", "resnet56")
MAC_FRACTION = 0.5
CPU_THREADS = 2
CPU_BATCHES = (1, 32)
CUDA_BATCHES = (1, 1024)
REPEATS = 15
WARMUP = 2
TABLE_SETTINGS = TimingSettings(repeats=7, warmup=2, min_sample_ms=5.0)


def _block_convs(infos: list[LayerInfo]) -> list[str]:
    """Both 3x3 convs of every block (the group's CIFAR convention): stem and classifier stay dense."""
    return [
        i.name for i in infos if i.kind == "conv" and i.name.startswith("layer") and i.kernel_size == (3, 3)
    ]


def uniform_tucker2_at(model: str, fraction: float = MAC_FRACTION, steps: int = 30) -> RankConfig:
    """The uniform Tucker-2 config with the largest rank ratio whose MACs are <= ``fraction`` of dense."""
    size = (3, 32, 32)
    infos = list_factorizable(create_model(model), size)
    names = _block_convs(infos)
    budget = fraction * sum(i.dense_macs for i in infos)
    by_name = {i.name: i for i in infos}
    lo, _ = uniform_ratio_bounds(by_name, dict.fromkeys(names, "tucker2"), budget, steps)
    config = uniform_config(model, 10, size, lo, names, "tucker2")
    config.provenance["uniform_ratio"] = lo
    return config.with_cost()


def random_mixed_config(model: str, seed: int = 0) -> RankConfig:
    """Each block conv dense, Tucker-2 or SVD at a random rank ratio in [0.25, 0.75]: a config unlike
    the latency table's uniform reference, to check the prediction on."""
    rng = random.Random(seed)
    infos = list_factorizable(create_model(model), (3, 32, 32))
    layers = {}
    for name in _block_convs(infos):
        fmt, ratio = rng.choice(["dense", "tucker2", "svd"]), rng.uniform(0.25, 0.75)
        if fmt != "dense":
            full = next(i for i in infos if i.name == name).full_ranks[fmt]
            layers[name] = LayerSpec(fmt, **{k: max(1, round(v * ratio)) for k, v in full.items()})
    return RankConfig(ModelSpec(model, 10), (3, 32, 32), layers).with_cost()


def _row(
    label: str, config: RankConfig, device: str, batch: dict[str, Any], table: LatencyTable | None
) -> dict[str, Any]:
    """One result row: measured dense and low-rank, and the table's predictions for both (eager only)."""
    row = {
        key: batch[key]
        for key in ("batch_size", "dense_ms", "low_rank_ms", "speedup", "mac_ratio", "speedup_of_mac_ratio")
    }
    row = {"config": label, "device": device, **row}
    if table is not None:
        predicted = table.predict(config, batch["batch_size"])
        predicted_dense = table.predict(RankConfig(config.model, config.input_size), batch["batch_size"])
        row["predicted_low_rank_ms"] = predicted
        row["prediction_error"] = (predicted - batch["low_rank_ms"]) / batch["low_rank_ms"]
        row["predicted_dense_ms"] = predicted_dense
        row["dense_prediction_error"] = (predicted_dense - batch["dense_ms"]) / batch["dense_ms"]
    return row


def run_device(
    configs: dict[str, RankConfig],
    device: str,
    cache_dir: Path,
    cuda_graph: bool = False,
    threads: int = CPU_THREADS,
) -> list[dict[str, Any]]:
    """Bench every config on ``device`` and compare with a latency table's predictions."""
    cpu = device == "cpu"
    cpu_threads = threads if cpu else None
    table = LatencyTable.load_or_create(
        device, threads=cpu_threads, cache_dir=cache_dir, settings=TABLE_SETTINGS
    )
    rows = []
    for label, config in configs.items():
        options = BenchOptions(
            device=device,
            batch_sizes=CPU_BATCHES if cpu else CUDA_BATCHES,
            repeats=REPEATS,
            warmup=WARMUP,
            threads=cpu_threads,
            cuda_graph=cuda_graph,
        )
        result = bench_config(config, options, source=label).to_dict()
        name = device + (" +graph" if cuda_graph else "")
        rows += [
            _row(label, config, name, batch, None if cuda_graph else table) for batch in result["results"]
        ]
        print(f"  done: {label} on {name}", file=sys.stderr)
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    head = (
        "config",
        "device",
        "batch",
        "dense ms",
        "low-rank ms",
        "speedup",
        "mac_ratio",
        "spd/mac",
        "pred ms",
        "pred err",
        "pred dense err",
    )
    print(" | ".join(head))
    for r in rows:
        text = (
            f"{r['config']} | {r['device']} | {r['batch_size']} | {r['dense_ms']:.3f} | "
            f"{r['low_rank_ms']:.3f} | {r['speedup']:.2f}x | {r['mac_ratio']:.2f}x | "
            f"{100 * r['speedup_of_mac_ratio']:.0f}%"
        )
        if "predicted_low_rank_ms" in r:
            text += (
                f" | {r['predicted_low_rank_ms']:.3f} | {100 * r['prediction_error']:+.1f}% | "
                f"{100 * r['dense_prediction_error']:+.1f}%"
            )
        print(text)


ORT_REPEATS = 11
NEVER_SLOWER = 0.97


def ort_goal_configs(seeds: int = 2) -> list[tuple[str, RankConfig, float, tuple[int, ...]]]:
    """``(label, config, speedup goal at batch 1, batch sizes)`` for the ONNX Runtime goals."""
    goals: list[tuple[str, RankConfig, float, tuple[int, ...]]] = []
    for model, goal in (("resnet20", 1.35), ("resnet56", 1.4)):
        names = _block_convs(list_factorizable(create_model(model), (3, 32, 32)))
        config = uniform_config(model, 10, (3, 32, 32), 0.5, names, "tucker2").with_cost()
        goals.append((f"{model} tucker2 ranks 0.5xC", config, goal, CPU_BATCHES))
        for seed in range(seeds if model == "resnet20" else 1):
            mixed = random_mixed_config(model, seed)
            goals.append((f"{model} random mixed (seed {seed})", mixed, 0.0, CPU_BATCHES))
    size = (3, 224, 224)
    infos = list_factorizable(create_model("resnet18", num_classes=1000), size)
    names = _block_convs(infos)
    budget = 0.4 * sum(i.dense_macs for i in infos)
    by_name, formats = {i.name: i for i in infos}, dict.fromkeys(names, "tucker2")
    block = default_round_to()  # the CPU's channel block, as search spaces round by default
    for round_to, goal in ((1, 0.0), (block, 2.0)):
        lo, _ = uniform_ratio_bounds(by_name, formats, budget, round_to=round_to)
        config = uniform_config("resnet18", 1000, size, lo, names, "tucker2", round_to).with_cost()
        label = "resnet18 224px tucker2 @40% MACs" + (f", ranks multiples of {block}" if round_to > 1 else "")
        goals.append((label, config, goal, (1,)))
    return goals


def run_onnxruntime(seeds: int, threads: int = 1) -> list[dict[str, Any]]:
    """Bench every goal config in ONNX Runtime against its dense model; one row per batch."""
    rows = []
    for label, config, goal, batches in ort_goal_configs(seeds):
        options = BenchOptions(
            device="cpu", batch_sizes=batches, repeats=ORT_REPEATS, warmup=WARMUP, threads=threads,
            runtime="onnxruntime",
        )  # fmt: skip
        result = bench_config(config, options, source=label).to_dict()
        assert config.cost is not None
        for batch in result["results"]:
            need = max(goal, NEVER_SLOWER) if batch["batch_size"] == 1 else NEVER_SLOWER
            forms = batch["forms"]
            counts: dict[str, int] = {}
            for record in forms["forms"].values():
                counts[record["form"]] = counts.get(record["form"], 0) + 1
            rows.append({
                "config": label, "batch_size": batch["batch_size"], "dense_ms": batch["dense_ms"],
                "low_rank_ms": batch["low_rank_ms"], "speedup": batch["speedup"],
                "mac_fraction": config.cost.macs / config.cost.dense_macs, "goal": need,
                "met": batch["speedup"] >= need, "chosen": forms["chosen"], "forms": counts,
                "dense_iqr": [batch["dense_spread"]["q1"], batch["dense_spread"]["q3"]],
                "low_rank_iqr": [batch["low_rank_spread"]["q1"], batch["low_rank_spread"]["q3"]],
                "load_average": result["device"]["load_average"],
            })  # fmt: skip
            print(f"  done: {label} batch {batch['batch_size']}", file=sys.stderr)
    return rows


def _print_ort(rows: list[dict[str, Any]]) -> None:
    print("config | batch | MACs | dense ms [IQR] | low-rank ms [IQR] | speedup | goal | met | forms | load")
    for r in rows:
        forms = ", ".join(f"{k} {v}" for k, v in sorted(r["forms"].items()))
        print(
            f"{r['config']} | {r['batch_size']} | {r['mac_fraction']:.0%} | {r['dense_ms']:.3f} "
            f"[{r['dense_iqr'][0]:.3f}-{r['dense_iqr'][1]:.3f}] | {r['low_rank_ms']:.3f} "
            f"[{r['low_rank_iqr'][0]:.3f}-{r['low_rank_iqr'][1]:.3f}] | {r['speedup']:.2f}x | "
            f">= {r['goal']:.2f}x | {'yes' if r['met'] else 'NO'} | {r['chosen']}: {forms} | "
            f"{r['load_average']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime"])
    parser.add_argument("--seeds", type=int, default=2, help="onnxruntime: random resnet20 configs")
    parser.add_argument("--config", action="append", default=[], help="also bench this rank-config JSON")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--cache-dir", help="latency table folder (default: a fresh temporary one)")
    parser.add_argument("--threads", type=int, default=CPU_THREADS, help="CPU threads")
    parser.add_argument("-o", "--output", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.runtime == "onnxruntime":
        torch.set_num_threads(1)
        ort_rows = run_onnxruntime(args.seeds)
        _print_ort(ort_rows)
        if args.output:
            Path(args.output).write_text(json.dumps(ort_rows, indent=2) + "\n")
        return 0
    configs = {}
    for model in args.models:
        config = uniform_tucker2_at(model)
        assert config.cost is not None
        ratio = config.provenance["uniform_ratio"]
        fraction = config.cost.macs / config.cost.dense_macs
        print(f"{model}: uniform Tucker-2 ratio {ratio:.3f}, MACs {fraction:.1%} of dense", file=sys.stderr)
        configs[f"{model} tucker2 uniform@{MAC_FRACTION:.0%}"] = config
        configs[f"{model} random mixed (seed 0)"] = random_mixed_config(model)
    for path in args.config:
        configs[Path(path).name] = load_rank_config(path)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        rows = run_device(configs, "cpu", cache, threads=args.threads)
        if torch.cuda.is_available():
            rows += run_device(configs, "cuda", cache)
            rows += run_device(configs, "cuda", cache, cuda_graph=True)
    _print(rows)
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

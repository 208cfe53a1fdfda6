"""Does the latency table predict what ships? Error distribution over 38 configs, fp32 and INT8 (issue 22).

Configs (ResNets at 3x32x32, batch 1, ONNX Runtime CPU, 1 thread):

* 18 configs produced as the latency-aware search of ``benchmarks/latency_search.py`` produces its
  trials: ResNet-20, Tucker-2 on every 3x3 block conv, each rank key drawn as a ratio in
  [0.1, 1.0] of its full rank and rounded to a multiple of 8 (``spaces/cifar-resnet-latency.yaml``),
  kept when the table predicts it within 0.7 x the dense model's latency (the search's budget).
  The search's own 18 trial configs (runs/latsearch2, 2026-12-02) are not on disk, so these are
  drawn the same way (seeded), untrained (latency does not depend on the weights);
* 20 random mixed configs, 10 of ResNet-20 and 10 of ResNet-56 (``benchmarks/latency.py``'s
  ``random_mixed_config``: each block conv dense, Tucker-2 or SVD at a random rank ratio in
  [0.25, 0.75], exact ranks).

For each precision a fresh latency table (``--cache-dir``; exact ranks, no interpolation)
predicts every config; then each config is exported as ``rank-search export-model`` ships it
(fastest form per layer, chosen by timing in that precision) and timed interleaved with its dense
model (``--repeats`` pairs, medians). Measured ms = the measured ratio to dense x the table's
dense latency, so prediction and measurement share a time base (this machine drifts by 20%
between timings minutes apart); error = predicted / measured - 1.

    python benchmarks/latency_prediction.py -o runs/latency-prediction

Writes ``OUT/latency_prediction.json`` after every config (a rerun with the same ``-o`` skips
configs already measured) and prints the error distribution per precision and group.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from rank_search._io import atomic_write_json
from rank_search.config import LayerSpec, ModelSpec, RankConfig
from rank_search.convert import list_factorizable
from rank_search.inference import export_for_inference
from rank_search.latency import LatencyTable, TimingSettings, load_average, summarize, time_interleaved
from rank_search.latency._runtime import runner
from rank_search.models import create_model
from rank_search.onnx_export import fastest_form

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import random_mixed_config

SIZE = (3, 32, 32)
SETTINGS = TimingSettings(repeats=5, warmup=2, min_sample_ms=2.0)
BUDGET_FRACTION = 0.7


def _round8(value: float, full: int) -> int:
    """``spaces/cifar-resnet-latency.yaml``: a ratio in [0.1, 1] of ``full``, a multiple of 8."""
    lo = math.ceil(max(1, math.floor(0.1 * full + 0.5)) / 8) * 8
    hi = max(lo, (full // 8) * 8)
    return min(max(math.floor(value * full / 8 + 0.5) * 8, lo), hi)


def search_like_configs(table: LatencyTable, count: int, seed: int = 0) -> list[tuple[str, RankConfig]]:
    """``count`` configs drawn as the latency-aware search's trials, within its budget."""
    infos = list_factorizable(create_model("resnet20"), SIZE)
    names = [i for i in infos if i.name.startswith("layer") and i.kernel_size == (3, 3)]
    dense_ms = table.predict(RankConfig(ModelSpec("resnet20", 10), SIZE), 1)
    rng = random.Random(seed)
    found: list[tuple[str, RankConfig]] = []
    draws = 0
    while len(found) < count and draws < 50 * count:
        draws += 1
        layers = {
            i.name: LayerSpec(
                "tucker2",
                **{k: _round8(rng.uniform(0.1, 1.0), v) for k, v in i.full_ranks["tucker2"].items()},
            )
            for i in names
        }
        config = RankConfig(ModelSpec("resnet20", 10), SIZE, layers)
        if table.predict(config, 1) <= BUDGET_FRACTION * dense_ms:
            found.append((f"search-like {len(found)} (draw {draws})", config))
    return found


def _measure(config: RankConfig, precision: str, repeats: int) -> dict[str, Any]:
    """The config as shipped (fastest forms in ``precision``) and its dense model, interleaved."""
    x = torch.randn(1, *SIZE, generator=torch.Generator().manual_seed(0))
    dense = export_for_inference(
        create_model(config.model.name, num_classes=10), channels_last=False, input_size=SIZE
    )
    low = export_for_inference(config.build(seed=0), channels_last=False, input_size=SIZE)
    shipped, report = fastest_form(low, x, threads=1, precision=precision, repeats=5, warmup=2)
    calls = [runner(dense, x, "onnxruntime", 1, precision), runner(shipped, x, "onnxruntime", 1, precision)]
    with torch.inference_mode():
        d, lr = time_interleaved(calls, x.device, repeats=repeats, warmup=3, min_sample_ms=20.0)
    ds, ls = summarize(d), summarize(lr)
    return {
        "dense": ds.to_dict(),
        "low_rank": ls.to_dict(),
        "ratio": ls.median / ds.median,
        "chosen": report.chosen,
    }


def _summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    errors = [abs(r["error"]) for r in rows]
    return {
        "configs": len(rows),
        "median_abs": statistics.median(errors),
        "max_abs": max(errors),
        "mean_signed": statistics.mean(r["error"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-o", "--output", required=True, type=Path)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--search-like", type=int, default=18)
    parser.add_argument(
        "--random", type=int, default=10, help="random configs per model (ResNet-20, ResNet-56)"
    )
    parser.add_argument("--cache-dir", type=Path, help="latency tables (default OUT/tables: fresh)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = args.output / "latency_prediction.json"
    report: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {"rows": {}}
    cache = args.cache_dir or args.output / "tables"
    fp32_table = LatencyTable.load_or_create(
        "cpu", threads=1, runtime="onnxruntime", cache_dir=cache, settings=SETTINGS
    )
    configs = search_like_configs(fp32_table, args.search_like)
    configs += [(f"resnet20 random {s}", random_mixed_config("resnet20", s)) for s in range(args.random)]
    configs += [(f"resnet56 random {s}", random_mixed_config("resnet56", s)) for s in range(args.random)]
    for precision in args.precisions:
        table = LatencyTable.load_or_create(
            "cpu", threads=1, runtime="onnxruntime", precision=precision, cache_dir=cache, settings=SETTINGS
        )
        rows = report["rows"].setdefault(precision, {})
        for label, config in configs:
            if label in rows:
                continue
            predicted = table.predict(config, 1)
            dense_ms = table.predict(RankConfig(ModelSpec(config.model.name, 10), SIZE), 1)
            load_before = load_average()
            timing = _measure(config, precision, args.repeats)
            measured = timing["ratio"] * dense_ms
            rows[label] = {
                "model": config.model.name,
                "predicted_ms": predicted,
                "table_dense_ms": dense_ms,
                "measured_ms": measured,
                "error": predicted / measured - 1,
                "timing": timing,
                "load": [load_before, load_average()],
                "layers": {n: s.to_dict() for n, s in config.layers.items()},
            }
            print(
                f"{precision} {label}: predicted {predicted:.3f} ms, measured {measured:.3f} ms, "
                f"error {100 * rows[label]['error']:+.1f}% (load {load_before})",
                flush=True,
            )
            atomic_write_json(out, report)
    _print(report)
    return 0


def _print(report: dict[str, Any]) -> None:
    print("\n| precision | configs | median abs error | max abs error | mean signed error |")
    print("|---|---|---|---|---|")
    for precision, rows in report["rows"].items():
        groups = {
            "all": list(rows.values()),
            "search-like": [r for k, r in rows.items() if k.startswith("search-like")],
            "resnet20 random": [r for k, r in rows.items() if k.startswith("resnet20 random")],
            "resnet56 random": [r for k, r in rows.items() if k.startswith("resnet56 random")],
        }
        for group, members in groups.items():
            if not members:
                continue
            s = _summary(members)
            print(
                f"| {precision} {group} | {s['configs']} | {100 * s['median_abs']:.1f}% | "
                f"{100 * s['max_abs']:.1f}% | {100 * s['mean_signed']:+.1f}% |"
            )


if __name__ == "__main__":
    raise SystemExit(main())

"""Latency-aware search on ONNX Runtime against the MACs-budget search (issue 12's search goal).

For each seed, on an image folder (CIFAR-10 JPEGs) at a small CPU scale:

1. the dense model's ONNX Runtime latency (batch 1, 1 thread) sets the budget: ``--fraction`` of it;
2. a latency-aware search (``studies/quickstart-latency.yaml``, ``budget.runtime=onnxruntime``)
   under that budget, and a MACs-budget search (``studies/quickstart.yaml``, front mode, every
   trial trained fully) up to ``--macs-fraction`` of the dense MACs, same data, trials, epochs;
3. every fully trained trial of both searches is exported as ``rank-search export-model`` ships
   it and timed in ONNX Runtime against its dense model (``rank_search.bench``, interleaved);
4. per seed: the largest |measured / predicted - 1| over the latency search's trials (goal:
   within 10%), and the best validation accuracy within the latency budget *as measured* of each
   search (goal: latency-aware at least as accurate as the MACs search).

    python benchmarks/latency_search.py --data imagefolder:/tmp/cifar10-jpeg --seeds 0 1 2 -o runs/latsearch

Measured latencies are each config's ratio to the dense model timed beside it (interleaved), times
the reference dense latency timed at the start, so drift between timings cancels. Run again with
the same ``-o`` to re-time finished searches without retraining them.

Prints a Markdown table and writes ``OUT/latency_search.json``. Minutes per seed on 2 CPU cores
at the defaults; accuracy does not depend on load, the timings do: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rank_search._io import atomic_write_json
from rank_search.bench import BenchOptions, bench_config
from rank_search.config import ModelSpec, RankConfig, rank_config_from_dict
from rank_search.search.records import read_records
from rank_search.search.runner import run_search
from rank_search.search.study import load_study

REPEATS = 21  # interleaved dense / low-rank pairs per timing (medians)
SETTLE_LOAD = 0.5  # before timing, wait (up to SETTLE_S) for the 1-minute load average to fall below this
SETTLE_S = 90.0


def _settle() -> None:
    """Let the search's Ray processes finish exiting before anything is timed."""
    deadline = time.monotonic() + SETTLE_S
    while os.getloadavg()[0] > SETTLE_LOAD and time.monotonic() < deadline:
        time.sleep(5)


def _bench(config: RankConfig) -> dict[str, float]:
    options = BenchOptions(runtime="onnxruntime", batch_sizes=(1,), threads=1, repeats=REPEATS)
    result = bench_config(config, options).to_dict()
    return {"dense_ms": float(result["dense_ms"]), "lowrank_ms": float(result["lowrank_ms"])}


def _common(args: argparse.Namespace, seed: int) -> list[str]:
    return [
        f"data={args.data}",
        f"data_options.image_size={args.image_size}",
        f"data_options.max_train_samples={args.train_samples}",
        "data_options.val_fraction=0.2",
        f"trials={args.trials}",
        f"epochs_per_trial={args.epochs}",
        "asha.enabled=false",
        "resources.cpu=1",
        f"seed={seed}",
    ]


def _trials(out: Path, dense_ms: float) -> list[dict[str, Any]]:
    """Every fully trained trial: its config, predicted latency, accuracy and measured latency
    (``measured_ms``: its measured ratio to the dense model timed beside it, times ``dense_ms``,
    the latency table's own prediction for the dense model: measurement and prediction then share
    one time base, and the machine's speed drift between the table's timing and this one cancels)."""
    _settle()
    rows = []
    for record in read_records(out):
        if record.status != "completed" or record.val_accuracy is None:
            continue
        measured = _bench(rank_config_from_dict(record.rank_config).with_cost())
        rows.append(
            {
                "trial_id": record.trial_id,
                "val_accuracy": record.val_accuracy,
                "macs_fraction": record.macs / record.dense_macs,
                "predicted_ms": record.latency_ms,
                **measured,
                "measured_ms": measured["lowrank_ms"] / measured["dense_ms"] * dense_ms,
            }
        )
    return rows


def _finished(out: Path) -> bool:
    """A search already run to the end in ``out`` (rerunning the script re-times, not retrains)."""
    manifest = out / "search.json"
    return manifest.is_file() and json.loads(manifest.read_text())["status"] == "finished"


def _saved_budget(out: Path) -> float | None:
    """The latency budget a finished search in ``out`` ran under."""
    if not _finished(out):
        return None
    return float(json.loads((out / "search.json").read_text())["budget_latency_ms"])


def _table_dense_ms(study_name: str, sets: list[str], size: tuple[int, int, int]) -> float:
    """The latency table's prediction for the dense model (the search's time base)."""
    study = load_study(study_name, sets)
    assert study.budget.latency is not None
    table = study.budget.latency.table()
    return table.predict(RankConfig(ModelSpec("resnet20", 10), size), study.budget.latency.batch_size)


def _best_within(rows: list[dict[str, Any]], budget_ms: float) -> dict[str, Any] | None:
    fitting = [r for r in rows if r["measured_ms"] <= budget_ms]
    return max(fitting, key=lambda r: r["val_accuracy"]) if fitting else None


def run_seed(args: argparse.Namespace, seed: int, dense_ms: float) -> dict[str, Any]:
    out = Path(args.out) / f"seed{seed}"
    budget_ms = _saved_budget(out / "latency") or round(args.fraction * dense_ms, 4)
    latency_sets = [
        *_common(args, seed),
        f"budget={{latency_ms: {budget_ms}, device: cpu, batch_size: 1, threads: 1, runtime: onnxruntime}}",
    ]
    macs_sets = [*_common(args, seed), "mode=front", f"budget={args.macs_fraction}"]
    for name, sets in (("quickstart-latency", latency_sets), ("quickstart", macs_sets)):
        folder = out / ("latency" if name.endswith("latency") else "macs")
        if not _finished(folder):
            run_search(load_study(name, sets), folder)
    size = (3, args.image_size, args.image_size)
    table_dense = _table_dense_ms("quickstart-latency", latency_sets, size)
    latency_rows, macs_rows = _trials(out / "latency", table_dense), _trials(out / "macs", table_dense)
    errors = [abs(r["measured_ms"] / r["predicted_ms"] - 1) for r in latency_rows if r["predicted_ms"]]
    return {
        "seed": seed,
        "dense_ms": dense_ms,
        "table_dense_ms": table_dense,
        "budget_ms": budget_ms,
        "latency_trials": latency_rows,
        "macs_trials": macs_rows,
        "max_prediction_error": max(errors) if errors else None,
        "median_prediction_error": statistics.median(errors) if errors else None,
        "latency_best": _best_within(latency_rows, budget_ms),
        "macs_best": _best_within(macs_rows, budget_ms),
    }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| seed | dense ms (timed / table) | budget ms | latency-aware best val (measured ms) "
        "| MACs-budget best val within budget (measured ms) | latency-aware - MACs "
        "| max / median prediction error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat, mac = r["latency_best"] or {}, r["macs_best"] or {}
        diff = lat["val_accuracy"] - mac["val_accuracy"] if lat and mac else None
        lines.append(
            f"| {r['seed']} | {r['dense_ms']:.3f} / {r['table_dense_ms']:.3f} | {r['budget_ms']:.3f} | "
            f"{_fmt(lat.get('val_accuracy'), '.4f')} ({_fmt(lat.get('measured_ms'), '.3f')}) | "
            f"{_fmt(mac.get('val_accuracy'), '.4f')} ({_fmt(mac.get('measured_ms'), '.3f')}) | "
            f"{_fmt(diff, '+.4f')} | {_fmt(r['max_prediction_error'], '.1%')} / "
            f"{_fmt(r['median_prediction_error'], '.1%')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="data SPEC, e.g. imagefolder:/tmp/cifar10-jpeg")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.7, help="latency budget as a fraction of dense")
    parser.add_argument("--macs-fraction", type=float, default=0.7, help="MACs search: budget (front mode)")
    parser.add_argument("--image-size", type=int, default=32, help="16 is too small: see RESULTS.md")
    parser.add_argument("--train-samples", type=int, default=4000)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("-o", "--out", default="runs/latency-search")
    args = parser.parse_args()
    size = (3, args.image_size, args.image_size)
    _settle()
    dense_ms = _bench(RankConfig(ModelSpec("resnet20", 10), size))["dense_ms"]
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(args, seed, dense_ms))
        atomic_write_json(Path(args.out) / "latency_search.json", {"settings": vars(args), "seeds": rows})
        print(table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

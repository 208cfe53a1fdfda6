"""Search throughput: trials per hour, GPU utilization, and what Ray + Optuna add over the bare loop.

For each concurrency k (trials sharing one GPU: 1/k GPU each; on CPU: one core and one torch
thread per trial, as multi-threaded CPU torch degrades badly on shared cores) this runs the study
for ``--trials`` full trials of ``--epochs`` epochs (ASHA off, so every trial trains the same
amount), samples ``nvidia-smi`` once a second, and reports

* trials/hour = trials * 3600 / wall time of the search (Ray start and shutdown excluded);
* GPU utilization (mean and max %) and the largest GPU memory in use;
* overhead = 1 - (sum of the trials' training-loop times / k) / wall: the share of the wall time
  not spent inside ``fit`` (Ray scheduling, worker start, checkpoints, Optuna, records, idle slots).
  ``fit`` time is taken from each trial record (``wall_time_s``: train + validation + callbacks);
  the pure training passes (``epoch_time_s`` summed) are reported beside it.
* a bare baseline: the uniform config trained by ``fit`` directly, no Ray, same epochs.

GPU (the real measurement, CIFAR-10 must be on disk):
    python benchmarks/search_throughput.py --study studies/resnet20-cifar10.yaml \
        --set data=cifar10:/data/cifar --concurrency 1 2 4 --trials 8 --epochs 2 -o runs/bench-gpu
CPU smoke run (tiny; proves the script works):
    python benchmarks/search_throughput.py --study studies/quickstart.yaml --cpu \
        --concurrency 1 2 --trials 4 --epochs 2 -o runs/bench-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@dataclass
class GpuSampler:
    """Samples ``nvidia-smi`` utilization and memory once a second in a thread."""

    util: list[float] = field(default_factory=list)
    memory_mib: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("nvidia-smi") is not None

    def _sample(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.wait(1.0):
            try:
                line = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.splitlines()[0]
                util, memory = (float(v) for v in line.split(","))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                continue
            self.util.append(util)
            self.memory_mib.append(memory)

    def __enter__(self) -> GpuSampler:
        if self.available():
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, float | None]:
        if not self.util:
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_memory_max_mib": None}
        return {
            "gpu_util_mean": round(statistics.fmean(self.util), 1),
            "gpu_util_max": max(self.util),
            "gpu_memory_max_mib": max(self.memory_mib),
        }


def _overrides(args: argparse.Namespace, k: int) -> list[str]:
    sets = [
        *args.set,
        f"trials={args.trials}",
        f"epochs_per_trial={args.epochs}",
        "asha.enabled=false",
        f"resources.concurrency={k}",
        "starting_points.uniform=true",
    ]
    if args.cpu:  # one thread per trial: multi-threaded CPU torch degrades badly when cores are shared
        sets += ["resources.gpu=0", "resources.cpu=1", "train.device=cpu"]
    else:
        sets += [f"resources.gpu={1.0 / k:.4f}"]
    return sets


def run_setting(args: argparse.Namespace, k: int) -> dict[str, Any]:
    """One search at concurrency ``k``; Ray is started first so its start-up is not timed."""
    import ray

    from rank_search.search.records import read_records
    from rank_search.search.runner import run_search
    from rank_search.search.study import load_study

    study = load_study(args.study, _overrides(args, k))
    out = Path(args.out) / f"concurrency-{k}"
    shutil.rmtree(out, ignore_errors=True)
    ray.init(include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    try:
        with GpuSampler() as gpu:
            start = time.perf_counter()
            outcome = run_search(study, out)
            wall = time.perf_counter() - start
    finally:
        ray.shutdown()
    records = read_records(out)
    fit_s = sum(r.wall_time_s for r in records)
    train_s = sum(h["epoch_time_s"] or 0.0 for r in records for h in r.history)
    return {
        "concurrency": k,
        "per_trial": f"1/{k} GPU" if not args.cpu else f"{study.resources.cpu:g} CPU",
        "trials": len(records),
        "completed": sum(r.status == "completed" for r in records),
        "wall_s": round(wall, 1),
        "trials_per_hour": round(len(records) * 3600 / wall, 1),
        "sum_fit_s": round(fit_s, 1),
        "sum_train_epochs_s": round(train_s, 1),
        "mean_epoch_s": round(train_s / max(1, sum(len(r.history) for r in records)), 3),
        "overhead_share": round(1 - fit_s / k / wall, 3),
        "status": outcome.status,
        **gpu.summary(),
    }


def bare_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """Train the uniform config at the budget with ``fit`` directly (no Ray, no Optuna)."""
    from rank_search.data import DataOptions, load_data
    from rank_search.search.budget import uniform_sample
    from rank_search.search.runner import prepare
    from rank_search.search.study import load_study
    from rank_search.train import fit, train_config_from_dict

    study = load_study(args.study, _overrides(args, 1))
    plan = prepare(study, Path(args.out) / "baseline")
    config = plan.space.rank_config(uniform_sample(plan.space, plan.budget_macs))
    data = load_data(study.data, DataOptions(**study.data_options))
    if args.cpu:
        import torch

        torch.set_num_threads(1)
    start = time.perf_counter()
    result = fit(config, data, train_config_from_dict(plan.setup.train))
    wall = time.perf_counter() - start
    return {
        "bare_fit_s": round(wall, 1),
        "bare_trials_per_hour": round(3600 / wall, 1),
        "bare_mean_epoch_s": round(statistics.fmean(s.epoch_time_s for s in result.history), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", default="studies/resnet20-cifar10.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="study override")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 2, 4], help="trials at once")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cpu", action="store_true", help="run on CPU (no GPU shares)")
    parser.add_argument("-o", "--out", default="runs/search-throughput")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    baseline = bare_baseline(args)
    rows = [run_setting(args, k) for k in args.concurrency]
    report = {
        "study": args.study,
        "overrides": args.set,
        "cpu": args.cpu,
        "baseline": baseline,
        "settings": rows,
    }
    (Path(args.out) / "search_throughput.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(baseline))
    keys = [
        "concurrency",
        "per_trial",
        "wall_s",
        "trials_per_hour",
        "mean_epoch_s",
        "sum_fit_s",
        "sum_train_epochs_s",
        "overhead_share",
        "gpu_util_mean",
        "gpu_util_max",
        "gpu_memory_max_mib",
    ]
    print("  ".join(keys))
    for row in rows:
        print("  ".join(str(row[k]) for k in keys))
    print(f"wrote {Path(args.out) / 'search_throughput.json'}")


if __name__ == "__main__":
    main()

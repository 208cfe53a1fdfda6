"""Search overhead (issue 11): what Ray + Optuna + our plumbing add around the trials' training.

Parts (``--part``, default all):

* ``throughput``: one search of ``--trials`` trials of ``--epochs`` epochs (ASHA off, so every
  trial trains the same amount) at concurrency ``--concurrency``, timed from the ``run_search``
  call (Ray start-up included) to its return. Prints wall, the sum of the trials' pure training
  time (``epoch_time_s`` in their history) and the overhead ``1 - training / (k x wall)``, split
  into start-up (call -> first trial record on disk), shutdown (last record final -> return) and
  per trial (the rest, per trial). A thread polls ``DIR/trials`` every 20 ms for the times.
* ``growth``: the same with ``--growth-trials`` one-epoch tiny trials at concurrency 1; the
  per-trial overhead of trial i is ``start(i+1) - start(i) - training(i)``; prints its median over
  the first and the last 25% of trials and their ratio (no growth: ratio near 1).
* ``sampling``: seconds per sampled trial (``ask`` + the define-by-run space function + ``tell``)
  on a resnet110 space, for in-memory, journal-file and SQLite Optuna storage, TPE as configured by
  ``make_sampler``.
* ``threads``: ``rank-search train`` of a dense resnet20 on the built-in data, idle and with one
  spinning process per CPU started by this script, interleaved ``--train-repeats`` times, for the
  default threads (the CPUs free at start) and for a fixed ``--threads`` of every CPU; medians,
  spread and the busy/idle ratio of each.

The machine this runs on may be shared: compare BEFORE and AFTER runs made the same way, and
read ratios rather than absolute seconds. CPU commands (a few minutes each part):

    python benchmarks/search_throughput.py --part throughput --trials 16 --epochs 2
    python benchmarks/search_throughput.py --part growth --growth-trials 200
    python benchmarks/search_throughput.py --part sampling
    python benchmarks/search_throughput.py --part threads --train-epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
REPO = Path(__file__).resolve().parents[1]


class RecordWatcher:
    """Polls ``DIR/trials/*.json``: when each record first appeared and first had a final status."""

    FINAL = ("completed", "stopped", "failed", "diverged", "interrupted")

    def __init__(self, out: Path, period_s: float = 0.02) -> None:
        self.folder, self.period_s = out / "trials", period_s
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.period_s):
            now = time.perf_counter()
            for path in self.folder.glob("*.json") if self.folder.is_dir() else ():
                self.started.setdefault(path.stem, now)
                if path.stem in self.ended:
                    continue
                try:
                    status = json.loads(path.read_text())["status"]
                except (OSError, ValueError, KeyError):
                    continue
                if status in self.FINAL:
                    self.ended[path.stem] = now

    def __enter__(self) -> RecordWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _study_overrides(trials: int, epochs: int, k: int, extra: list[str]) -> list[str]:
    return [
        "asha.enabled=false",
        "asha.grace_period=1",
        f"trials={trials}",
        f"epochs_per_trial={epochs}",
        f"resources.concurrency={k}",
        "resources.cpu=1",
        "resources.gpu=0",
        "train.device=cpu",
        *extra,
    ]


def timed_search(study_name: str, overrides: list[str], out: Path) -> dict[str, Any]:
    """Run one search in this process and time it (Ray started and shut down by ``run_search``)."""
    from rank_search.search.records import read_records
    from rank_search.search.runner import run_search
    from rank_search.search.study import load_study

    study = load_study(study_name, overrides)
    shutil.rmtree(out, ignore_errors=True)
    with RecordWatcher(out) as watch:
        start = time.perf_counter()
        outcome = run_search(study, out)
        end = time.perf_counter()
        time.sleep(0.05)
    records = read_records(out)
    training = {r.trial_id: sum(h.get("epoch_time_s") or 0.0 for h in r.history) for r in records}
    order = sorted(watch.started, key=watch.started.__getitem__)
    return {
        "status": outcome.status,
        "trials": len(records),
        "statuses": sorted({r.status for r in records}),
        "completed": sum(r.status == "completed" for r in records),
        "wall_s": end - start,
        "training_s": sum(training.values()),
        "startup_s": (watch.started[order[0]] - start) if order else float("nan"),
        "shutdown_s": end - max(watch.ended.values(), default=end),
        "starts": [watch.started[t] - start for t in order],
        "training_by_start": [training.get(t, 0.0) for t in order],
    }


def part_throughput(args: argparse.Namespace) -> dict[str, Any]:
    k = args.concurrency
    overrides = _study_overrides(args.trials, args.epochs, k, args.set)
    run = timed_search(args.study, overrides, Path(args.out) / "throughput")
    wall, training = run["wall_s"], run["training_s"]
    middle = wall - run["startup_s"] - run["shutdown_s"]
    per_trial = (middle - training / k) / max(1, run["trials"]) * k
    row = {
        "trials": run["trials"],
        "epochs": args.epochs,
        "concurrency": k,
        "status": run["status"],
        "statuses": run["statuses"],
        "wall_s": round(wall, 1),
        "training_s": round(training, 1),
        "overhead_share": round(1 - training / (k * wall), 3),
        "overhead_s": round(k * wall - training, 1),
        "startup_s": round(run["startup_s"], 1),
        "shutdown_s": round(run["shutdown_s"], 1),
        "per_trial_overhead_s": round(per_trial, 2),
    }
    print("throughput:", json.dumps(row), flush=True)
    return row


def part_growth(args: argparse.Namespace) -> dict[str, Any]:
    n = args.growth_trials
    extra = ["data_options.max_train_samples=64", "train.batch_size=64", *args.set]
    run = timed_search(args.study, _study_overrides(n, 1, 1, extra), Path(args.out) / "growth")
    starts, training = run["starts"], run["training_by_start"]
    per = [starts[i + 1] - starts[i] - training[i] for i in range(len(starts) - 1)]
    quarter = max(1, len(per) // 4)
    first, last = statistics.median(per[:quarter]), statistics.median(per[-quarter:])
    row = {
        "trials": run["trials"],
        "status": run["status"],
        "wall_s": round(run["wall_s"], 1),
        "startup_s": round(run["startup_s"], 1),
        "shutdown_s": round(run["shutdown_s"], 1),
        "median_training_s": round(statistics.median(training), 3),
        "per_trial_overhead_first_quarter_s": round(first, 3),
        "per_trial_overhead_last_quarter_s": round(last, 3),
        "last_over_first": round(last / first, 2),
    }
    print("growth:", json.dumps(row), flush=True)
    return row


def part_sampling(args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    from rank_search.search.runner import prepare
    from rank_search.search.searcher import SpaceFunction, make_sampler
    from rank_search.search.study import load_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(args.study, [f"model={args.sampling_model}"])
    tmp = Path(tempfile.mkdtemp(prefix="rank-search-sampling-"))
    plan = prepare(study, tmp)
    space_fn = SpaceFunction(plan.space, plan.budget, fill_up=True, cost=plan.cost)

    def storages() -> Any:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        yield "memory", None
        yield "journal", JournalStorage(JournalFileBackend(str(tmp / "optuna.journal")))
        try:  # what the search's driver uses (issue 11), where there is one
            from rank_search.search.runner import open_storage

            yield "driver_journal", open_storage(f"journal:{tmp / 'driver.journal'}", writer=True)
        except ImportError:
            pass
        yield "sqlite", optuna.storages.RDBStorage(f"sqlite:///{tmp / 'optuna.db'}")

    row: dict[str, Any] = {"model": args.sampling_model, "units": len(plan.space.units)}
    for name, storage in storages():
        sampler = make_sampler(
            study.sampler, seed=0, options=study.sampler_options, trials=args.sampling_trials
        )
        ot = optuna.create_study(storage=storage, study_name=name, sampler=sampler, direction="maximize")
        times = []
        for i in range(args.sampling_trials):
            begin = time.perf_counter()
            trial = ot.ask()
            space_fn(trial)
            ot.tell(trial, 0.5 + 0.001 * i)
            times.append(time.perf_counter() - begin)
        row[f"{name}_median_s"] = round(statistics.median(times), 3)
        row[f"{name}_last_s"] = round(times[-1], 3)
    shutil.rmtree(tmp, ignore_errors=True)
    print("sampling:", json.dumps(row), flush=True)
    return row


def _spin() -> None:  # pragma: no cover - runs in the load processes
    while True:
        pass


def _train_once(args: argparse.Namespace, out: Path, threads: int | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "rank_search", "train", "--model", "resnet20", "--data", "builtin"]
    command += [
        "--epochs",
        str(args.train_epochs),
        "--batch-size",
        "128",
        "-o",
        str(out),
        "--force",
        "--quiet",
    ]
    if threads is not None:
        command += ["--threads", str(threads)]
    begin = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - begin


def _busy_train(args: argparse.Namespace, out: Path, threads: int | None) -> float:
    """One training run while one spinning process per CPU loads the machine."""
    import multiprocessing

    load = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(os.cpu_count() or 1)]
    for process in load:
        process.start()
    try:
        return _train_once(args, out, threads)
    finally:
        for process in load:
            process.terminate()
            process.join()


def part_threads(args: argparse.Namespace) -> dict[str, Any]:
    """``rank-search train`` idle and busy, interleaved, for the default (free CPUs at start) and
    for a fixed thread count of every CPU; medians and spread over ``--train-repeats``."""
    out = Path(args.out) / "train"
    cpus = os.cpu_count() or 1
    variants: dict[str, int | None] = {"default": None}
    if args.train_fixed_threads:
        variants[f"threads={cpus}"] = cpus
    times: dict[str, dict[str, list[float]]] = {v: {"idle": [], "busy": []} for v in variants}
    for _ in range(args.train_repeats):
        for name, threads in variants.items():
            times[name]["idle"].append(_train_once(args, out, threads))
            times[name]["busy"].append(_busy_train(args, out, threads))
    rows: dict[str, Any] = {"epochs": args.train_epochs, "repeats": args.train_repeats}
    for name, pair in times.items():
        idle, busy = statistics.median(pair["idle"]), statistics.median(pair["busy"])
        rows[name] = {
            "idle_s": round(idle, 1),
            "busy_s": round(busy, 1),
            "idle_range_s": [round(min(pair["idle"]), 1), round(max(pair["idle"]), 1)],
            "busy_range_s": [round(min(pair["busy"]), 1), round(max(pair["busy"]), 1)],
            "busy_over_idle": round(busy / idle, 2),
        }
    print("threads:", json.dumps(rows), flush=True)
    return rows


PARTS = {
    "throughput": part_throughput,
    "growth": part_growth,
    "sampling": part_sampling,
    "threads": part_threads,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", nargs="+", choices=sorted(PARTS), default=list(PARTS))
    parser.add_argument("--study", default="quickstart")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="study override")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--growth-trials", type=int, default=200)
    parser.add_argument("--sampling-model", default="resnet110")
    parser.add_argument("--sampling-trials", type=int, default=15)
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--train-repeats", type=int, default=3, help="interleaved idle/busy pairs")
    parser.add_argument(
        "--no-train-fixed-threads",
        dest="train_fixed_threads",
        action="store_false",
        help="time only the default threads (for code without --threads)",
    )
    parser.add_argument("-o", "--out", default="runs/search-throughput")
    parser.add_argument("--label", default="", help="a name for this run in the JSON output")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"label": args.label, "cpus": os.cpu_count()}
    for part in args.part:
        report[part] = PARTS[part](args)
    path = Path(args.out) / f"search_throughput{'-' + args.label if args.label else ''}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

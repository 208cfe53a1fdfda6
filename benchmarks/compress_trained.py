"""Evidence: compressing a trained ResNet, where the per-layer allocation decides accuracy.

One command (resumable: finished pieces are read back):

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compress_trained.py \
        --weights ../shared/data/cifar-resnet-pretrained/resnet20-12fca82f.th \
        --data imagefolder:/path/to/cifar10-jpeg --out runs/compress-evidence

Per budget (fractions of dense MACs): the uniform, spectral-energy and measured-sensitivity
configs (``rank_search.compress``), then a search of warm trials (decompose, recalibrate BN,
fine-tune ``--trial-steps`` steps per epoch for ``--trial-epochs`` epochs, ASHA) started from
those three, exported by the search's selection rule. Every config, and the dense model, is then
fine-tuned with the same budget (``--epochs`` epochs, lr ``--lr`` cosine, one thread, ``--jobs``
runs at a time) for each seed, through ``rank-search train --init-from``. Reported per config:
test accuracy zero-shot (decomposed, trained BatchNorm statistics), after BN recalibration and
after fine-tuning; params; MACs; the CPU time each method took to reach its config. Writes
OUT/results.json and OUT/RESULTS.md (tables ready to paste).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rank_search._io import atomic_write_json, atomic_write_text
from rank_search.compress import CompressJob, allocate, resolve_target
from rank_search.config import load_rank_config
from rank_search.data import DataOptions, load_data
from rank_search.models import create_model
from rank_search.trained import calibration_batches, decompose_model, load_weights, recalibrate_bn

METHODS = ("uniform", "energy", "sensitivity")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--rename", default="linear=fc")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, default=Path("runs/compress-evidence"))
    p.add_argument("--budgets", type=float, nargs="+", default=[0.50, 0.28])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs of every config")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--trial-epochs", type=int, default=3)
    p.add_argument("--trial-steps", type=int, default=40)
    p.add_argument("--max-levels", type=int, default=8)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--max-train-samples", type=int, help="smoke runs only: a stratified subset")
    p.add_argument(
        "--report-only", action="store_true", help="tables from the runs that finished, whole seeds"
    )
    return p.parse_args()


def data_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"val_fraction": args.val_fraction, "workers": 2}
    if args.max_train_samples:
        options["max_train_samples"] = args.max_train_samples
    return options


def _rename(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split(",") if pair)


def job_for(args: argparse.Namespace, budget: float, out: Path) -> CompressJob:
    return CompressJob(
        weights=str(Path(args.weights).resolve()),
        model=args.model,
        budget=budget,
        data=args.data,
        out_dir=out,
        rename=_rename(args.rename),
        data_options=data_options(args),
        max_levels=args.max_levels,
        trials=args.trials,
        trial_epochs=args.trial_epochs,
        trial_steps=args.trial_steps,
        sensitivity_cache=args.out.resolve() / "sensitivity.json",  # one table for every budget
    )


def test_scores(config_path: Path, dense: Any, data: Any, bn_images: int = 2048) -> dict[str, float]:
    """Test accuracy of the decomposed model zero-shot and after BN recalibration."""
    model = copy.deepcopy(dense)
    decompose_model(model, load_rank_config(config_path).layers)
    zero = _test_accuracy(model, data)
    recalibrate_bn(model, calibration_batches(data, bn_images, 256, 0))
    return {"test_zero_shot": zero, "test_bn_recalibrated": _test_accuracy(model, data)}


def _test_accuracy(model: Any, data: Any) -> float:
    from rank_search.train.loop import evaluate

    acc, _ = evaluate(model, data, "test", batch_size=500)
    assert acc is not None
    return acc


def configs_for_budget(args: argparse.Namespace, budget: float, data: Any, dense: Any) -> dict[str, Any]:
    """The four methods' configs at ``budget`` (cached in OUT/b{budget}/configs.json)."""
    out = (args.out / f"b{budget:.2f}").resolve()
    cache = out / "configs.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    job = job_for(args, budget, out)
    space, budget_macs = resolve_target(job.model, job.space, data, job.budget)
    rows: dict[str, Any] = {}
    for method in METHODS:
        result = allocate(method, space, budget_macs, dense, data, job, out)
        rows[method] = {**result.row(), "cpu_s": result.seconds}  # one thread: wall = CPU time
    from rank_search.compress.workflow import _study
    from rank_search.search.runner import run_search

    start, wall = time.process_time(), time.perf_counter()
    outcome = run_search(
        _study(job, [Path(rows[m]["config"]) for m in ("energy", "sensitivity")]), out / "search"
    )
    wall = time.perf_counter() - wall
    if outcome.best_path is None:
        raise SystemExit(f"the search at {budget} exported no config: see {out / 'search'}")
    trial_cpu = sum(float(r.wall_time_s or 0.0) for r in outcome.records)
    searched = {
        "config": str(outcome.best_path),
        "wall_s": wall,
        "trial_cpu_s": trial_cpu,
        "driver_cpu_s": time.process_time() - start,
        "selection": outcome.selection,
        "tags": outcome.best.tags if outcome.best else None,
        "trial_val": (
            outcome.best.history[-1].get("val_accuracy") if outcome.best and outcome.best.history else None
        ),
    }
    cfg = load_rank_config(outcome.best_path) if outcome.best_path else None
    if cfg is not None:
        cost = cfg.compute_cost()
        searched.update(
            macs=cost.macs, macs_ratio=cost.macs / cost.dense_macs, params=cost.params, method="searched"
        )
    rows["searched"] = searched
    for row in rows.values():
        row.update(test_scores(Path(row["config"]), dense, data))
    atomic_write_json(cache, rows)
    return rows


def finetune(args: argparse.Namespace, config: str | None, run_dir: Path, seed: int) -> dict[str, Any]:
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    cmd = [sys.executable, "-m", "rank_search", "train"]
    cmd += [config] if config else ["--model", args.model, "--bn-images", "0"]
    cmd += [
        "--init-from",
        str(Path(args.weights).resolve()),
        "--data",
        args.data,
        "-o",
        str(run_dir),
        "--force",
    ]
    for pair in args.rename.split(","):
        cmd += ["--rename", pair]
    cmd += ["--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", str(args.batch_size)]
    cmd += ["--warmup-epochs", "0.1", "--label-smoothing", "0", "--weight-decay", "5e-4", "--seed", str(seed)]
    cmd += ["--val-fraction", str(args.val_fraction), "--threads", "1", "--device", "cpu", "--quiet"]
    cmd += ["--checkpoint-every", "0", "--workers", "1"]
    if args.max_train_samples:
        cmd += ["--max-train-samples", str(args.max_train_samples)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}.log"
    with open(log, "w") as fh:
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if code != 0 or not metrics.is_file():
        raise RuntimeError(f"fine-tune failed ({code}): see {log}")
    return json.loads(metrics.read_text())


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = load_data(args.data, DataOptions(**data_options(args)))
    dense = load_weights(
        create_model(args.model, num_classes=data.num_classes), args.weights, rename=_rename(args.rename)
    )
    dense_test = _test_accuracy(dense, data)
    budgets = {f"{b:.2f}": configs_for_budget(args, b, data, dense) for b in args.budgets}
    print(f"configs ready after {time.perf_counter() - started:.0f} s", flush=True)
    tasks = [("dense", None, None, s) for s in args.seeds]
    alias: dict[tuple[str, str], str] = {}  # a method whose config equals an earlier one's at that budget
    for b, rows in budgets.items():
        seen: dict[str, str] = {}
        for m in (*METHODS, "searched"):
            layers = json.dumps(load_rank_config(rows[m]["config"]).to_dict()["layers"], sort_keys=True)
            if layers in seen:
                alias[(b, m)] = seen[layers]
                continue
            seen[layers] = m
            tasks += [(b, m, rows[m]["config"], s) for s in args.seeds]

    tasks.sort(key=lambda task: task[3])  # seed by seed: a run cut short still has whole seeds

    def run(
        task: tuple[str, str | None, str | None, int],
    ) -> tuple[tuple[str, str | None, int], dict[str, Any]]:
        b, method, config, seed = task
        folder = (args.out / ("dense" if method is None else f"b{b}/{method}") / f"seed{seed}").resolve()
        if args.report_only:
            metrics = folder / "metrics.json"
            return (b, method, seed), json.loads(metrics.read_text()) if metrics.is_file() else {}
        return (b, method, seed), finetune(args, config, folder, seed)

    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(pool.map(run, tasks))
    args.seeds = [s for s in args.seeds if all(done[key] for key in done if key[2] == s)]  # whole seeds
    for (b, m), same in alias.items():  # identical config, same seeds: the same runs
        for s in args.seeds:
            done[(b, m, s)] = done[(b, same, s)]
    dense_ft = [done[("dense", None, s)]["test_accuracy"] for s in args.seeds]
    lines = [
        f"Dense {args.model} as loaded: test {100 * dense_test:.2f}%; "
        f"fine-tuned {args.epochs} epochs: {mean_sd(dense_ft)}",
        "",
        "| budget | method | MACs of dense | params | test zero-shot | after BN recal "
        "| fine-tuned (mean ± SD) | minus uniform, paired | CPU s to config |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    payload: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "dense_test_as_loaded": dense_test,
        "dense_finetuned": dense_ft,
        "budgets": {},
    }
    for b, rows in budgets.items():
        uniform = [done[(b, "uniform", s)]["test_accuracy"] for s in args.seeds]
        payload["budgets"][b] = {}
        for method in (*METHODS, "searched"):
            row = rows[method]
            accs = [done[(b, method, s)]["test_accuracy"] for s in args.seeds]
            diffs = [a - u for a, u in zip(accs, uniform, strict=True)]
            cpu = row.get("cpu_s") if method != "searched" else row["trial_cpu_s"] + row["driver_cpu_s"]
            same = alias.get((b, method))
            payload["budgets"][b][method] = {
                **row,
                "finetuned": accs,
                "minus_uniform": diffs,
                "same_config_as": same,
            }
            lines.append(
                f"| {b} | {method}{f' (= {same})' if same else ''} | {row['macs_ratio']:.3f} "
                f"| {row['params']:,} "
                f"| {100 * row['test_zero_shot']:.2f} | "
                f"{100 * row['test_bn_recalibrated']:.2f} | {mean_sd(accs)} | "
                f"{'-' if method == 'uniform' else mean_sd(diffs)} | {cpu:.0f} |"
            )
    payload["wall_s"] = time.perf_counter() - started
    atomic_write_json(args.out / "results.json", payload)
    atomic_write_text(args.out / "RESULTS.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"total {payload['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())

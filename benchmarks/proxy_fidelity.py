"""Proxy fidelity: does a search trial's score rank configs the way full training does?

One command (resumable: every finished training is kept in OUT/jobs/ and read back):

    PYTHONPATH=$PWD .venv/bin/python benchmarks/proxy_fidelity.py \
        --data imagefolder:/path/to/cifar10-jpeg --out runs/proxy-fidelity

At one budget (``--budget``, fraction of ResNet-20's dense MACs) it builds ``--configs`` diverse
Tucker-2 configs: the uniform one and per-layer configs drawn at random with ratios in
``[--min-ratio, 1]`` (the pre-issue-20 space, so rank bottlenecks occur) and projected onto the
budget the way the search does. Each is trained twice, with the CPU evidence profile's settings
(``benchmarks/evidence/profiles.py``, ``cpu``): as a search *trial* (6 epochs on a 10k-image
subset, 2k of them validation) and in *full* (12 epochs on a 20k-image subset, test split at the
end), seed ``--seed`` for both (the trials are paired: same split, data order, validation images).

Reported: Kendall's tau between full-training test accuracy and three trial scores: validation
accuracy, minus validation loss, and the paired score (net images won against the uniform trial
over the square root of the discordant images, :mod:`rank_search.outcomes`), at every trial epoch
(what a shorter trial would have said); and full-training accuracy against each config's smallest
rank ratio (the rank floor). Writes OUT/results.json and OUT/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rank_search._io import atomic_write_json, atomic_write_text  # noqa: E402
from rank_search.config import rank_config_from_dict  # noqa: E402
from rank_search.outcomes import compare, decode_outcomes, encode_outcomes  # noqa: E402

MODEL = "resnet20"


@dataclass(frozen=True)
class Recipe:
    """One training setting (a trial or a full training)."""

    name: str
    epochs: int
    max_train_samples: int
    val_fraction: float
    eval_test: bool


TRIAL = Recipe("trial", 6, 10000, 0.2, False)  # the cpu profile's search_sets
FULL = Recipe("full", 12, 20000, 0.1, True)  # the cpu profile's full training


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="builtin", help="data SPEC (CIFAR-10 for evidence)")
    p.add_argument("--out", type=Path, default=Path("runs/proxy-fidelity"))
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--configs", type=int, default=12, help="configs (the uniform one included), >= 3")
    p.add_argument("--min-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="builtin data, tiny recipes (not evidence)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if args.configs < 3:
        p.error("--configs must be >= 3")
    return args


# --- configs ------------------------------------------------------------------------------------


def make_configs(
    count: int, budget: float, min_ratio: float, seed: int, input_size: tuple[int, int, int]
) -> dict[str, dict[str, Any]]:
    """``uniform`` and ``count - 1`` random per-layer configs projected onto the budget."""
    from rank_search.convert import list_factorizable
    from rank_search.models import create_model
    from rank_search.search.budget import project, uniform_sample
    from rank_search.search.space import Sample, UnitChoice, parse_space, resolve_space

    space = parse_space(
        {
            "models": [MODEL],
            "layers": [
                {"match": "layer*.*.conv*", "formats": ["tucker2"], "ratio": [min_ratio, 1.0], "round_to": 1}
            ],
            "regularizer": {"kinds": ["dso"], "weight": [1e-3, 1e-3]},
        },
        "<proxy-fidelity space>",
    )
    infos = list_factorizable(create_model(MODEL), input_size)
    resolved = resolve_space(space, MODEL, infos, input_size=input_size)
    target = math.floor(budget * resolved.dense_macs)
    uniform = uniform_sample(resolved, target)
    configs = {"uniform": resolved.rank_config(uniform).to_dict()}
    rng = np.random.default_rng(seed)
    for index in range(1, count):
        units = {}
        for unit in resolved.units:
            lo, hi = unit.value_bounds
            units[unit.key] = UnitChoice("tucker2", float(rng.uniform(lo, hi)))
        sample = Sample(units, uniform.regularizer, dict(uniform.train))
        projected = project(resolved, sample, target, fill_up=True).sample
        configs[f"random{index:02d}"] = resolved.rank_config(projected).to_dict()
    return configs


def min_ratio_of(config: dict[str, Any], input_size: tuple[int, int, int]) -> float:
    """The smallest rank / full rank over the config's Tucker-2 layers."""
    from rank_search.convert import list_factorizable
    from rank_search.models import create_model

    infos = list_factorizable(create_model(MODEL), input_size)
    full = {i.name: i.full_ranks["tucker2"] for i in infos if "tucker2" in i.full_ranks}
    ratios = []
    for name, spec in config["layers"].items():
        if spec.get("format") == "tucker2":
            ratios += [spec["rank_in"] / full[name]["rank_in"], spec["rank_out"] / full[name]["rank_out"]]
    return min(ratios) if ratios else 1.0


# --- one training (a worker process) -----------------------------------------------------------


def train_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one config with one recipe in this process (one thread); JSON-ready result."""
    import torch

    from rank_search.data import DataOptions, load_data
    from rank_search.train import TrainConfig, fit

    torch.set_num_threads(1)
    recipe = Recipe(**job["recipe"])
    options = DataOptions(
        val_fraction=recipe.val_fraction,
        max_train_samples=recipe.max_train_samples,
        image_size=job["image_size"],
        workers=1,
    )
    data = load_data(job["data"], options)
    train = TrainConfig(
        epochs=recipe.epochs,
        batch_size=job["batch_size"],
        lr=job["lr"],
        warmup_epochs=0.5,
        seed=job["seed"],
        device="cpu",
        eval_test=recipe.eval_test,
    )
    result = fit(rank_config_from_dict(job["config"]), data, train)
    last = result.history[-1]
    return {
        "name": job["name"],
        "recipe": recipe.name,
        "status": result.status,
        "val_accuracy": result.val_accuracy,
        "test_accuracy": result.test_accuracy,
        "history": [
            {"epoch": s.epoch, "val_accuracy": s.val_accuracy, "val_loss": s.val_loss} for s in result.history
        ],
        "val_outcomes": None if last.val_correct is None else encode_outcomes(last.val_correct),
        "macs": result.macs,
        "dense_macs": result.dense_macs,
        "wall_time_s": result.wall_time_s,
    }


# --- statistics ----------------------------------------------------------------------------------


def kendall(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def tau_by_epoch(runs: list[dict[str, Any]], target: list[float]) -> dict[int, float]:
    """Kendall tau of the runs' val accuracy after each epoch against ``target``."""
    epochs = range(1, len(runs[0]["history"]) + 1)
    return {e: kendall([r["history"][e - 1]["val_accuracy"] for r in runs], target) for e in epochs}


def paired_scores(trials: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each trial's paired z against the uniform trial (0 for the uniform one)."""
    base = decode_outcomes(trials["uniform"]["val_outcomes"])
    out = {}
    for name, row in trials.items():
        mine = decode_outcomes(row["val_outcomes"])
        out[name] = 0.0 if base is None or mine is None else compare(mine, base).z
    return out


def summarize(
    configs: dict[str, dict[str, Any]],
    jobs: dict[tuple[str, str], dict[str, Any]],
    input_size: tuple[int, int, int],
) -> dict[str, Any]:
    names = [n for n in configs if (n, "trial") in jobs and (n, "full") in jobs]
    trials = {n: jobs[(n, "trial")] for n in names}
    full = {n: float(jobs[(n, "full")]["test_accuracy"]) for n in names}
    paired = paired_scores(trials)
    rows = []
    for n in names:
        rows.append({
            "config": n,
            "macs": trials[n]["macs"],
            "min_ratio": round(min_ratio_of(configs[n], input_size), 4),
            "trial_val_accuracy": trials[n]["val_accuracy"],
            "trial_val_loss": trials[n]["history"][-1]["val_loss"],
            "trial_paired_z": round(paired[n], 3),
            "full_test_accuracy": full[n],
        })  # fmt: skip
    target = [full[n] for n in names]
    taus: dict[str, Any] = {}
    if len(names) >= 3:
        taus["val_accuracy"] = kendall([r["trial_val_accuracy"] for r in rows], target)
        taus["neg_val_loss"] = kendall([-r["trial_val_loss"] for r in rows], target)
        taus["paired_z"] = kendall([r["trial_paired_z"] for r in rows], target)
        taus["val_accuracy_by_epoch"] = tau_by_epoch([trials[n] for n in names], target)
        taus["min_ratio"] = kendall([r["min_ratio"] for r in rows], target)
        # the ceiling set by the validation images: the full run's own val accuracy (same 2k-image
        # size as a trial's) after each epoch, against its test accuracy on the whole test split
        taus["full_val_accuracy_by_epoch"] = tau_by_epoch([jobs[(n, "full")] for n in names], target)
        taus["null_sd"] = math.sqrt(2 * (2 * len(names) + 5) / (9 * len(names) * (len(names) - 1)))
    return {"rows": rows, "kendall_tau": taus, "configs": len(names)}


def report(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "Command: `PYTHONPATH=$PWD .venv/bin/python benchmarks/proxy_fidelity.py "
        + ("--smoke" if args.smoke else f"--data {args.data}")
        + f" --out {args.out}`"
        f" (budget {args.budget}, {args.configs} configs, min ratio {args.min_ratio}, seed {args.seed},"
        f" image size {args.image_size}).",
        "",
        f"Trial: {TRIAL.epochs} epochs on {TRIAL.max_train_samples} images"
        f" (val fraction {TRIAL.val_fraction}); full: {FULL.epochs} epochs on"
        f" {FULL.max_train_samples} images (val fraction {FULL.val_fraction}), test split.",
        "",
        "| config | MACs | min ratio | trial val acc | trial val loss | trial paired z | full test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(summary["rows"], key=lambda r: -r["full_test_accuracy"]):
        cells = [
            r["config"],
            f"{r['macs'] / 1e6:.2f}M",
            f"{r['min_ratio']:.3f}",
            f"{100 * r['trial_val_accuracy']:.2f}",
            f"{r['trial_val_loss']:.4f}",
            f"{r['trial_paired_z']:+.2f}",
            f"{100 * r['full_test_accuracy']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    taus = summary["kendall_tau"]
    if taus:
        lines += [
            "",
            f"Kendall tau against full-training test accuracy ({summary['configs']} configs): "
            f"trial val accuracy {taus['val_accuracy']:+.3f}, minus val loss {taus['neg_val_loss']:+.3f}, "
            f"paired z {taus['paired_z']:+.3f}; smallest rank ratio {taus['min_ratio']:+.3f}.",
            "",
            "By trial length (val accuracy after epoch e): "
            + ", ".join(f"{e}: {t:+.3f}" for e, t in taus["val_accuracy_by_epoch"].items()),
            "",
            "Full run's own val accuracy after epoch e (the ceiling of a score on this many"
            " validation images): "
            + ", ".join(f"{e}: {t:+.3f}" for e, t in taus["full_val_accuracy_by_epoch"].items()),
            "",
            f"Standard deviation of tau between unrelated rankings of {summary['configs']} configs:"
            f" {taus['null_sd']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global TRIAL, FULL
    batch, lr = 128, 0.1
    if args.smoke:
        args.data, args.image_size, batch, lr = "builtin", None, 64, 0.05
        TRIAL = replace(TRIAL, epochs=2, max_train_samples=600)
        FULL = replace(FULL, epochs=3, max_train_samples=900)
    size = args.image_size or (16 if args.data == "builtin" else 32)
    input_size = (3, size, size)
    out = args.out
    (out / "jobs").mkdir(parents=True, exist_ok=True)
    configs_path = out / "configs.json"
    if configs_path.is_file():
        configs = json.loads(configs_path.read_text())
    else:
        configs = make_configs(args.configs, args.budget, args.min_ratio, args.seed, input_size)
        atomic_write_json(configs_path, configs)
    jobs: dict[tuple[str, str], dict[str, Any]] = {}
    todo = []
    for recipe in (TRIAL, FULL):
        for name, config in configs.items():
            path = out / "jobs" / f"{name}-{recipe.name}.json"
            if path.is_file():
                jobs[(name, recipe.name)] = json.loads(path.read_text())
            elif not args.report_only:
                todo.append({
                    "name": name, "recipe": asdict(recipe), "config": config, "data": args.data,
                    "image_size": args.image_size, "batch_size": batch, "lr": lr, "seed": args.seed,
                })  # fmt: skip
    if todo:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            for future in as_completed([pool.submit(train_one, job) for job in todo]):
                result = future.result()
                atomic_write_json(out / "jobs" / f"{result['name']}-{result['recipe']}.json", result)
                jobs[(result["name"], result["recipe"])] = result
                print(
                    f"{result['name']:>9} {result['recipe']:>5}: val {result['val_accuracy']:.4f} "
                    f"test {result['test_accuracy'] if result['test_accuracy'] is not None else '-'} "
                    f"({result['wall_time_s']:.0f} s)",
                    flush=True,
                )
    summary = summarize(configs, jobs, input_size)
    atomic_write_json(
        out / "results.json",
        {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, **summary},
    )
    text = report(summary, args)
    atomic_write_text(out / "RESULTS.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

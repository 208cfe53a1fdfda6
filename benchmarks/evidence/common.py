"""Shared helpers of the evidence experiments (``benchmarks/evidence/exp*.py``).

Everything goes through the package's public APIs: :func:`rank_search.search.study.load_study`
and :func:`rank_search.search.runner.run_search` (or the ``rank-search search`` CLI in a
subprocess), :func:`rank_search.analysis.export.export_best`,
:func:`rank_search.search.budget.uniform_sample` and :func:`rank_search.train.run.run_training`.

Every unit of work is resumable, so a GPU session cut off by a time limit continues where it
stopped when the same command is run again with the same ``--out``:

* a search folder whose ``search.json`` says ``finished`` is reused; ``interrupted`` is resumed;
* a training run folder holding ``metrics.json`` is read back; one holding only
  ``checkpoint.pt`` is resumed (checkpoints every :data:`CHECKPOINT_EVERY` epochs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiles import PROFILES

from rank_search._io import atomic_write_json, atomic_write_text
from rank_search.config import RankConfig, save_rank_config

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "studies"
CHECKPOINT_EVERY = 10  # the GPU profile's; run_all.py uses the profile's own
MACS_TOLERANCE = 0.01  # the uniform baseline's MACs are within 1% of the target


# --- command line -------------------------------------------------------------------------------


def base_parser(description: str | None, exp: str) -> argparse.ArgumentParser:
    """The flags every experiment takes (``--profile --data --out --epochs --seeds`` and friends).

    Flags left unset take the value of ``--profile`` (:mod:`profiles`); see :func:`apply_profile`.
    """
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="gpu", help="scale (profiles.py)")
    p.add_argument("--data", help="data SPEC (see README; default: the profile's)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "evidence" / exp, help="results folder")
    p.add_argument("--epochs", type=int, help="full-training epochs")
    p.add_argument("--seeds", type=int, nargs="+", help="full-training seeds")
    p.add_argument("--batch-size", type=int, help="full-training batch size")
    p.add_argument("--lr", type=float, help="full-training peak learning rate")
    p.add_argument("--device", help="full training: auto | cpu | cuda")
    p.add_argument("--speedup", default="none", choices=("none", "compile", "cudagraphs"))
    p.add_argument("--val-fraction", type=float, help="full training's held-out split")
    p.add_argument("--max-train-samples", type=int, help="full training on a stratified subset")
    p.add_argument("--image-size", type=int, help="imagefolder decode size")
    p.add_argument("--smoke", action="store_true", help="same as --profile smoke (digits, minutes)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress output")
    return p


def apply_profile(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every unset flag of ``args`` from its profile; sets ``args.study_sets`` (the profile's
    study overrides) and ``args.smoke``."""
    if args.smoke:
        args.profile = "smoke"
    profile = PROFILES[args.profile]
    args.smoke = profile.name == "smoke"
    defaults = {
        "data": profile.data,
        "epochs": profile.epochs,
        "seeds": list(profile.seeds),
        "batch_size": profile.batch_size,
        "lr": profile.lr,
        "device": profile.device,
        "val_fraction": profile.val_fraction,
        "max_train_samples": profile.max_train_samples,
        "image_size": profile.image_size,
    }
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.study_sets = list(profile.search_sets)
    args.quiet = args.quiet or args.smoke
    return args


# --- searches -----------------------------------------------------------------------------------


def search_status(out_dir: Path) -> str | None:
    """``finished`` / ``interrupted`` / ``running`` from ``search.json``, or None if no search."""
    manifest = out_dir / "search.json"
    if not manifest.exists():
        return None
    return str(json.loads(manifest.read_text(encoding="utf-8")).get("status"))


def run_study(study: str | Path, out_dir: Path, overrides: Sequence[str] = (), *, cli: bool = False) -> Path:
    """Run (or resume, or reuse when finished) a study into ``out_dir``; returns ``out_dir``.

    ``cli=True`` runs ``python -m rank_search search`` in a subprocess (its own Ray session);
    otherwise :func:`rank_search.search.runner.run_search` in this process.
    """
    status = search_status(out_dir)
    if status == "finished":
        print(f"reusing finished search {out_dir}")
        return out_dir
    resume = status is not None
    if cli:
        cmd = [sys.executable, "-m", "rank_search", "search", str(study), "-o", str(out_dir)]
        cmd += [arg for o in overrides for arg in ("--set", o)] + (["--resume"] if resume else [])
        subprocess.run(cmd, check=True)
    else:
        from rank_search.search.runner import run_search
        from rank_search.search.study import load_study

        run_search(load_study(study, list(overrides)), out_dir, resume=resume)
    return out_dir


def export_at_budget(search_dir: Path, fraction: float, output: Path) -> Path:
    """Export the best fully-trained config of ``search_dir`` within ``fraction`` of dense MACs
    to ``output`` (``rank-search export``); returns the file."""
    from rank_search.analysis.export import export_best
    from rank_search.analysis.results import load_search

    results = load_search(search_dir)
    dense = results.dense_macs
    if not dense:
        raise RuntimeError(f"{search_dir}: no dense MACs in the search manifest")
    (path,) = export_best(results, fraction * dense, output)
    return path


def trial_records(search_dir: Path) -> list[Any]:
    """The search's trial records (:class:`rank_search.search.records.TrialRecord`)."""
    from rank_search.search.records import read_records

    return read_records(search_dir)


def search_resources(search_dir: Path) -> dict[str, float]:
    """Per-trial ``{cpu, gpu}`` of a search, from its resolved ``study.yaml``."""
    import yaml

    study = yaml.safe_load((search_dir / "study.yaml").read_text(encoding="utf-8"))
    res = study.get("resources") or {}
    return {"cpu": float(res.get("cpu") or 0.0), "gpu": float(res.get("gpu") or 0.0)}


@dataclass
class SearchCost:
    """Device time a search's trials used: ``hours`` of ``unit`` (GPU, or CPU cores when gpu=0)."""

    unit: str
    hours: float
    trial_wall_s: float
    trials: int
    epochs: int

    @property
    def seconds_per_epoch(self) -> float:
        """Device seconds per trained epoch, over all trials."""
        return 3600.0 * self.hours / self.epochs if self.epochs else float("nan")


def search_cost(search_dir: Path) -> SearchCost:
    """Sum ``wall_time_s`` x the trial's GPU share (CPU cores if it asked for no GPU) over all trials."""
    records = trial_records(search_dir)
    res = search_resources(search_dir)
    unit, share = ("GPU", res["gpu"]) if res["gpu"] > 0 else ("CPU", res["cpu"])
    wall = sum(r.wall_time_s for r in records)
    epochs = sum(r.epochs for r in records)
    return SearchCost(unit, wall * share / 3600.0, wall, len(records), epochs)


def best_val_accuracy(search_dir: Path, fraction: float) -> tuple[float | None, str | None]:
    """Best final validation accuracy of a fully trained trial within ``fraction`` of dense MACs."""
    from rank_search.analysis.pareto import select_at_budget
    from rank_search.analysis.results import load_search
    from rank_search.errors import BudgetError

    records = trial_records(search_dir)
    if not records:
        return None, None
    try:
        row = select_at_budget(load_search(search_dir).trials, fraction * records[0].dense_macs).iloc[0]
    except BudgetError:
        return None, None
    return float(row["val_accuracy"]), str(row["trial_id"])


def search_facts(search_dir: Path, fraction: float) -> dict[str, Any]:
    """What a results row says about the search behind a config: its cost and its best trial."""
    cost = search_cost(search_dir)
    val, trial = best_val_accuracy(search_dir, fraction)
    return {
        "search_dir": str(search_dir),
        "search_trials": cost.trials,
        "search_hours": cost.hours,
        "search_unit": cost.unit,
        "search_best_val": val,
        "search_best_trial": trial,
    }


# --- the uniform-ratio baseline -----------------------------------------------------------------


def uniform_at_macs(
    study: str | Path, model: str, num_classes: int, input_size: tuple[int, int, int], target_macs: int
) -> RankConfig:
    """The uniform-ratio Tucker-2 config of the study's space at ``target_macs`` (within 1%).

    The search's own uniform starting point (:func:`rank_search.search.budget.uniform_sample`):
    one rank ratio in every unit of the space, the largest that fits, then the rounding gap
    filled one rank level at a time. Raises :class:`RuntimeError` beyond :data:`MACS_TOLERANCE`.
    """
    from rank_search.convert import list_factorizable
    from rank_search.models import create_model
    from rank_search.search.budget import uniform_sample
    from rank_search.search.space import load_space, resolve_space
    from rank_search.search.study import load_study

    infos = list_factorizable(create_model(model, num_classes=num_classes), input_size)
    space = resolve_space(
        load_space(load_study(study).space_path()),
        model,
        infos,
        num_classes=num_classes,
        input_size=input_size,
    )
    sample = uniform_sample(space, target_macs)
    gap = abs(space.macs(sample) - target_macs) / target_macs
    if gap > MACS_TOLERANCE:
        raise RuntimeError(f"uniform Tucker-2 {model}: closest MACs are {gap:.1%} from {target_macs:,}")
    provenance = {"source": "uniform ratio (search starting point)", "target_macs": target_macs}
    return space.rank_config(sample, provenance).with_cost()


# --- full training ------------------------------------------------------------------------------


@dataclass
class Arm:
    """One thing to train in full: a rank-config file or a dense registry model, under a label."""

    label: str
    config_path: Path | None = None
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def train_job(arm: Arm, run_dir: Path, seed: int, args: argparse.Namespace) -> Any:
    """The :class:`rank_search.train.run.TrainJob` of ``arm`` for one seed (resumes a checkpoint)."""
    from rank_search.data import DataOptions
    from rank_search.train import TrainConfig
    from rank_search.train.run import TrainJob

    train = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        device=args.device,
        speedup=args.speedup,
        eval_test=True,
        checkpoint_every=CHECKPOINT_EVERY,
    )
    options = DataOptions(
        val_fraction=args.val_fraction,
        max_train_samples=args.max_train_samples,
        image_size=args.image_size,
    )
    return TrainJob(
        run_dir=run_dir,
        train=train,
        data_spec=args.data,
        data_options=options,
        config_path=arm.config_path,
        model=arm.model,
        resume=(run_dir / "checkpoint.pt").exists(),
        progress=not args.quiet,
    )


def train_seeds(arm: Arm, root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train ``arm`` once per seed under ``root/<label>/seed<N>``; returns each ``metrics.json``."""
    from rank_search.train.run import run_training

    out = []
    for seed in args.seeds:
        run_dir = root / arm.label / f"seed{seed}"
        metrics = run_dir / "metrics.json"
        if not metrics.exists():
            print(f"training {arm.label} seed {seed} ({args.epochs} epochs) -> {run_dir}", flush=True)
            run_training(train_job(arm, run_dir, seed, args))
        else:
            print(f"reusing {metrics}")
        out.append(json.loads(metrics.read_text(encoding="utf-8")))
    return out


# --- tables and results -------------------------------------------------------------------------


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and spread (sample standard deviation; 0 for one value) of ``values``."""
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def device_label(metrics: Sequence[dict[str, Any]]) -> str:
    """``GPU`` if any run trained on CUDA, else ``CPU``."""
    return "GPU" if any(str(m.get("device", "")).startswith("cuda") for m in metrics) else "CPU"


def summarize_arm(arm: Arm, metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One results row: cost, test accuracy mean and spread over seeds, device hours."""
    accs = [100.0 * m["test_accuracy"] for m in metrics if m.get("test_accuracy") is not None]
    mean, spread = mean_spread(accs)
    first = metrics[0]
    return {
        "config": arm.label,
        "model": first["model"],
        "macs": first["macs"],
        "macs_ratio": first["macs_ratio"],
        "params": first["params"],
        "test_acc_mean": mean,
        "test_acc_spread": spread,
        "test_accs": accs,
        "seeds": [m["seed"] for m in metrics],
        "epochs": first["epochs_planned"],
        "device": device_label(metrics),
        "train_hours": sum(m["wall_time_s"] for m in metrics) / 3600.0,
        "statuses": [m["status"] for m in metrics],
        **arm.extra,
    }


def fmt(value: Any, spec: str = "") -> str:
    """``value`` formatted with ``spec``, or ``-`` for None/NaN."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec)


def training_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of full-training rows (see :func:`summarize_arm`)."""
    lines = [
        "| config | MACs | of dense | params | test acc % (mean ± sd) | seeds | device time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['macs'] / 1e6:.2f}M | {fmt(r['macs_ratio'], '.3f')} | "
            f"{r['params'] / 1e3:.1f}k | {fmt(r['test_acc_mean'], '.2f')} "
            f"± {fmt(r['test_acc_spread'], '.2f')} | {len(r['seeds'])} | "
            f"{r['device']} {r['train_hours'] * 60:.2f} min |"
        )
    return "\n".join(lines)


def write_results(out: Path, name: str, payload: dict[str, Any], table: str) -> None:
    """Atomically write ``out/<name>.json`` and ``out/<name>.md`` (the table plus a header line)."""
    atomic_write_json(out / f"{name}.json", payload)
    header = f"# {name}\n\n{payload.get('summary', '')}\n\n"
    atomic_write_text(out / f"{name}.md", header + table + "\n")
    print(f"\n{table}\n\nwrote {out / (name + '.json')} and {out / (name + '.md')}")


def run_info(args: argparse.Namespace, started: float) -> dict[str, Any]:
    """Settings and wall time of this invocation, for the results JSON."""
    import torch

    return {
        "profile": args.profile,
        "data": args.data,
        "image_size": args.image_size,
        "max_train_samples": args.max_train_samples,
        "val_fraction": args.val_fraction,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "epochs": args.epochs,
        "seeds": list(args.seeds),
        "smoke": bool(args.smoke),
        "device": args.device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_version": torch.__version__,
        "wall_s": round(time.time() - started, 1),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def save_config(config: RankConfig, path: Path) -> Path:
    """Write a rank config atomically (cost recomputed)."""
    return save_rank_config(config, path)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds."""
    start = time.time()
    return fn(), time.time() - start

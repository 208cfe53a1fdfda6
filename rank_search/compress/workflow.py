"""The compress workflow: a trained model in, a smaller trained model out.

1. Load the trained weights and the data (with the checkpoint's input normalization).
2. The allocation baselines at the budget, each a point of the search space
   (:mod:`.allocate`): uniform, spectral energy, measured sensitivity; each scored zero-shot and
   after BatchNorm recalibration on the validation split, and written as a rank config.
3. Optionally the search: warm trials (decompose, recalibrate, fine-tune ``trial_steps`` steps per
   epoch, validate), ASHA on those epochs, the baselines enqueued as starting points; its
   selection rule picks the config.
4. Fine-tune the chosen config (``rank-search train --init-from``) and report every method side
   by side (``compress.json``, ``allocations.png``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from .._io import atomic_write_json, atomic_write_text
from ..config import RankConfig, save_rank_config
from ..errors import ConfigError
from .allocate import ALLOCATIONS, choose, energy_scores, knapsack, unit_options

if TYPE_CHECKING:
    from ..data import Dataset
    from ..search.space import ResolvedSpace, Sample

__all__ = ["AllocationResult", "CompressJob", "allocate", "resolve_target", "run_compress"]

REPORT = "compress.json"


@dataclass(frozen=True)
class CompressJob:
    """Everything ``rank-search compress`` needs (the CLI flags, resolved)."""

    weights: str
    model: str
    budget: float  # fraction of the dense MACs (<= 1) or absolute MACs
    data: str
    out_dir: Path
    rename: dict[str, str] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    space: str = "cifar-resnet"
    methods: tuple[str, ...] = ALLOCATIONS
    max_levels: int = 12
    bn_images: int = 2048
    sensitivity_val_images: int = 1000
    sensitivity_bn_images: int = 512
    trials: int = 0  # 0: no search, the best baseline (by validation after BN recalibration) is chosen
    trial_epochs: int = 3
    trial_steps: int = 40
    finetune: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields of the final fine-tune
    seed: int = 0
    sensitivity_cache: Path | None = None  # default OUT/sensitivity.json; share it across budgets
    onnx: bool = False  # export the fine-tuned model to OUT/model.onnx (needs the onnx extra)


@dataclass
class AllocationResult:
    """One method's config and how it scores before any fine-tuning."""

    method: str
    config: RankConfig
    path: Path
    seconds: float
    zero_shot: float
    bn_recalibrated: float

    def row(self) -> dict[str, Any]:
        cost = self.config.compute_cost()
        return {
            "method": self.method,
            "config": str(self.path),
            "macs": cost.macs,
            "macs_ratio": cost.macs / cost.dense_macs,
            "params": cost.params,
            "seconds_to_config": self.seconds,
            "val_zero_shot": self.zero_shot,
            "val_bn_recalibrated": self.bn_recalibrated,
        }


def resolve_target(model: str, space_name: str, data: Dataset, budget: float) -> tuple[ResolvedSpace, int]:
    """The search space resolved for ``model`` at the data's input size, and the budget in MACs."""
    from ..convert import layer_infos
    from ..search.budget import check_budget, parse_budget
    from ..search.space import load_space, resolve_space
    from ..search.study import _locate

    size = (int(data.input_size[0]), int(data.input_size[1]), int(data.input_size[2]))
    infos = list(layer_infos(model, data.num_classes, size).values())
    path = _locate(space_name, "<compress>", "spaces", key="space")
    space = resolve_space(load_space(path), model, infos, num_classes=data.num_classes, input_size=size)
    budget_macs = parse_budget(budget).resolve(space.dense_macs)
    check_budget(space, budget_macs)
    return space, budget_macs


def _evaluate(config: RankConfig, dense: nn.Module, data: Dataset, job: CompressJob) -> tuple[float, float]:
    import copy

    from ..trained import calibration_batches, decompose_model, recalibrate_bn
    from .sensitivity import subset_accuracy

    images = data.split_size("val")
    model = copy.deepcopy(dense)
    decompose_model(model, config.layers)
    zero_shot = subset_accuracy(model, data, images)
    recalibrate_bn(model, calibration_batches(data, job.bn_images, 256, job.seed))
    return zero_shot, subset_accuracy(model, data, images)


def _sample(
    method: str,
    space: ResolvedSpace,
    budget_macs: int,
    dense: nn.Module,
    data: Dataset,
    job: CompressJob,
    out: Path,
) -> tuple[Sample, float]:
    """The method's sample, and the seconds a cached measurement took when it was made."""
    from ..search.budget import uniform_sample
    from .sensitivity import file_digest, measure_sensitivity

    base = uniform_sample(space, budget_macs)
    if method == "uniform":
        return base, 0.0
    options = unit_options(space, job.max_levels)
    headroom = budget_macs - space.dense_macs
    if method == "energy":
        weights = {
            n: m.weight for n, m in dense.named_modules() if isinstance(getattr(m, "weight", None), Tensor)
        }
        return choose(space, knapsack(options, energy_scores(space, options, weights), headroom), base), 0.0
    key = {
        "weights": file_digest(job.weights),
        "model": job.model,
        "data": job.data,
        "data_options": job.data_options,
    }
    table = measure_sensitivity(
        space, options, dense, data,
        val_images=job.sensitivity_val_images, bn_images=job.sensitivity_bn_images, seed=job.seed,
        cache=job.sensitivity_cache or out / "sensitivity.json", key=key,
    )  # fmt: skip
    return choose(
        space, knapsack(options, table.accuracy, headroom), base
    ), table.seconds if table.cached else 0.0


def allocate(
    method: str,
    space: ResolvedSpace,
    budget_macs: int,
    dense: nn.Module,
    data: Dataset,
    job: CompressJob,
    out: Path,
) -> AllocationResult:
    """One baseline's config, written to ``out/allocations/METHOD.json`` and scored."""
    if method not in ALLOCATIONS:
        raise ConfigError(
            f"unknown allocation {method!r}; expected one of {list(ALLOCATIONS)}", key="methods"
        )
    start = time.perf_counter()
    sample, cached_seconds = _sample(method, space, budget_macs, dense, data, job, out)
    provenance = {"source": "rank-search compress", "allocation": method, "weights": job.weights}
    config = space.rank_config(sample, provenance).with_cost()
    seconds = time.perf_counter() - start + cached_seconds
    path = save_rank_config(config, out / "allocations" / f"{method}.json")
    zero_shot, recalibrated = _evaluate(config, dense, data, job)
    return AllocationResult(method, config, path, seconds, zero_shot, recalibrated)


def _study(job: CompressJob, configs: list[Path]) -> Any:
    from ..search.study import parse_study

    data = {
        "name": "compress",
        "model": job.model,
        "data": job.data,
        "data_options": job.data_options,
        "space": job.space,
        "budget": job.budget,
        "mode": "at_budget",
        "trials": job.trials,
        "epochs_per_trial": job.trial_epochs,
        "asha": {"enabled": job.trial_epochs > 1, "grace_period": 1, "reduction_factor": 3},
        "resources": {"cpu": 1, "gpu": 0},
        "seed": job.seed,
        "train": {
            "epoch_steps": job.trial_steps,
            "lr": 0.01,
            "warmup_epochs": 0.0,
            "label_smoothing": 0.0,
            "device": "cpu",
            "batch_size": 128,
        },
        "init": {"from": "trained", "weights": job.weights, "rename": job.rename, "bn_images": job.bn_images},
        "starting_points": {"uniform": True, "configs": [str(p) for p in configs]},
    }
    return parse_study(data, source=str(job.out_dir / "study.yaml"))


def run_compress(job: CompressJob, say: Any = print) -> dict[str, Any]:
    """Run the workflow (module docstring); returns the report also written to ``compress.json``."""
    from ..data import DataOptions, load_data
    from ..models import create_model
    from ..trained import load_weights

    out = job.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(job.data, DataOptions(**job.data_options))
    space, budget_macs = resolve_target(job.model, job.space, data, job.budget)
    dense = load_weights(
        create_model(job.model, num_classes=data.num_classes), job.weights, rename=job.rename
    )
    say(f"budget: {budget_macs:,} MACs ({budget_macs / space.dense_macs:.3f} of dense {space.dense_macs:,})")
    results = []
    for method in job.methods:
        result = allocate(method, space, budget_macs, dense, data, job, out)
        results.append(result)
        say(
            f"{method:>11}: {result.config.compute_cost().macs / space.dense_macs:.3f} of dense MACs, "
            f"val zero-shot {100 * result.zero_shot:.2f}%, after BN recalibration "
            f"{100 * result.bn_recalibrated:.2f}% ({result.seconds:.1f} s)"
        )
    report: dict[str, Any] = {
        "weights": job.weights,
        "model": job.model,
        "budget_macs": budget_macs,
        "dense_macs": space.dense_macs,
        "job": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(job).items()},
        "allocations": [r.row() for r in results],
    }
    chosen = max(results, key=lambda r: r.bn_recalibrated).path
    report["chosen_by"] = "best baseline after BN recalibration (no search)"
    if job.trials > 0:
        from ..search.runner import run_search

        start = time.perf_counter()
        outcome = run_search(_study(job, [r.path for r in results if r.method != "uniform"]), out / "search")
        report["search"] = {
            "status": outcome.status,
            "seconds": time.perf_counter() - start,
            "best": str(outcome.best_path),
            "selection": outcome.selection,
        }
        if outcome.best_path is not None:
            chosen, report["chosen_by"] = outcome.best_path, "search (selection at the budget)"
    report["chosen"] = str(chosen)
    if job.finetune:
        report["finetuned"] = _finetune(job, Path(chosen), out / "finetuned")
        if job.onnx:
            report["onnx"] = _export(out / "finetuned", out / "model.onnx")
    atomic_write_json(out / REPORT, report)
    atomic_write_text(out / "compress.md", markdown(report))
    _plot(results, out)
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table: every baseline, the choice and its fine-tuned accuracy."""
    lines = [
        f"# Compressing {report['model']} ({report['weights']})",
        "",
        f"Budget {report['budget_macs']:,} MACs "
        f"({report['budget_macs'] / report['dense_macs']:.3f} of dense).",
        "",
        "| method | MACs of dense | params | val zero-shot % | val after BN recalibration % "
        "| seconds to config |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["allocations"]:
        lines.append(
            f"| {row['method']} | {row['macs_ratio']:.3f} | {row['params']:,} "
            f"| {100 * row['val_zero_shot']:.2f} "
            f"| {100 * row['val_bn_recalibrated']:.2f} | {row['seconds_to_config']:.1f} |"
        )
    lines += ["", f"Chosen: `{report['chosen']}` ({report['chosen_by']})."]
    if "search" in report:
        search = report["search"]
        lines.append(f"Search: {search['status']} in {search['seconds']:.0f} s; {search['selection'] or ''}")
    if "finetuned" in report:
        ft = report["finetuned"]
        lines.append(f"Fine-tuned: test accuracy {100 * (ft['test_accuracy'] or 0):.2f}% ({ft['run']}).")
    return "\n".join(lines) + "\n"


def _finetune(job: CompressJob, config: Path, run_dir: Path) -> dict[str, Any]:
    """Fine-tune ``config`` from the trained weights (a ``rank-search train --init-from`` run)."""
    from ..data import DataOptions
    from ..train import TrainConfig
    from ..train.run import TrainJob, run_training

    fields: dict[str, Any] = {
        "init_from": str(Path(job.weights).resolve()),
        "init_rename": dict(job.rename),
        "seed": job.seed,
        "bn_recalibration_images": job.bn_images,
        "eval_test": True,
        **job.finetune,
    }
    options = DataOptions(**job.data_options)
    run = TrainJob(run_dir, TrainConfig(**fields), job.data, options, config, force=True, progress=False)
    trained = run_training(run)
    return {
        "run": str(run_dir),
        "test_accuracy": trained.test_accuracy,
        "val_accuracy": trained.val_accuracy,
        "seconds": trained.wall_time_s,
    }


def _export(run_dir: Path, path: Path) -> dict[str, Any]:
    """The fine-tuned run as ONNX (per-layer forms timed in ONNX Runtime, checked against PyTorch)."""
    from ..onnx_export import export_model

    result = export_model(run_dir, path)
    return {"path": str(path), "written": result.written, "forms": result.chosen, "model_ms": result.model_ms}


def _plot(results: list[AllocationResult], out: Path) -> None:
    """Per-layer rank ratio (rank_out / C_out) of every method: ``allocations.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._io import atomic_write

    fig, ax = plt.subplots(figsize=(9, 3.5))
    for r in results:
        infos = r.config.layers
        names = list(infos)
        ratios = []
        for name in names:
            spec = infos[name]
            ranks = spec.ranks()
            ratios.append(ranks.get("rank_out", ranks.get("rank", 0)))
        ax.plot(range(len(names)), ratios, marker="o", label=r.method)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("rank (output side)")
    ax.legend()
    fig.tight_layout()
    atomic_write(out / "allocations.png", lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)

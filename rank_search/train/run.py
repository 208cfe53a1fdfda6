"""The ``rank-search train`` job: train one rank config into a run folder.

Run folder (``RUN_DIR``), every file written atomically:

* ``train_config.json``: the resolved :class:`TrainConfig` (written first);
* ``checkpoint.pt``: the :class:`TrainState`, every ``checkpoint_every`` epochs and at the end;
* ``config.json``: the resolved rank config (dataset input size, rounded ranks), replaced at the
  end by the ranks trained at the end (DPRP may have shrunk them);
* ``model.pt``: the final ``state_dict`` (CPU tensors; ``torch.load(weights_only=True)``);
  rebuild with ``load_rank_config('config.json').build()`` then ``load_state_dict``; not
  written for a diverged run;
* ``metrics.json``: the outcome (accuracies as fractions, MACs per sample, history, ...).

Policy: a folder holding a finished run (``metrics.json``) is never overwritten without
``force``; a folder holding an unfinished run (``checkpoint.pt`` only) needs ``resume`` (continue
it) or ``force`` (start over); ``resume`` without a checkpoint is an error. Resuming requires the
same settings (model, ranks, data, training config except speed-only fields).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._io import atomic_torch_save, atomic_write_json
from .._rundir import refuse_other_kind
from .._version import __version__
from ..config import ModelSpec, RankConfig, load_rank_config, save_rank_config
from ..errors import ConfigError
from .checkpoint import TrainState, read_checkpoint
from .config import FewStepsWarning, TrainConfig, few_steps_hint
from .dprp import svd_everywhere
from .loop import EpochStats, TrainResult, check_resume, fit, match_dataset, round_ranks

if TYPE_CHECKING:
    from ..data import DataOptions, Dataset

__all__ = ["RUN_FILES", "TrainJob", "resolve_rank_config", "run_training"]

RUN_FILES = ("checkpoint.pt", "metrics.json", "model.pt", "config.json", "train_config.json")
METRICS_FORMAT = "rank-search/train-metrics"


@dataclass
class TrainJob:
    """One ``rank-search train`` invocation, resolved from the command line.

    Exactly one of ``config_path`` (a rank-config JSON) and ``model`` (a dense baseline, or a
    full-rank SVD model when ``train.dprp`` is set) is given.
    """

    run_dir: Path
    train: TrainConfig
    data_spec: str = "builtin"
    data_options: DataOptions | None = None
    config_path: Path | None = None
    model: str | None = None
    resume: bool = False
    force: bool = False
    progress: bool = True
    notes: list[str] = field(default_factory=list)


def resolve_rank_config(job: TrainJob, data: Dataset) -> RankConfig:
    """The rank config to train: loaded, or built for ``job.model``, matched to the dataset, rounded."""
    if job.config_path is not None:
        config = load_rank_config(job.config_path)
    elif job.model is not None:
        size = tuple(data.input_size)
        if job.train.dprp is not None:
            config = svd_everywhere(job.model, data.num_classes, (size[0], size[1], size[2]))
        else:
            config = RankConfig(ModelSpec(job.model, data.num_classes), (size[0], size[1], size[2]))
    else:
        raise ConfigError("give a rank-config JSON file or --model NAME", key="config")
    return round_ranks(match_dataset(config, data), job.train.rank_multiple)


def _prepare_run_dir(job: TrainJob) -> Path | None:
    """Check the run-folder policy; returns the checkpoint to resume from, if any.

    Writes and deletes nothing: with ``--force`` the old files go only once every input has
    been checked (:func:`_clear_run_dir`).
    """
    run_dir, checkpoint = job.run_dir, job.run_dir / "checkpoint.pt"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("exists and is not a folder", source=run_dir)
    refuse_other_kind(run_dir, "train")
    finished = (run_dir / "metrics.json").exists()
    if job.force:
        return None
    if finished:
        raise ConfigError("holds a finished run (metrics.json); pass --force to overwrite it", source=run_dir)
    if job.resume:
        if not checkpoint.exists():
            raise ConfigError("no checkpoint.pt to resume from", source=run_dir)
        return checkpoint
    if checkpoint.exists():
        raise ConfigError(
            "holds an unfinished run (checkpoint.pt); pass --resume to continue it or --force to start over",
            source=run_dir,
        )
    return None


def _clear_run_dir(job: TrainJob) -> None:
    """Delete the files of an earlier run (``--force``), after all inputs were checked."""
    for name in RUN_FILES:
        (job.run_dir / name).unlink(missing_ok=True)


def _data_meta(job: TrainJob, data: Dataset) -> dict[str, Any]:
    options = job.data_options
    return {
        "data": job.data_spec,
        "data_name": data.name,
        "val_fraction": options.val_fraction if options else None,
        "split_seed": options.split_seed if options else None,
        "max_train_samples": options.max_train_samples if options else None,
        "image_size": options.image_size if options else None,
        "normalization": {"mean": list(data.mean), "std": list(data.std)},
    }


def _check_resume_meta(checkpoint: Path, meta: dict[str, Any]) -> None:
    saved = read_checkpoint(checkpoint).get("meta", {})
    differ = sorted(key for key in meta if saved.get(key) != meta[key])
    if differ:
        raise ConfigError(
            f"the checkpoint was trained on other data settings {differ}: saved "
            f"{[saved.get(k) for k in differ]}, now {[meta[k] for k in differ]}",
            source=checkpoint,
        )


def run_training(job: TrainJob) -> TrainResult:
    """Train ``job`` and write its run folder (see the module doc); returns the result."""
    from ..data import load_data

    resume_from = _prepare_run_dir(job)
    data = load_data(job.data_spec, job.data_options)
    hint = few_steps_hint(data.split_size("train"), job.train)
    if hint is not None:
        warnings.warn(hint, FewStepsWarning, stacklevel=2)
    config = resolve_rank_config(job, data)
    meta = _data_meta(job, data)
    if resume_from is not None:
        _check_resume_meta(resume_from, meta)
        try:  # refuse a changed config or settings before anything is written
            check_resume(read_checkpoint(resume_from), config, job.train)
        except ConfigError as exc:
            raise exc.with_source(resume_from) from None
    elif job.force:
        _clear_run_dir(job)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(job.run_dir / "train_config.json", job.train.to_dict())
    if resume_from is None:
        save_rank_config(config, job.run_dir / "config.json")
    checkpoint = job.run_dir / "checkpoint.pt"

    def on_epoch(stats: EpochStats, state: TrainState) -> None:
        state.meta = meta
        if state.checkpoint_due:
            state.save(checkpoint)

    result = fit(config, data, job.train, callback=on_epoch, resume_from=resume_from, progress=job.progress)
    _write_outputs(job, result, meta, data)
    return result


def _write_outputs(job: TrainJob, result: TrainResult, meta: dict[str, Any], data: Dataset) -> None:
    run_dir = job.run_dir
    save_rank_config(result.rank_config, run_dir / "config.json")
    if result.status != "diverged":  # a diverged model holds non-finite weights
        state = {key: value.detach().cpu() for key, value in result.model.state_dict().items()}
        atomic_torch_save(run_dir / "model.pt", state)
    atomic_write_json(run_dir / "metrics.json", metrics_dict(job, result, meta, data))


def metrics_dict(job: TrainJob, result: TrainResult, meta: dict[str, Any], data: Dataset) -> dict[str, Any]:
    """The content of ``metrics.json`` (accuracies as fractions; MACs per sample, conv + linear)."""
    return {
        "format": METRICS_FORMAT,
        "rank_search_version": __version__,
        "status": result.status,
        "message": result.message,
        "test_accuracy": result.test_accuracy,
        "val_accuracy": result.val_accuracy,
        "macs": result.macs,
        "params": result.params,
        "dense_macs": result.dense_macs,
        "macs_ratio": result.macs / result.dense_macs if result.dense_macs else None,
        "macs_unit": "multiply-accumulates per sample (conv + linear)",
        "epochs": result.epochs,
        "epochs_planned": job.train.epochs,
        "wall_time_s": result.wall_time_s,
        "seed": job.train.seed,
        "model": result.rank_config.model.name,
        "num_classes": data.num_classes,
        "input_size": list(result.rank_config.input_size),
        "device": str(torch.device(job.train.device)) if job.train.device != "auto" else _auto_device(),
        "torch_version": torch.__version__,
        **meta,
        "init": result.init,
        "ranks": {name: spec.to_dict() for name, spec in result.rank_config.layers.items()},
        "history": [stats.to_dict() for stats in result.history],
    }


def _auto_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"

"""The Ray Tune function trainable: a thin adapter around :func:`rank_search.train.fit`.

Per trial: build the rank config planned by the searcher, take the data from this worker
process's cache (loaded once per process and data spec; a resident dataset keeps its copy on
each device it was used on, so on a GPU the upload also happens once per process), train for
``epochs_per_trial`` epochs and after every epoch write the trial record, then report
``val_accuracy`` and ``macs`` (and the predicted ``latency_ms`` under a latency budget)
(``ray.tune.report``, never ``ray.train.report``). A checkpoint goes with a report only when
``checkpoint_interval_s`` passed since the trial's last one (:meth:`TrialSetup.wants_checkpoint`),
so a long trial killed with the driver continues from it; ASHA never resumes a stopped trial,
so rungs need none. The trial record is the source of truth for what finished: a trial that Ray
restarts on ``--resume`` although its record already says ``completed`` or ``stopped`` (the
driver was killed before Ray's next experiment snapshot) replays its recorded epochs to Tune
without training. A resumed trial with a checkpoint continues from it. Torch uses as many
threads as the trial has CPUs (:mod:`rank_search.threads`).
Non-finite metrics are never reported: a diverged trial is recorded as such and raises
:class:`TrialDiverged`, so Ray and Optuna mark it failed and the search goes on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..outcomes import encode_outcomes
from .records import TrialRecord, read_record, record_path, record_problem, write_record
from .searcher import CONFIG_KEY

if TYPE_CHECKING:
    from ..config import Cost, RankConfig
    from ..cost import AnalyticCost
    from ..data import Dataset
    from ..train import EpochStats, TrainState

__all__ = ["TrialDiverged", "TrialSetup", "train_trial"]

STATE_FILE = "state.pt"
PAUSE_LIMIT_S = 600.0
"""The ``pause`` test fault waits at most this long for its ``.continue`` file."""


class TrialDiverged(RuntimeError):
    """Training produced a non-finite loss or metric."""


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares (passed once through ``tune.with_parameters``)."""

    out_dir: str
    model: str
    num_classes: int
    input_size: tuple[int, int, int]
    data: str
    data_options: dict[str, Any]
    train: dict[str, Any]  # TrainConfig fields, epochs and seed included
    dense_macs: int
    cpus: float = 1.0
    checkpoint_interval_s: float = 600.0  # an epoch ending this long after the last checkpoint saves one

    def wants_checkpoint(self, epoch: int, since_last_s: float) -> bool:
        """Whether the report after ``epoch`` carries a checkpoint (not after the last epoch: the
        record holds the finished trial)."""
        return epoch < int(self.train["epochs"]) and since_last_s >= self.checkpoint_interval_s


_DATASETS: dict[str, Dataset] = {}
"""This worker process's datasets, by data spec and options (Ray reuses actors across trials)."""


def cached_data(setup: TrialSetup) -> Dataset:
    """The dataset of ``setup``, loaded once per process."""
    from ..data import DataOptions, load_data

    key = json.dumps([setup.data, setup.data_options], sort_keys=True, default=str)
    if key not in _DATASETS:
        _DATASETS[key] = load_data(setup.data, DataOptions(**setup.data_options))
    return _DATASETS[key]


_COSTS: dict[tuple[str, int, tuple[int, ...]], AnalyticCost] = {}
"""This worker process's listed models (:class:`~rank_search.cost.AnalyticCost`), by model,
classes and input size: every trial of a search costs the same model."""


def planned_cost(config: RankConfig) -> Cost:
    """``config.compute_cost()`` (the formula table, as the plan's MACs), with the dense model
    listed once per worker process instead of once per trial."""
    from ..cost import AnalyticCost

    key = (config.model.name, config.model.num_classes, tuple(config.input_size))
    if key not in _COSTS:
        _COSTS[key] = AnalyticCost.of(config)
    return _COSTS[key].of_layers(config.layers)


def planned_rank_config(plan: dict[str, Any], setup: TrialSetup) -> RankConfig:
    """The rank config a trial's plan describes (dense layers omitted)."""
    from ..config import ModelSpec, RankConfig, RegularizerSpec, parse_layer_spec

    layers = {name: parse_layer_spec(spec, f"layers.{name}") for name, spec in plan["layers"].items()}
    reg = plan.get("regularizer") or {}
    regularizer = RegularizerSpec(reg.get("name", "dso"), float(reg.get("weight", 1e-3)))
    provenance = {"source": "rank-search search", "optuna_trial_number": plan.get("optuna_trial_number")}
    return RankConfig(
        ModelSpec(setup.model, setup.num_classes),
        setup.input_size,
        layers,
        regularizer,
        provenance=provenance,
    )


def new_record(trial_id: str, plan: dict[str, Any], setup: TrialSetup, config: RankConfig) -> TrialRecord:
    """A fresh ``running`` record for a trial about to train."""
    cost = planned_cost(config)
    return TrialRecord(
        trial_id=trial_id,
        epochs_planned=int(setup.train["epochs"]),
        rank_config=dataclasses.replace(config, cost=cost).to_dict(),
        macs=cost.macs,
        dense_macs=cost.dense_macs,
        params=cost.params,
        optuna_trial_number=plan.get("optuna_trial_number"),
        tags=list(plan.get("tags", [])),
        sampled=dict(plan.get("sampled", {})),
        projection=dict(plan.get("projection", {})),
        latency_ms=plan.get("latency_ms"),
    )


class _EpochReporter:
    """The ``fit`` callback: record, checkpoint and report every finished epoch."""

    def __init__(self, setup: TrialSetup, record: TrialRecord, fault: str | None) -> None:
        self.setup, self.record, self.fault = setup, record, fault
        self.last_checkpoint = time.monotonic()

    def __call__(self, stats: EpochStats, state: TrainState) -> None:
        from ray import tune

        if self.fault == "diverge":
            raise TrialDiverged("injected divergence (test fault)")
        if stats.val_accuracy is None or not math.isfinite(stats.val_accuracy):
            raise TrialDiverged(f"non-finite or missing val_accuracy after epoch {stats.epoch}")
        record = self.record
        _set_history(record, state.history)
        record.macs, record.params = int(stats.macs), int(stats.params)
        if stats.ranks_changed or stats.epoch == 1:
            record.rank_config = state.rank_config.to_dict()
        record.wall_time_s = float(state.wall_time_s)
        if stats.val_correct is not None:
            record.val_outcomes = encode_outcomes(stats.val_correct)
        record.status = "completed" if stats.epoch >= record.epochs_planned else "running"
        write_record(self.setup.out_dir, record)
        if stats.epoch == 1:  # test faults after a first recorded epoch (searcher.FAULT_ENV)
            _raise_memory_fault(self.fault)
            if self.fault == "pause":
                _pause(Path(self.setup.out_dir), record.trial_id)
        metrics = {
            "val_accuracy": float(stats.val_accuracy),
            "macs": int(stats.macs),
            "params": int(stats.params),
            "epoch": int(stats.epoch),
            "train_loss": float(stats.train_loss),
            "epoch_time_s": float(stats.epoch_time_s),
        }
        if record.latency_ms is not None:  # predicted, from the latency table (latency budgets)
            metrics["latency_ms"] = float(record.latency_ms)
        if not self.setup.wants_checkpoint(int(stats.epoch), time.monotonic() - self.last_checkpoint):
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="rank-search-ckpt-") as tmp:
            state.save(Path(tmp) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        self.last_checkpoint = time.monotonic()

    def fail(self, status: str, message: str) -> None:
        self.record.status = status
        self.record.error = message
        write_record(self.setup.out_dir, self.record)


def _raise_memory_fault(fault: str | None) -> None:
    """The ``oom`` / ``memory`` test faults: out of (GPU / host) memory after the first epoch."""
    if fault == "oom":
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory (test fault)")
    if fault == "memory":
        raise MemoryError("injected (test fault)")


def _pause(out_dir: Path, trial_id: str) -> None:
    """The ``pause`` test fault: wait until ``trials/<trial_id>.continue`` exists."""
    release = out_dir / "trials" / f"{trial_id}.continue"
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def failure_text(exc: BaseException) -> str:
    """One line for a trial's record: the exception's type and first line, with a hint when the
    trial ran out of memory (host ``MemoryError`` or ``torch.cuda.OutOfMemoryError``)."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        text += " (out of memory: a smaller train.batch_size or fewer concurrent trials may fit)"
    return text[:500]


def _previous_record(path: Path) -> TrialRecord | None:
    """The trial's record from before a restart, or None (none, or unreadable: train afresh)."""
    if not path.is_file() or record_problem(path) is not None:
        return None
    return read_record(path)


def _set_history(record: TrialRecord, rows: list[dict[str, Any]]) -> None:
    record.history, record.epochs = [], 0
    for row in rows:
        record.add_epoch(row)


def _restore_checkpoint(work: Path) -> Path | None:
    """Copy the trial's last Ray checkpoint (if any) to ``work`` and return the state file."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        source = Path(folder) / STATE_FILE
        if not source.is_file():
            return None
        target = work / STATE_FILE
        shutil.copyfile(source, target)
    return target


def _replay(record: TrialRecord) -> None:
    """Report a finished trial's recorded epochs to Tune again, without training (see above)."""
    from ray import tune

    for row in record.history:
        keys = ("val_accuracy", "train_loss", "epoch_time_s")
        metrics = {k: row[k] for k in keys if row.get(k) is not None}
        metrics.update(macs=int(record.macs), params=int(record.params), epoch=int(row["epoch"]))
        if record.latency_ms is not None:
            metrics["latency_ms"] = float(record.latency_ms)
        tune.report(metrics)


def _trial_identity() -> tuple[str, str | None]:
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    try:
        node_id: str | None = ray.get_runtime_context().get_node_id()
    except Exception:  # outside a Ray worker (unit tests)
        node_id = None
    return trial_id, node_id


def _trial_gpu_share() -> float | None:
    """The GPUs this trial was given (``resources.gpu``), or None outside a Ray trial."""
    from ray import tune

    try:
        resources = tune.get_context().get_trial_resources()
        return float(resources.required_resources.get("GPU", 0.0)) or None
    except Exception:  # outside a Ray Tune trial (unit tests)
        return None


def train_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Ray Tune function trainable: train one planned rank config (see the module docstring)."""
    from ..threads import thread_report, use_threads
    from ..train import fit, train_config_from_dict

    plan = config[CONFIG_KEY]
    trial_id, node_id = _trial_identity()
    use_threads(setup.cpus)
    from ..train import apply_gpu_share

    apply_gpu_share(_trial_gpu_share())  # cap memory, no cuDNN autotuning on a shared GPU
    rank_config = planned_rank_config(plan, setup)
    record = new_record(trial_id, plan, setup, rank_config)
    record.node_id, record.pid = node_id, os.getpid()
    record.threads = thread_report()
    old = _previous_record(record_path(setup.out_dir, trial_id))
    if old is not None:  # resumed: keep what was reached until the checkpoint says otherwise
        if old.status in ("completed", "stopped") and old.history:
            _replay(old)
            return
        _set_history(record, old.history)
        record.wall_time_s = old.wall_time_s
    write_record(setup.out_dir, record)
    reporter = _EpochReporter(setup, record, plan.get("fault"))
    try:
        if plan.get("fault") == "error":
            raise RuntimeError("injected error (test fault)")
        train = train_config_from_dict({**setup.train, **plan.get("train", {})})
        data = cached_data(setup)
        record.val_size = int(data.split_size("val"))
        with tempfile.TemporaryDirectory(prefix="rank-search-resume-") as work:
            resume_from = _restore_checkpoint(Path(work))
            result = fit(rank_config, data, train, callback=reporter, resume_from=resume_from)
    except TrialDiverged as exc:
        reporter.fail("diverged", str(exc))
        raise
    except Exception as exc:
        reporter.fail("failed", failure_text(exc))
        raise
    if result.status == "diverged":
        reporter.fail("diverged", result.message)
        raise TrialDiverged(result.message)
    _set_history(record, [stats.to_dict() for stats in result.history])
    record.rank_config = result.rank_config.to_dict()
    record.macs, record.params = int(result.macs), int(result.params)
    record.wall_time_s = float(result.wall_time_s)
    record.status = "completed" if record.epochs >= record.epochs_planned else "stopped"
    write_record(setup.out_dir, record)

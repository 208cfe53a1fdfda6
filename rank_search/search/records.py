"""Trial records: ``DIR/trials/<trial_id>.json``, one per trial, written atomically.

The trainable rewrites its record after every epoch; a driver-side callback finalizes it
when the trial completes, is stopped by ASHA, or errors. Schema (version 1)::

    {"trial_id": str, "optuna_trial_number": int | null,
     "status": "running" | "completed" | "stopped" | "failed" | "diverged" | "interrupted",
     "epochs": int (reached), "epochs_planned": int, "tags": ["uniform" | "dprp" | ...],
     "rank_config": RankConfig.to_dict(), "sampled": {optuna params},
     "macs": int, "dense_macs": int, "params": int,
     "latency_ms": float | null (predicted, latency budgets only),
     "val_accuracy": float | null (last epoch, fraction), "best_val_accuracy": float | null,
     "history": [{"epoch", "train_loss", "reg_loss", "val_accuracy", "val_loss", "epoch_time_s",
                  "macs", "params", "lr"}],
     "val_size": int | null, "val_outcomes": {"format": "bits-v1", "n": int, "bits": str} | null,
     "wall_time_s": float, "node_id": str | null, "pid": int | null, "error": str | null,
     "threads": {"torch_threads": int, "omp_wait_policy": str | null} (the trial's process),
     "projection": {"projected": bool, "scale": float, "sampled_macs": int,
                    "sampled_layers": {layer: {"format", ranks...}}}}

Statuses: ``stopped`` is early-stopped by ASHA; ``interrupted`` is a trial the search was
interrupted in (Ctrl-C), continued by ``--resume``. ``threads`` is an addition (issue 11).
``projection`` is an addition: the sampled config before it was repaired onto the budget.
``latency_ms`` is an addition: the config's latency predicted from the search's latency table
(ms per batch on the budget's device; ``projection.sampled_latency_ms`` before repair); null
for MACs budgets. ``val_outcomes`` (issue 20) is the last validation's per-image right/wrong,
packed (:mod:`rank_search.outcomes`): every trial of a search sees the same validation images in the
same order, so the selection compares trials image by image (a paired test); ``val_loss`` in the
history is an addition too.
``pid`` is an addition (issue 21): the worker process that last ran the trial
(with ``node_id``: where to look for a stuck trial).

A record that cannot be read (cut off, not JSON, not a record) is never counted:
:func:`unreadable_records` finds them, and ``search --resume`` moves each to
``DIR/trials/invalid/`` (:func:`set_aside`) with a line naming it; the analysis refuses to read a
damaged record in place and names what was set aside.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_write_json

__all__ = [
    "AshaSettings",
    "FINAL_STATUSES",
    "STATUSES",
    "TrialRecord",
    "read_record",
    "read_records",
    "record_path",
    "record_problem",
    "set_aside",
    "unreadable_records",
    "write_record",
]

STATUSES = ("running", "completed", "stopped", "failed", "diverged", "interrupted")
FINAL_STATUSES = ("completed", "stopped", "failed", "diverged")
UNIFORM_TAG = "uniform"  # the search's uniform starting point (the baseline selection compares with)


@dataclass(frozen=True)
class AshaSettings:
    """Asynchronous successive halving over epochs (``training_iteration``): the study's ``asha``
    and ``search.json``'s ``asha`` (one definition for the search and the analysis)."""

    enabled: bool = True
    grace_period: int = 1
    reduction_factor: float = 3.0

    def rungs(self, epochs: int) -> list[int]:
        """Epochs at which ASHA compares trials: ``grace_period * reduction_factor**k < epochs``."""
        if not self.enabled or self.grace_period < 1 or self.reduction_factor <= 1:
            return []
        out, rung = [], float(self.grace_period)
        while rung < epochs:
            out.append(int(rung))
            rung *= self.reduction_factor
        return out


HISTORY_KEYS = (
    "epoch",
    "train_loss",
    "reg_loss",
    "val_accuracy",
    "val_loss",
    "epoch_time_s",
    "macs",
    "params",
    "lr",
)


@dataclass
class TrialRecord:
    """What one trial trained, how far it got and how well it did."""

    trial_id: str
    epochs_planned: int
    rank_config: dict[str, Any]
    macs: int
    dense_macs: int
    params: int
    optuna_trial_number: int | None = None
    status: str = "running"
    epochs: int = 0
    tags: list[str] = field(default_factory=list)
    sampled: dict[str, Any] = field(default_factory=dict)
    val_accuracy: float | None = None
    best_val_accuracy: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0
    node_id: str | None = None
    pid: int | None = None
    error: str | None = None
    projection: dict[str, Any] = field(default_factory=dict)
    latency_ms: float | None = None
    threads: dict[str, Any] = field(default_factory=dict)
    val_size: int | None = None  # images in the validation split
    val_outcomes: dict[str, Any] | None = None  # the last validation's per-image outcomes, packed

    def add_epoch(self, entry: dict[str, Any]) -> None:
        """Append one epoch (keys :data:`HISTORY_KEYS`) and update the accuracy fields."""
        clean = {k: _finite(entry.get(k)) for k in HISTORY_KEYS}
        self.history = [h for h in self.history if h["epoch"] < clean["epoch"]] + [clean]
        self.epochs = int(clean["epoch"])
        self.val_accuracy = clean["val_accuracy"]
        accs = [h["val_accuracy"] for h in self.history if h["val_accuracy"] is not None]
        self.best_val_accuracy = max(accs) if accs else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def record_path(out_dir: str | Path, trial_id: str) -> Path:
    return Path(out_dir) / "trials" / f"{trial_id}.json"


def write_record(out_dir: str | Path, record: TrialRecord) -> Path:
    """Atomically write ``record`` to ``DIR/trials/<trial_id>.json``."""
    return atomic_write_json(record_path(out_dir, record.trial_id), record.to_dict())


def read_record(path: str | Path) -> TrialRecord:
    return TrialRecord.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


INVALID_DIR = "invalid"
"""``DIR/trials/invalid/``: unreadable records set aside by ``search --resume`` (kept as found)."""


def record_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable trial record, or None when it is one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return f"not valid JSON (cut off or damaged) at line {exc.lineno} column {exc.colno}: {exc.msg}"
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot be read: {exc}"
    if not isinstance(data, dict):
        return f"not a trial record (a JSON {type(data).__name__}, not an object)"
    try:
        TrialRecord.from_dict(data)
    except TypeError as exc:
        return f"not a trial record ({exc})"
    return None


def unreadable_records(out_dir: str | Path) -> list[tuple[Path, str]]:
    """``(path, reason)`` of every ``DIR/trials/*.json`` that is not a readable trial record."""
    paths = sorted(p for p in (Path(out_dir) / "trials").glob("*.json") if not p.name.startswith("."))
    found = [(path, record_problem(path)) for path in paths]
    return [(path, problem) for path, problem in found if problem is not None]


def set_aside(path: Path) -> Path:
    """Move the record ``path`` to ``trials/invalid/`` (a numbered name if one is there already)."""
    folder = path.parent / INVALID_DIR
    folder.mkdir(exist_ok=True)
    target, index = folder / path.name, 1
    while target.exists():
        target, index = folder / f"{path.stem}.{index}{path.suffix}", index + 1
    shutil.move(str(path), target)
    return target


def read_records(out_dir: str | Path) -> list[TrialRecord]:
    """Every record in ``DIR/trials``, ordered by Optuna trial number then trial id."""
    records = [read_record(p) for p in sorted((Path(out_dir) / "trials").glob("*.json"))]
    return sorted(
        records, key=lambda r: (r.optuna_trial_number is None, r.optuna_trial_number or 0, r.trial_id)
    )

"""Driver-side Tune callback: finalizes trial records and prints one line per trial (imports Ray).

O(1) per event: a trial's own record is read and written once when it ends, and the count of
ended trials is kept in memory (counted once from the files at setup, for a resumed search).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from .records import FINAL_STATUSES, TrialRecord, read_record, record_path, write_record
from .searcher import CONFIG_KEY

__all__ = ["RecordCallback", "finalize_record"]


def _error_text(trial: Any) -> str:
    try:
        error = trial.get_pickled_error() or trial.get_error()
    except Exception:  # storage may be gone; the record still needs a message
        error = None
    text = str(error) if error is not None else "the trial errored (no error message was saved)"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else text[:500]


def _fallback_record(trial: Any, epochs: int) -> TrialRecord:
    """A record for a trial that died before its trainable wrote one."""
    plan = (trial.config or {}).get(CONFIG_KEY, {})
    return TrialRecord(
        trial_id=trial.trial_id,
        epochs_planned=epochs,
        rank_config={"layers": plan.get("layers", {})},
        macs=int(plan.get("macs", 0)),
        dense_macs=0,
        params=0,
        optuna_trial_number=plan.get("optuna_trial_number"),
        tags=list(plan.get("tags", [])),
        sampled=dict(plan.get("sampled", {})),
        projection=dict(plan.get("projection", {})),
        latency_ms=plan.get("latency_ms"),
    )


def finalize_record(out_dir: str | Path, trial: Any, epochs: int, error: str | None) -> TrialRecord:
    """Set the final status of ``trial``'s record: completed, stopped (by ASHA), failed or diverged."""
    path = record_path(out_dir, trial.trial_id)
    record = read_record(path) if path.is_file() else _fallback_record(trial, epochs)
    if error is not None:
        if record.status not in ("failed", "diverged"):
            record.status = "failed"
        record.error = record.error or error
    elif record.status not in FINAL_STATUSES:
        record.status = "completed" if record.epochs >= record.epochs_planned else "stopped"
    write_record(out_dir, record)
    return record


class RecordCallback(Callback):  # type: ignore[misc]
    """Finalizes records on trial completion/error, reconciles at the end, prints progress."""

    def __init__(self, out_dir: str, epochs: int, total: int, dense_macs: int, quiet: bool = False) -> None:
        self.out_dir, self.epochs, self.total = out_dir, epochs, total
        self.dense_macs, self.quiet = dense_macs, quiet
        self._start = time.time()

        self._ended: set[str] = set()

    def setup(self, **info: Any) -> None:  # type: ignore[override]
        self._start = time.time()
        folder = Path(self.out_dir) / "trials"
        for path in folder.glob("*.json"):
            try:
                if read_record(path).status in FINAL_STATUSES:
                    self._ended.add(path.stem)
            except (OSError, ValueError):
                continue

    def _print(self, record: TrialRecord) -> None:
        if self.quiet:
            return
        acc = "-" if record.val_accuracy is None else f"{record.val_accuracy:.4f}"
        frac = record.macs / self.dense_macs if self.dense_macs else float("nan")
        tags = f"  [{','.join(record.tags)}]" if record.tags else ""
        error = f"  {record.error}" if record.error else ""
        latency = f"  {record.latency_ms:.3f} ms" if record.latency_ms is not None else ""
        minutes = (time.time() - self._start) / 60
        print(
            f"[{len(self._ended):>3}/{self.total}] {minutes:6.1f} min  trial {record.trial_id} "
            f"#{record.optuna_trial_number}  {record.status:<9} "
            f"epochs {record.epochs}/{record.epochs_planned}  "
            f"val_acc {acc}  MACs {record.macs:,} ({frac:.3f}){latency}{tags}{error}",
            file=sys.stdout,
            flush=True,
        )

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        self._print(finalize_record(self.out_dir, trial, self.epochs, None))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        self._print(finalize_record(self.out_dir, trial, self.epochs, _error_text(trial)))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Finalize records of ended trials, mark trials still running ``interrupted`` (the search
        stopped under them: Ctrl-C) and set aside records of unfinished trials Ray no longer knows
        (started after its last experiment snapshot before the driver was killed; their Optuna
        trials are failed at the end). A finished record Ray does not know is kept: it counts."""
        known = {t.trial_id: t for t in trials}
        folder = Path(self.out_dir) / "trials"
        for path in sorted(folder.glob("*.json")):
            record, trial = read_record(path), known.get(path.stem)
            if record.status in FINAL_STATUSES:
                continue
            if trial is None:
                lost = folder / "lost"
                lost.mkdir(exist_ok=True)
                shutil.move(str(path), lost / path.name)
                continue
            if trial.status in ("TERMINATED", "ERROR"):
                error = _error_text(trial) if trial.status == "ERROR" else None
                finalize_record(self.out_dir, trial, self.epochs, error)
            else:
                record.status = "interrupted"
                write_record(self.out_dir, record)

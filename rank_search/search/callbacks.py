"""Driver-side Tune callback: finalizes trial records and prints one line per trial (imports Ray).

O(1) per event: a trial's own record is read and written once when it ends, and the count of
ended trials is kept in memory (counted once from the files at setup, for a resumed search).

A trial that fails for a cause outside it (the data root gone, no space left on the device) stops
the search as Ctrl-C does (Tune's own stop signal, SIGUSR1: the running trials are kept for
``--resume``), and :func:`stop_reason` tells the runner why.
"""

from __future__ import annotations

import errno
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ..errors import SearchStopped
from .records import FINAL_STATUSES, TrialRecord, read_record, record_path, write_record
from .searcher import CONFIG_KEY

__all__ = ["RecordCallback", "finalize_record", "stop_reason"]

WORKER_DIED = (
    "the trial's worker process died (killed by a signal: SIGKILL, the out-of-memory killer, "
    "or its node went away)"
)
NOT_STARTED = (
    "Tune could not start the trial on a reused worker (its previous trial's thread had not ended "
    "within TUNE_FUNCTION_THREAD_TIMEOUT_S)"
)
NO_SPACE = ("No space left on device", "Disk quota exceeded")
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

_STOP_REASONS: dict[str, str] = {}
"""Why a search in this process stopped itself, by output directory (the callback Ray restores
on ``--resume`` is a copy, so the runner asks here)."""


def stop_reason(out_dir: str | Path, *, clear: bool = False) -> str | None:
    """Why the search writing ``out_dir`` stopped itself (None: it did not)."""
    key = str(Path(out_dir).resolve())
    return _STOP_REASONS.pop(key, None) if clear else _STOP_REASONS.get(key)


def _trial_error(trial: Any) -> Any:
    """The trial's last error: from the driver's own copy (``Trial.handle_error`` writes it before
    the callbacks run; the copy in the storage path may not be synced yet), else from storage."""
    from ray import cloudpickle

    local = getattr(trial, "pickled_error_file", None)
    try:
        if local and Path(local).is_file():
            with open(local, "rb") as handle:
                return cloudpickle.load(handle)
        return trial.get_pickled_error() or trial.get_error()
    except Exception:  # storage may be gone; the record still needs a message
        return None


def _error_text(trial: Any) -> str:
    from ray.exceptions import RayActorError

    error = _trial_error(trial)
    if isinstance(error, RayActorError) or "actor died unexpectedly" in str(error):
        return WORKER_DIED
    if "reset_config()" in str(error):  # Tune's reuse of a worker whose last trial had not ended
        return NOT_STARTED
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

    def __init__(
        self,
        out_dir: str,
        epochs: int,
        total: int,
        dense_macs: int,
        quiet: bool = False,
        data_root: str | None = None,
    ) -> None:
        self.out_dir, self.epochs, self.total = out_dir, epochs, total
        self.dense_macs, self.quiet = dense_macs, quiet
        self.data_root = data_root
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
        record = self._finalize(trial, None)
        if record is not None:
            self._print(record)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        record = self._finalize(trial, _error_text(trial))
        if record is None:
            return
        self._print(record)
        cause = self._outside_cause(record)
        if cause is not None:
            self._stop(cause)

    def _finalize(self, trial: Any, error: str | None) -> TrialRecord | None:
        """:func:`finalize_record`; on a full disk, stop the search instead (an exception out of a
        callback would make Tune fail the trial) and return None."""
        try:
            return finalize_record(self.out_dir, trial, self.epochs, error)
        except OSError as exc:
            if exc.errno not in NO_SPACE_ERRNOS:
                raise
            self._stop(SearchStopped.no_space(exc.filename).reason)
            return None

    def _outside_cause(self, record: TrialRecord) -> str | None:
        """Why ``record``'s failure is not the trial's own: the data root gone, the disk full."""
        root = getattr(self, "data_root", None)  # a callback restored from an older search has none
        if root is not None and not Path(root).exists():
            return f"the data root {root} is gone (trial {record.trial_id} failed: {record.error})"
        if any(text in (record.error or "") for text in NO_SPACE):
            return f"no space left on the device (trial {record.trial_id} failed: {record.error})"
        return None

    def _stop(self, reason: str) -> None:
        """Stop launching trials: as Ctrl-C does when Tune listens for its stop signal (the main
        thread), else by raising :class:`SearchStopped` out of ``fit`` (a copy of the reason is
        kept for :func:`stop_reason` either way)."""
        key = str(Path(self.out_dir).resolve())
        if key in _STOP_REASONS:
            return
        _STOP_REASONS[key] = reason
        handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if threading.current_thread() is threading.main_thread() and callable(handler):
            signal.raise_signal(signal.SIGUSR1)
        else:
            raise SearchStopped(reason)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Finalize records of ended trials, mark trials still running ``interrupted`` (the search
        stopped under them: Ctrl-C, SIGTERM, a stop for a cause outside the trials) and set aside
        records of unfinished trials Ray no longer knows (started after its last experiment
        snapshot before the driver was killed; their Optuna trials are failed at the end). A
        finished record Ray does not know is kept: it counts."""
        try:
            self._settle_records(trials)
        except OSError as exc:  # Tune calls this in its clean-up: stop with our line, not a trace
            if exc.errno not in NO_SPACE_ERRNOS:
                raise
            key = str(Path(self.out_dir).resolve())
            _STOP_REASONS.setdefault(key, SearchStopped.no_space(exc.filename).reason)

    def _settle_records(self, trials: list[Any]) -> None:
        known = {t.trial_id: t for t in trials}
        folder = Path(self.out_dir) / "trials"
        for trial in trials:  # errored with no event (a reused worker not ready): never silent
            path = record_path(self.out_dir, trial.trial_id)
            if trial.status == "ERROR" and trial.trial_id not in self._ended and not path.is_file():
                self._ended.add(trial.trial_id)
                self._print(finalize_record(self.out_dir, trial, self.epochs, _error_text(trial)))
        for path in sorted(folder.glob("*.json")):
            record, trial = read_record(path), known.get(path.stem)
            if record.status in FINAL_STATUSES:
                continue
            if trial is None:
                lost = folder / "lost"
                lost.mkdir(exist_ok=True)
                shutil.move(str(path), lost / path.name)
                continue
            # Tune's clean-up sets the trials it stops under an interrupt TERMINATED too, with no
            # trial-complete event: only a trial seen ending (or failing) is finalized
            if trial.status == "ERROR" or (trial.status == "TERMINATED" and trial.trial_id in self._ended):
                error = _error_text(trial) if trial.status == "ERROR" else None
                finalize_record(self.out_dir, trial, self.epochs, error)
            else:
                record.status = "interrupted"
                write_record(self.out_dir, record)

"""``OptunaSearch`` with tagged starting points and honest trial states (imports Ray and Optuna)."""

from __future__ import annotations

import json
import logging
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from .searcher import TAG_ATTR

__all__ = ["DriverJournal", "RankOptunaSearch"]

logger = logging.getLogger(__name__)


class DriverJournal(JournalFileBackend):  # type: ignore[misc]
    """Optuna's journal file, appended by its only writer (the search driver) without a file lock
    or ``fsync``: a killed driver loses nothing (the page cache keeps the write), a machine crash
    may lose the last writes. Optuna's own reader reads the file as usual."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        with open(self._file_path, "ab") as handle:
            handle.write(text.encode("utf-8"))


class RankOptunaSearch(OptunaSearch):  # type: ignore[misc]
    """``OptunaSearch`` that enqueues tagged starting points and tells FAIL / PRUNED honestly.

    ``tagged_points``: ``(tag, params)`` pairs enqueued (in order) before any sampled trial;
    the tag is stored as the ``rank_search_tag`` user attribute. ``max_epochs``: a trial that
    ends without error before this many reported epochs (stopped by ASHA) is told PRUNED.
    """

    def __init__(
        self,
        space: Any,
        *,
        tagged_points: list[tuple[str, dict[str, Any]]],
        max_epochs: int,
        total_trials: int | None = None,
        **kwargs: Any,
    ) -> None:
        self._tagged_points = list(tagged_points)
        self._max_epochs = max_epochs
        self._total_trials = total_trials
        super().__init__(space, **kwargs)

    def suggest(self, trial_id: str) -> Any:
        """No new trial once ``total_trials`` Optuna trials ended or run. After ``--resume`` of a
        killed driver, a trial that ended after Ray's last snapshot is known to Optuna (the
        journal) but not to Ray: it counts here, so it is kept, not repeated."""
        if self._total_trials is not None and self._ot_study is not None and trial_id not in self._ot_trials:
            live = {t._trial_id for k, t in self._ot_trials.items() if k not in self._completed_trials}
            trials = self._ot_study.get_trials(deepcopy=False)
            taken = sum(1 for t in trials if t.state.is_finished() or t._trial_id in live)
            if taken >= self._total_trials:
                return Searcher.FINISHED
        return super().suggest(trial_id)

    def _setup_study(self, mode: str | list[str]) -> None:
        super()._setup_study(mode)
        assert self._ot_study is not None
        for tag, params in self._tagged_points:
            self._ot_study.enqueue_trial(params, user_attrs={TAG_ATTR: tag}, skip_if_exists=False)
        self._tagged_points = []

    def _told_before(self, trial_id: str) -> bool:
        """Whether Optuna already holds ``trial_id`` as finished: a trial that ended before the
        driver was killed and is replayed from its record on ``--resume``."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or self._ot_study is None:
            return False
        return bool(self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished())

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if not self._told_before(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        epochs = int(result.get("training_iteration", 0)) if result else 0
        values: Any = None
        if error:
            state = optuna.trial.TrialState.FAIL
        elif result is None or epochs < self._max_epochs:
            state = optuna.trial.TrialState.PRUNED
            self._report_last(ot_trial, result, epochs)
        else:
            state = optuna.trial.TrialState.COMPLETE
            values = (
                [result.get(m) for m in self.metric]
                if isinstance(self.metric, list)
                else result.get(self.metric)
            )
        assert self._ot_study is not None
        if self._told_before(trial_id):  # keep what Optuna was told before the driver was killed
            self._completed_trials.add(trial_id)
            return
        try:
            ot_trial.set_user_attr("epochs", epochs)
            self._ot_study.tell(ot_trial, values, state=state)
        except Exception as exc:  # Optuna refuses e.g. NaN; never let it stop the search
            logger.warning("could not tell Optuna about trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def _report_last(self, ot_trial: Any, result: dict[str, Any] | None, epochs: int) -> None:
        """Report the stopping result as an intermediate value (ASHA's STOP skips ``on_trial_result``),
        so Optuna gives the PRUNED trial its last value (single objective only)."""
        if isinstance(self.metric, list) or not result or result.get(self.metric) is None:
            return
        try:
            ot_trial.report(float(result[self.metric]), epochs)
        except Exception as exc:
            logger.warning("could not report the last result of an Optuna trial: %s", exc)

"""ASHA that never stops a search's starting points (imports Ray; the thin adapter's scheduler).

The starting points (the uniform config, user or baseline configs) are what selection compares
the searched configs with: stopped at an early rung they are not fully trained, cannot be
selected, and the search can only export a searched config (the issue-20 rerun: ASHA stopped the
uniform point at its 2-epoch rung in both searches). So a trial whose plan carries a starting
point's tag always runs to the end; its results still count in ASHA's rungs for the others.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from .searcher import CONFIG_KEY

__all__ = ["StartingPointASHA", "is_starting_point"]


def is_starting_point(config: dict[str, Any]) -> bool:
    """Whether a trial config (``{CONFIG_KEY: plan}``) is an enqueued starting point (it has a tag)."""
    plan = config.get(CONFIG_KEY)
    return isinstance(plan, dict) and bool(plan.get("tags"))


class StartingPointASHA(ASHAScheduler):  # type: ignore[misc]
    """:class:`ASHAScheduler` whose STOP never applies to a starting point (see the module)."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = str(super().on_trial_result(tune_controller, trial, result))
        before_end = result.get(self._time_attr, 0) < self._max_t
        if action == TrialScheduler.STOP and before_end and is_starting_point(trial.config):
            self._num_stopped -= 1
            return str(TrialScheduler.CONTINUE)
        return action

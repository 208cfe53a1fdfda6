"""ASHA never stops a search's starting points (they are what selection compares with)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from rank_search.search.scheduler import StartingPointASHA, is_starting_point
from rank_search.search.searcher import CONFIG_KEY


def _trial(name: str, tags: list[str]) -> Any:
    return SimpleNamespace(trial_id=name, config={CONFIG_KEY: {"tags": tags, "layers": {}}})


def _decisions(scheduler: Any) -> dict[str, str]:
    """Three trials reach the 1-epoch rung, the worst last: ASHA (rf 3) stops it there."""
    scheduler.set_search_properties("val_accuracy", "max")
    trials = [_trial("a", []), _trial("b", []), _trial("u", ["uniform"])]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    out = {}
    for trial, accuracy in zip(trials, [0.6, 0.5, 0.1], strict=True):
        result = {"training_iteration": 1, "val_accuracy": accuracy}
        out[trial.trial_id] = scheduler.on_trial_result(None, trial, result)
    last = {"training_iteration": 9, "val_accuracy": 0.1}
    out["u-last"] = scheduler.on_trial_result(None, trials[2], last)
    return out


def test_asha_stops_a_starting_point_that_plain_asha_would_stop_never() -> None:
    settings = {"time_attr": "training_iteration", "max_t": 9, "grace_period": 1, "reduction_factor": 3}
    plain = _decisions(ASHAScheduler(**settings))
    assert plain["u"] == TrialScheduler.STOP  # the case this scheduler exists for
    ours = _decisions(StartingPointASHA(**settings))
    assert ours["a"] == plain["a"] and ours["b"] == plain["b"]  # searched trials: as plain ASHA
    assert ours["u"] == TrialScheduler.CONTINUE
    assert ours["u-last"] == TrialScheduler.STOP  # at max_t every trial ends


def test_only_tagged_plans_are_starting_points() -> None:
    assert is_starting_point({CONFIG_KEY: {"tags": ["uniform"]}})
    assert is_starting_point({CONFIG_KEY: {"tags": ["energy"]}})
    assert not is_starting_point({CONFIG_KEY: {"tags": []}})
    assert not is_starting_point({"other": 1})


def test_the_scheduler_pickles_for_tunes_experiment_state() -> None:
    import pickle

    scheduler = StartingPointASHA(time_attr="training_iteration", max_t=4, grace_period=1)
    assert isinstance(pickle.loads(pickle.dumps(scheduler)), StartingPointASHA)

"""Ray pickles the searcher (and its Optuna sampler and storage) in ``Tuner.__init__``, in every
experiment checkpoint and on ``--resume``: everything the runner builds must pickle and work after."""

from __future__ import annotations

import pickle

import optuna
import pytest

from rank_search.search.searcher import make_sampler

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.mark.parametrize("name", ["tpe", "nsga2", "gp", "random"])
def test_samplers_pickle_and_sample_after(name: str) -> None:
    import ray.cloudpickle as cloudpickle

    sampler = make_sampler(name, seed=0, options={}, trials=8)
    for copy in (pickle.loads(pickle.dumps(sampler)), cloudpickle.loads(cloudpickle.dumps(sampler))):
        study = optuna.create_study(sampler=copy, directions=["maximize", "minimize"])
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("y", 1, 4)), n_trials=6)
        assert len(study.trials) == 6
        pickle.dumps(copy)  # still picklable after use (its lock was taken and released)


def test_nsga2_lock_is_a_fresh_one_in_a_copy() -> None:
    sampler = make_sampler("nsga2", seed=0, options={}, trials=8)
    lock = getattr(sampler, "_thread_lock", None)
    if lock is None:
        pytest.skip("this Optuna's NSGA-II sampler holds no lock")
    with lock:  # a copy taken while the sampler's lock is held starts unlocked
        copy = pickle.loads(pickle.dumps(sampler))
    assert copy._thread_lock is not lock and copy._thread_lock.acquire(blocking=False)
    copy._thread_lock.release()


def test_front_mode_searcher_pickles(tmp_path: object) -> None:
    """The searcher of a front-mode search, as Tuner pickles it (a journal storage, NSGA-II)."""
    import ray.cloudpickle as cloudpickle

    from rank_search.search.optuna_search import RankOptunaSearch
    from rank_search.search.runner import open_storage

    def space(trial: optuna.Trial) -> dict[str, float]:
        return {"x": trial.suggest_float("x", 0, 1)}

    searcher = RankOptunaSearch(
        space,
        tagged_points=[("uniform", {"x": 0.5})],
        max_epochs=1,
        metric=["val_accuracy", "macs"],
        mode=["max", "min"],
        sampler=make_sampler("nsga2", seed=0, options={}, trials=4),
        storage=open_storage(f"journal:{tmp_path}/optuna.journal", writer=True),
        study_name="pickle",
    )
    assert searcher.suggest("a") == {"x": 0.5}
    searcher.on_trial_complete("a", {"val_accuracy": 0.5, "macs": 10, "training_iteration": 1})
    copy = cloudpickle.loads(cloudpickle.dumps(searcher))
    assert "x" in copy.suggest("b")

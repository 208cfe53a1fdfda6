"""The Optuna side of a search: the define-by-run space function, samplers and the searcher.

:class:`SpaceFunction` is what ``OptunaSearch`` calls for every new trial: it samples the
resolved space, projects the sample onto the budget (:func:`.budget.project`) and returns the
trial's plan as constants merged into the Ray config under :data:`CONFIG_KEY`. It is a
module-level class (the searcher is pickled into Ray's experiment checkpoints).

:class:`.optuna_search.RankOptunaSearch` (a separate module, as it imports Ray) adds to
``OptunaSearch``: tagged starting points (enqueued with a ``tag`` user attribute) and honest
trial states: an error is FAIL; a trial ASHA stopped before ``max_epochs`` is PRUNED (single
objective: Optuna keeps its last intermediate value; both modes: it stays off
``study.best_trials``); ``epochs`` is stored as a user attribute.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from ..config import LayerSpec
from ..errors import ConfigError
from .budget import MACS, CostModel, Projection, project
from .space import ResolvedSpace

__all__ = ["CONFIG_KEY", "FAULT_ENV", "TAG_ATTR", "SpaceFunction", "default_sampler_options", "make_sampler"]

CONFIG_KEY = "rank_search"
TAG_ATTR = "rank_search_tag"
FAULT_ENV = "RANK_SEARCH_TEST_FAULTS"
"""Test hook, read in the driver: ``"2:diverge,5:error"`` makes those Optuna trial numbers fail.
Kinds (the trainable acts on them): ``error`` (raises before training), ``diverge`` (after the
first epoch), ``oom`` / ``memory`` (``torch.cuda.OutOfMemoryError`` / ``MemoryError`` after the
first epoch) and ``pause`` (after the first epoch's record, wait for ``trials/<id>.continue``:
a test kills the worker or removes the data meanwhile)."""


def _injected_fault(number: int) -> str | None:
    for item in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        index, _, kind = item.partition(":")
        if index.strip() == str(number):
            return kind.strip() or "error"
    return None


@dataclass
class SpaceFunction:
    """Define-by-run space: sample, project onto the budget, return the trial's plan.

    ``budget`` is in the unit of ``cost`` (MACs by default; with a latency cost, predicted ms per
    batch, and the plan, user attributes and constraint carry ``latency_ms`` as well).
    """

    space: ResolvedSpace
    budget: float
    fill_up: bool
    cost: CostModel = MACS

    @property
    def budget_unit(self) -> str:
        """The unit of :attr:`budget`: ``"MACs"``, or ``"ms"`` with a latency cost."""
        return "ms" if self.latency else "MACs"

    @property
    def budget_macs(self) -> float:
        """:attr:`budget` under its old name (kept for callers); in :attr:`budget_unit`."""
        return self.budget

    @property
    def latency(self) -> bool:
        return self.cost.metric == "latency_ms"

    def _tell(self, trial: Any, result: Projection) -> None:
        trial.set_user_attr("macs", result.macs)
        trial.set_user_attr("sampled_macs", result.sampled_macs)
        trial.set_user_attr("projected", result.projected)
        if self.latency:
            trial.set_user_attr("latency_ms", result.cost)
            trial.set_user_attr("sampled_latency_ms", result.sampled_cost)
            trial.set_constraint("latency_over_budget", result.cost / self.budget - 1.0)
        else:
            trial.set_constraint("macs_over_budget", result.macs / self.budget - 1.0)

    def __call__(self, trial: Any) -> dict[str, Any]:
        sample = self.space.suggest(trial)
        result = project(self.space, sample, self.budget, fill_up=self.fill_up, cost=self.cost)
        layers = {
            n: s.to_dict() for n, s in self.space.layer_specs(result.sample).items() if s.format != "dense"
        }
        tag = trial.user_attrs.get(TAG_ATTR)
        self._tell(trial, result)
        plan: dict[str, Any] = {
            "layers": layers,
            "regularizer": {
                "name": result.sample.regularizer.name,
                "weight": result.sample.regularizer.weight,
            },
            "train": dict(result.sample.train),
            "macs": result.macs,
            "tags": [tag] if tag else [],
            "optuna_trial_number": trial.number,
            "sampled": dict(trial.params),
            "projection": {
                "projected": result.projected,
                "scale": result.scale,
                "sampled_macs": result.sampled_macs,
                "sampled_layers": _layer_dicts(self.space.layer_specs(sample)),
            },
            "fault": _injected_fault(trial.number),
        }
        if self.latency:
            plan["latency_ms"] = result.cost
            plan["projection"]["sampled_latency_ms"] = result.sampled_cost
        return {CONFIG_KEY: plan}


def _layer_dicts(specs: dict[str, LayerSpec]) -> dict[str, dict[str, Any]]:
    return {name: spec.to_dict() for name, spec in specs.items()}


def default_sampler_options(name: str, trials: int) -> dict[str, Any]:
    """Explicit sampler settings (recorded in ``search.json``; Optuna's defaults moved between
    versions). TPE: multivariate with constant liar (trials run concurrently) and a quarter of the
    trials, 4 to 10, sampled at random first; NSGA-II: a population of a quarter, 4 to 16."""
    if name == "tpe":
        return {"multivariate": True, "constant_liar": True, "n_startup_trials": max(4, min(10, trials // 4))}
    if name == "nsga2":
        return {"population_size": max(4, min(16, trials // 4))}
    return {}


def make_sampler(name: str, *, seed: int, options: dict[str, Any], trials: int) -> Any:
    """A seeded Optuna sampler: tpe | nsga2 | gp | random (see :func:`default_sampler_options`)."""
    import optuna

    kwargs = {**default_sampler_options(name, trials), **options}
    classes = {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "gp": optuna.samplers.GPSampler,
        "random": optuna.samplers.RandomSampler,
    }
    try:
        sampler = classes[name](seed=seed, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad option for the {name} sampler: {exc}", key="sampler_options") from None
    return _picklable_locks(sampler)


_LOCK_TYPE = type(threading.Lock())


class _PicklableLock:
    """A ``threading.Lock`` that pickles as a new, unlocked lock (module level: pickled by name)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_PicklableLock, ())


def _picklable_locks(sampler: Any) -> Any:
    """Make ``sampler`` picklable: Ray pickles the searcher, and with it the sampler, in
    ``Tuner.__init__`` (its ``tuner.pkl``), in every experiment checkpoint and on ``--resume``.
    Optuna 5.1's GA samplers (our ``nsga2``) hold a ``threading.Lock``
    (``BaseGASampler._thread_lock``, made in ``__init__``, no ``__getstate__``): pickling them
    raised ``TypeError: cannot pickle '_thread.lock' object`` in every front-mode search. Swap
    each plain lock attribute, before first use, for one that pickles as a fresh lock (a lock
    guards this process's threads only; a copy needs its own). No subclass: Optuna keys the
    trials' generation attribute by the sampler's class name."""
    for key, value in list(vars(sampler).items()):
        if isinstance(value, _LOCK_TYPE):
            setattr(sampler, key, _PicklableLock())
    return sampler

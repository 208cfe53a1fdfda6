"""Run a study: validate everything, then Ray Tune (trials) + Optuna (sampler) + ASHA (stopping).

Output directory ``DIR`` (read by the analysis code; keep the layout)::

    DIR/search.json        manifest (atomic; status running | finished | interrupted)
    DIR/study.yaml         the resolved study (after --set, defaults filled in)
    DIR/optuna.journal     default Optuna storage (a journal file: an append per operation, a few
                           ms a trial; only the driver writes; ``search.json`` names it as
                           ``journal:<path>``; a ``storage:`` SQLAlchemy URL in the study still works)
    DIR/ray/<study_name>/  Ray experiment (trial checkpoints; what --resume restores)
    DIR/trials/<id>.json   one record per trial (see records.py); trials/lost/ holds records of
                           trials a killed driver had started after Ray's last checkpoint
    DIR/best.json          rank config of the best fully trained trial, with provenance
    DIR/trials/invalid/    unreadable trial records set aside by ``--resume`` (see records.py)
    DIR/optuna.journal.bak the journal as found, when ``--resume`` cut a torn last entry off

Before anything launches: the study, space, data, budget (:class:`BudgetError` with the
smallest reachable budget) and starting points are checked; a latency budget's table is
prefilled then, in the driver, before any trial trains (trials only look latencies up). Locally
Ray is started with ``include_dashboard=False``, a small object store and the CPUs
:func:`rank_search.threads.ray_cpus` gives it, and shut down in ``finally``; with an address the
search joins that cluster, and ``DIR`` must then be on a path every node sees. Workers get the
OpenMP wait policy through the runtime environment (:mod:`rank_search.threads`).

Cost of the plumbing (issue 11): a trial checkpoints only every ``CHECKPOINT_INTERVAL_S`` (what a
resume after a kill continues from; a finished trial is known from its record, see
:mod:`.trainable`), so Ray's forced experiment snapshot (``num_to_keep=1``) no longer follows
every epoch and its warning about frequent snapshots stays on; Tune's CSV/JSON/TensorBoard
loggers are off unless ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0`` is set; Optuna writes to a journal.

Faults (issue 21, ``tests/test_faults.py``): a trial whose worker dies, that runs out of memory or
raises is recorded ``failed`` and the search goes on. A cause outside the trials stops the search
with :class:`~rank_search.errors.SearchStopped`, resumable: no space left on the device (any
write of the driver, or a trial's), or the data root gone (seen when a trial fails). On
``--resume`` a journal whose last entry is torn is cut back to its last whole entry (the original
kept beside it) and unreadable trial records are set aside (:func:`.records.set_aside`).
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import atomic_write_json, atomic_write_text
from .._rundir import refuse_other_kind
from .._version import __version__
from ..errors import ConfigError, RankSearchError, SearchStopped
from .budget import MACS, CostModel, LatencyCost, check_budget, uniform_sample
from .records import (
    FINAL_STATUSES,
    INVALID_DIR,
    UNIFORM_TAG,
    TrialRecord,
    read_records,
    set_aside,
    unreadable_records,
)
from .space import ResolvedSpace, load_space, resolve_space, trials_warning
from .study import Study, parse_study
from .trainable import TrialSetup

if TYPE_CHECKING:
    from ..latency import LatencyBudget

__all__ = ["SearchOutcome", "SearchPlan", "open_storage", "prepare", "repair_journal", "run_search"]

MANIFEST = "search.json"
FORMAT_ID = "rank-search/search"
METRIC = "val_accuracy"
OBJECT_STORE_BYTES = 256 * 2**20
CHECKPOINT_INTERVAL_S = 600.0
"""A trial checkpoints after an epoch ending this long after its start or last checkpoint."""
JOURNAL_PREFIX = "journal:"
REUSE_TIMEOUT_S = "60"
"""``TUNE_FUNCTION_THREAD_TIMEOUT_S`` for the workers: how long a reused worker waits for the last
trial's thread to end before the next trial starts on it. Tune's default, 2 s, is too short on a
busy machine: the next trial then errors before it runs, with no event a callback sees (found by
``benchmarks/soak.py`` under a load average of 70 on 2 cores)."""
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class SearchPlan:
    """Everything a search needs, checked before launch (no Ray involved)."""

    study: Study
    out_dir: Path
    space: ResolvedSpace
    budget_macs: int | None  # None under a latency budget
    study_name: str
    storage_url: str
    points: list[tuple[str, dict[str, Any]]]
    setup: TrialSetup
    cost: CostModel = MACS
    latency: LatencyBudget | None = None

    @property
    def ray_path(self) -> Path:
        return self.out_dir / "ray" / self.study_name

    @property
    def budget(self) -> float:
        """The budget in the unit of :attr:`cost`: MACs, or predicted ms per batch."""
        if self.latency is not None:
            return self.latency.latency_ms
        assert self.budget_macs is not None
        return self.budget_macs

    @property
    def axis(self) -> str:
        """``macs`` or ``latency``: what the budget limits."""
        return "macs" if self.latency is None else "latency"


@dataclass
class SearchOutcome:
    """What a finished (or interrupted) search produced."""

    out_dir: Path
    status: str
    records: list[TrialRecord]
    best: TrialRecord | None
    best_path: Path | None
    front: list[TrialRecord] = field(default_factory=list)
    selection: str | None = None  # which rule chose the best and why (search.selection)
    tied: int = 1  # trials the paired test could not tell from the best (1: it told them apart)
    left_out: list[str] = field(default_factory=list)  # ended trials whose record was unreadable


# --- planning -------------------------------------------------------------------------------------


def _timestamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _train_settings(study: Study) -> dict[str, Any]:
    from ..train import TrainConfig

    base = TrainConfig().to_dict()
    base.update(study.train)
    base.update(epochs=study.epochs_per_trial, seed=study.seed)
    return base


def _starting_points(
    study: Study, space: ResolvedSpace, budget: float, cost: CostModel
) -> list[tuple[str, dict[str, Any]]]:
    from ..config import load_rank_config

    points = []
    train_defaults = {k: v for k, v in _train_settings(study).items() if isinstance(v, float)}
    if study.starting_points.uniform:
        points.append(
            (
                UNIFORM_TAG,
                space.params(uniform_sample(space, budget, train_defaults=train_defaults, cost=cost)),
            )
        )
    for index, path in enumerate(study.config_paths()):
        config = load_rank_config(path)
        if config.model.name != space.model:
            raise ConfigError(
                f"{path} is a config of {config.model.name}, not {space.model}",
                key=f"starting_points.configs[{index}]",
                source=study.source,
            )
        sample = space.sample_from_layers(config.layers, config.regularizer, train_defaults)
        tag = "dprp" if config.provenance.get("source") == "dprp" else "config"
        tag = str(config.provenance.get("allocation", tag))  # a compress baseline names its method
        points.append((tag, space.params(sample)))
    return points


def _absolute_sqlite(url: str | None) -> str | None:
    """A SQLite URL with its path made absolute (relative to the working directory)."""
    prefix = "sqlite:///"
    if url is None or not url.startswith(prefix):
        return url
    if url.startswith(prefix + "/") or url == prefix + ":memory:":
        return url
    return prefix + str(Path(url[len(prefix) :]).resolve())


def prepare(
    study: Study, out_dir: str | Path, *, study_name: str | None = None, storage_url: str | None = None
) -> SearchPlan:
    """Load data, resolve the space, check the budget and starting points. Raises before launch."""
    from ..convert import layer_infos
    from ..data import DataOptions, load_data

    out = Path(out_dir).resolve()
    data = load_data(study.data, DataOptions(**study.data_options))
    if data.split_size("val") == 0:
        raise ConfigError(
            "the search needs a validation split: set val_fraction > 0",
            key="data_options.val_fraction",
            source=study.source,
        )
    size = (int(data.input_size[0]), int(data.input_size[1]), int(data.input_size[2]))
    infos = list(layer_infos(study.model, data.num_classes, size).values())
    space = resolve_space(
        load_space(study.space_path()), study.model, infos, num_classes=data.num_classes, input_size=size
    )
    budget_macs, cost = _budget_cost(study, space)
    budget = study.budget.latency.latency_ms if study.budget.latency is not None else budget_macs
    assert budget is not None
    check_budget(space, budget, cost)
    setup = TrialSetup(
        str(out),
        study.model,
        data.num_classes,
        size,
        study.data,
        dict(study.data_options),
        _train_settings(study),
        space.dense_macs,
        cpus=study.resources.cpu,
        checkpoint_interval_s=CHECKPOINT_INTERVAL_S,
    )
    return SearchPlan(
        study=study,
        out_dir=out,
        space=space,
        budget_macs=budget_macs,
        study_name=study_name or f"{study.name}-{_timestamp()}",
        storage_url=storage_url or _absolute_sqlite(study.storage) or _default_storage(out),
        points=_starting_points(study, space, budget, cost),
        setup=setup,
        cost=cost,
        latency=study.budget.latency,
    )


def _default_storage(out: Path) -> str:
    return f"{JOURNAL_PREFIX}{out / 'optuna.journal'}"


def open_storage(url: str, *, writer: bool = False) -> Any:
    """The Optuna storage ``url`` names: ``journal:<path>`` (a journal file) or a SQLAlchemy URL.

    ``writer=True`` (the search driver, the journal's only writer): appends take no file lock
    and no ``fsync``; a write sits in the page cache, so a killed driver loses nothing (a machine
    crash may lose the last writes). This is what keeps sampling a trial in milliseconds per
    operation on a busy disk. The file is Optuna's ordinary journal format either way.
    """
    import optuna

    if url.startswith(JOURNAL_PREFIX):
        path = url[len(JOURNAL_PREFIX) :]
        if writer:
            from .optuna_search import DriverJournal  # module level: the searcher is pickled

            return optuna.storages.JournalStorage(DriverJournal(path))
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(path))
    return optuna.storages.RDBStorage(url)


def _budget_cost(study: Study, space: ResolvedSpace) -> tuple[int | None, CostModel]:
    """The MACs budget and :data:`MACS`, or ``None`` and a :class:`LatencyCost` whose table is
    prefilled now (every rank-grid point of the space's formats: trials never measure)."""
    latency = study.budget.latency
    if latency is None:
        return study.budget.resolve(space.dense_macs), MACS
    formats = sorted({fmt for unit in space.units for fmt in unit.low_rank_formats})
    table = latency.table()
    table.prefill(space.model, space.input_size, latency.batch_size, formats, space.num_classes)
    return None, LatencyCost(table, latency.batch_size)


# --- manifest -------------------------------------------------------------------------------------


def _manifest(plan: SearchPlan, status: str, started: str, finished: str | None) -> dict[str, Any]:
    study = plan.study
    manifest: dict[str, Any] = {
        "format": FORMAT_ID,
        "version": 1,
        "study_name": plan.study_name,
        "storage": plan.storage_url,
        "model": study.model,
        "num_classes": plan.space.num_classes,
        "input_size": list(plan.space.input_size),
        "data": study.data,
        "space": str(study.space_path()),
        "mode": study.mode,
        "sampler": study.sampler,
        "sampler_settings": sampler_settings(study),
        "budget_macs": plan.budget_macs,
        "dense_macs": plan.space.dense_macs,
        "epochs_per_trial": study.epochs_per_trial,
        "asha": {
            "enabled": study.asha.enabled,
            "grace_period": study.asha.grace_period,
            "reduction_factor": study.asha.reduction_factor,
        },
        "metric": METRIC,
        "ray_path": str(plan.ray_path),
        "status": status,
        "started": started,
        "finished": finished,
        "rank_search_version": __version__,
    }
    latency = plan.latency  # the latency keys are null for MACs budgets
    manifest.update(
        budget_latency_ms=latency.latency_ms if latency else None,
        latency_device=latency.device if latency else None,
        latency_batch_size=latency.batch_size if latency else None,
        latency_table=str(plan.cost.table.path) if isinstance(plan.cost, LatencyCost) else None,
    )
    return manifest


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RankSearchError(f"{out_dir} holds no search ({MANIFEST} missing); nothing to resume") from None
    return data


def _write_study(plan: SearchPlan) -> None:
    import yaml

    data = plan.study.to_dict()
    data["space"] = str(plan.study.space_path())
    data["starting_points"]["configs"] = [str(p) for p in plan.study.config_paths()]
    header = f"# resolved study of {plan.study_name} (rank-search {__version__}); paths made absolute\n"
    text = yaml.safe_dump(data, sort_keys=False)
    atomic_write_text(plan.out_dir / "study.yaml", header + text)


# --- Ray ------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    """A progress line (the first trial line comes only after a trial's first epoch)."""
    print(f"rank-search: {message}", file=sys.stdout, flush=True)


def _init_ray(address: str | None, verbose: bool) -> bool:
    """Start (or join) Ray unless it is running in this process; True if we must shut it down."""
    from ..threads import prepare_process, ray_cpus, worker_env

    prepare_process()  # local workers inherit the driver's environment
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1":  # so the ResultGrid finds no
        # result.json; we never read it (the trial records are the results): no warning about it
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if not verbose:  # the old reporter honours verbose=0: no config box, no TensorBoard hint
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)  # Tuner.restore hint: we print ours
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", REUSE_TIMEOUT_S)
    env_vars = {
        **worker_env(),
        "TUNE_FUNCTION_THREAD_TIMEOUT_S": os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"],
    }
    runtime_env = {"env_vars": env_vars}
    level = logging.INFO if verbose else logging.WARNING
    if address:
        ray.init(address=address, log_to_driver=verbose, runtime_env=runtime_env, logging_level=level)
    else:  # "local": always a fresh cluster, never one left running on this machine (or a killed driver's)
        # a throwaway cluster on this machine: no auth token written into ~/.ray (RAY_AUTH_MODE wins)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Ray renices its workers to 15 by default: on a busy machine the trials then get a few
        # percent of a core while every other process runs at full speed. Trials are the work here.
        os.environ.setdefault("RAY_worker_niceness", "0")
        cpus = ray_cpus()
        _say(f"starting a local Ray cluster with {cpus} CPUs ...")
        ray.init(
            address="local",
            logging_level=level,
            num_cpus=cpus,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            log_to_driver=verbose,
            runtime_env=runtime_env,
        )
    return True


def _concurrency(study: Study) -> int:
    import ray

    if study.resources.concurrency is not None:
        return study.resources.concurrency
    total = ray.cluster_resources()
    fits = [total.get("CPU", 1) / study.resources.cpu]
    if study.resources.gpu > 0:
        fits.append(total.get("GPU", 0) / study.resources.gpu)
    return max(1, min(int(min(fits) + 1e-9), study.trials))


def trial_dirname(trial: Any) -> str:
    """Short trial folder and display names (the default embeds every parameter)."""
    return f"trial_{trial.trial_id}"


def sampler_settings(study: Study) -> dict[str, Any]:
    """The sampler's keyword arguments: explicit defaults, then the study's ``sampler_options``."""
    from .searcher import default_sampler_options

    return {**default_sampler_options(study.sampler, study.trials), **study.sampler_options}


def _searcher(plan: SearchPlan) -> Any:
    from .optuna_search import RankOptunaSearch
    from .searcher import SpaceFunction, make_sampler

    study = plan.study
    front = study.mode == "front"
    options = sampler_settings(study)
    sampler = make_sampler(study.sampler, seed=study.seed, options=options, trials=study.trials)
    return RankOptunaSearch(
        SpaceFunction(plan.space, plan.budget, fill_up=not front, cost=plan.cost),
        tagged_points=plan.points,
        max_epochs=study.epochs_per_trial,
        total_trials=study.trials,
        metric=[METRIC, plan.cost.metric] if front else METRIC,
        mode=["max", "min"] if front else "max",
        sampler=sampler,
        storage=open_storage(plan.storage_url, writer=True),
        study_name=plan.study_name,
    )


def _scheduler(study: Study) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    from .scheduler import StartingPointASHA

    if not study.asha.enabled:
        return FIFOScheduler()
    return StartingPointASHA(
        metric=METRIC,
        mode="max",
        time_attr="training_iteration",
        max_t=study.epochs_per_trial,
        grace_period=study.asha.grace_period,
        reduction_factor=study.asha.reduction_factor,
        brackets=1,
    )


def _trainable(plan: SearchPlan) -> Any:
    from ray import tune

    from .trainable import train_trial

    resources = {"cpu": plan.study.resources.cpu, "gpu": plan.study.resources.gpu}
    return tune.with_resources(tune.with_parameters(train_trial, setup=plan.setup), resources)


def _new_tuner(plan: SearchPlan, verbose: bool) -> Any:
    import optuna
    from ray import tune

    from .callbacks import RecordCallback

    study = plan.study
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    tune_config = tune.TuneConfig(
        search_alg=_searcher(plan),
        scheduler=_scheduler(study),
        num_samples=study.trials,
        max_concurrent_trials=_concurrency(study),
        reuse_actors=True,
        trial_name_creator=trial_dirname,
        trial_dirname_creator=trial_dirname,
    )
    callback = RecordCallback(
        str(plan.out_dir),
        study.epochs_per_trial,
        study.trials,
        plan.space.dense_macs,
        data_root=_data_root(study),
    )
    run_config = tune.RunConfig(
        name=plan.study_name,
        storage_path=str(plan.out_dir / "ray"),
        failure_config=tune.FailureConfig(max_failures=0),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[callback],
        verbose=1 if verbose else 0,
    )
    return tune.Tuner(_trainable(plan), tune_config=tune_config, run_config=run_config)


def _restored_tuner(plan: SearchPlan, retry_failed: bool) -> Any:
    from ray import tune

    path = str(plan.ray_path)
    if not tune.Tuner.can_restore(path):
        raise RankSearchError(
            f"Ray saved no experiment state under {path} yet; start the search again "
            "without --resume (in a new output directory)"
        )
    return tune.Tuner.restore(path, trainable=_trainable(plan), resume_errored=retry_failed)


def _settle_ended_optuna_trials(plan: SearchPlan) -> None:
    """Before ``--resume``: tell Optuna how each trial ended whose record is final but which Optuna
    still holds RUNNING (the driver was killed between the trial's last record and its ``tell``).

    The trial files are the source of truth. Told here, such a trial counts against the planned
    total (``RankOptunaSearch.suggest``) and is not sampled again; one that Ray restarts is only
    replayed from its record, and the searcher sees Optuna was told (``_told_before``)."""
    import optuna

    state = optuna.trial.TrialState
    ended = {
        r.optuna_trial_number: r
        for r in read_records(plan.out_dir)
        if r.status in FINAL_STATUSES and r.optuna_trial_number is not None
    }
    study = optuna.load_study(study_name=plan.study_name, storage=open_storage(plan.storage_url, writer=True))
    for trial in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
        record = ended.get(trial.number)
        if record is None:
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "epochs", record.epochs)
        if record.status in ("failed", "diverged") or record.val_accuracy is None:
            study.tell(trial.number, state=state.FAIL)
        elif record.epochs < record.epochs_planned:
            study.tell(trial.number, state=state.PRUNED)
        elif plan.study.mode == "front":
            study.tell(trial.number, [record.val_accuracy, _cost(record, plan.axis)])
        else:
            study.tell(trial.number, record.val_accuracy)


def _repair_before_resume(plan: SearchPlan) -> None:
    """Before ``--resume``: cut a torn last journal entry off, set unreadable trial records aside
    (one line each), then settle the trials Optuna still holds running (see above)."""
    if plan.storage_url.startswith(JOURNAL_PREFIX):
        note = repair_journal(Path(plan.storage_url[len(JOURNAL_PREFIX) :]))
        if note is not None:
            _say(note)
    for path, problem in unreadable_records(plan.out_dir):
        target = set_aside(path)
        _say(
            f"{path}: {problem}; moved to {target.relative_to(plan.out_dir)}: the trial is rerun if "
            "it had not ended, else left out of the results (never counted as a result)"
        )
    _settle_ended_optuna_trials(plan)


def repair_journal(path: Path) -> str | None:
    """Cut the Optuna journal ``path`` back to its last whole entry, or return None when it ends
    with one. A torn last entry (the writer killed mid-append, a copy cut off) is ignored by
    Optuna's reader, but the next append would be glued onto it and make the journal unreadable.
    The original is kept as ``<name>.bak`` (numbered if taken); returns the line to print."""
    if not path.is_file():
        return None
    data = path.read_bytes()  # a few kB a trial
    if not data:
        return None
    keep = data.rfind(b"\n") + 1  # everything up to the last line end
    if keep == len(data):  # ends with a line end: is that last line a whole entry?
        start = data.rfind(b"\n", 0, max(0, keep - 1)) + 1
        try:
            json.loads(data[start:keep])
            return None
        except ValueError:
            keep = start
    backup, index = path.with_name(path.name + ".bak"), 1
    while backup.exists():
        backup, index = path.with_name(f"{path.name}.bak{index}"), index + 1
    shutil.copyfile(path, backup)
    os.truncate(path, keep)
    entries = data[:keep].count(b"\n")
    return (
        f"{path}: the last entry is cut off ({len(data) - keep} bytes); kept the original as "
        f"{backup.name} and cut the journal back to its last whole entry (entry {entries})"
    )


def _left_out(out: Path, records: list[TrialRecord]) -> list[str]:
    """Trials whose unreadable record ``--resume`` set aside and that were not rerun."""
    have = {r.trial_id for r in records}
    folder = out / "trials" / INVALID_DIR
    ids = {p.name.split(".")[0] for p in folder.glob("*.json")} if folder.is_dir() else set()
    return sorted(ids - have)


def _data_root(study: Study) -> str | None:
    """The study's data folder (None for ``builtin``): a trial failing once it is gone stops the
    search (:class:`.callbacks.RecordCallback`)."""
    from ..data import parse_data_spec

    root = parse_data_spec(study.data).root
    return None if root is None else str(root.expanduser().resolve())


def _fail_orphaned_optuna_trials(plan: SearchPlan) -> None:
    """Optuna trials left RUNNING by a killed driver (never run by Ray) are marked FAIL."""
    import optuna

    study = optuna.load_study(study_name=plan.study_name, storage=open_storage(plan.storage_url))
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


# --- results --------------------------------------------------------------------------------------


def _finish(plan: SearchPlan, status: str) -> SearchOutcome:
    """Select the best trial and write ``best.json`` through the one owner of selection
    (:func:`rank_search.search.selection.select_at_budget`: fully trained, cost within the budget,
    the cheapest trial the best one does not beat by a paired test) and of the exported provenance
    (:func:`rank_search.search.export.export_best`); analysis re-exports both."""
    from ..errors import BudgetError
    from .export import export_rows
    from .results import load_search
    from .selection import axis_column, pareto_front, select_at_budget, selection_note, tied_count

    records = read_records(plan.out_dir)
    if not records:  # stopped before any trial wrote a record (an early Ctrl-C)
        return SearchOutcome(plan.out_dir, status, records, None, None, [])
    by_id = {r.trial_id: r for r in records}
    results = load_search(plan.out_dir)
    on_front = pareto_front(results.trials, axis=plan.axis)
    within = on_front[on_front[axis_column(plan.axis)] <= plan.budget] if len(on_front) else on_front
    front = [by_id[str(t)] for t in within["trial_id"] if str(t) in by_id]
    try:
        chosen = select_at_budget(results.trials, plan.budget, axis=plan.axis)
    except BudgetError:
        return SearchOutcome(plan.out_dir, status, records, None, None, front)
    best_path = export_rows(results, chosen, plan.budget, plan.out_dir / "best.json", axis=plan.axis)[0]
    best = by_id[str(chosen.iloc[0]["trial_id"])]
    note, tied = selection_note(chosen), tied_count(chosen)
    return SearchOutcome(plan.out_dir, status, records, best, best_path, front, note, tied)


def _cost(record: TrialRecord, axis: str) -> float:
    if axis == "macs":
        return record.macs
    return math.inf if record.latency_ms is None else record.latency_ms


# --- entry point ----------------------------------------------------------------------------------


def _plan_for(study: Study, out: Path, resume: bool) -> tuple[SearchPlan, str]:
    """A new plan, or the saved one when resuming (the saved study wins)."""
    refuse_other_kind(out, "search")
    if resume:
        manifest = read_manifest(out)
        import yaml

        saved = yaml.safe_load((out / "study.yaml").read_text(encoding="utf-8"))
        saved_study = parse_study(saved, source=str(out / "study.yaml"))
        plan = prepare(saved_study, out, study_name=manifest["study_name"], storage_url=manifest["storage"])
        return plan, str(manifest.get("started") or _now())
    if (out / MANIFEST).exists():
        raise RankSearchError(f"{out} already holds a search; continue it with --resume or choose another -o")
    return prepare(study, out), _now()


def run_search(
    study: Study,
    out_dir: str | Path,
    *,
    resume: bool = False,
    address: str | None = None,
    verbose: bool = False,
    retry_failed: bool = False,
    sigterm_as_ctrl_c: bool = False,
) -> SearchOutcome:
    """Run (or resume) ``study`` with results in ``out_dir``; see the module docstring.
    ``sigterm_as_ctrl_c`` (the CLI): once Ray is up, SIGTERM stops the search as Ctrl-C does."""
    from .callbacks import stop_reason

    out = Path(out_dir).resolve()
    begin = time.perf_counter()
    _say(f"checking the study, data and budget of {study.name} ...")
    plan, started = _plan_for(study, out, resume)
    if warning := trials_warning(plan.space, study.trials):
        _say(f"warning: {warning}")
    out.mkdir(parents=True, exist_ok=True)
    status, done = "interrupted", False
    shutdown = False
    try:
        if not resume:
            _write_study(plan)
        atomic_write_json(out / MANIFEST, _manifest(plan, "running", started, None))
        shutdown = _init_ray(address, verbose)
        stop_reason(out, clear=True)
        if resume:
            _repair_before_resume(plan)
        tuner = _restored_tuner(plan, retry_failed) if resume else _new_tuner(plan, verbose)
        _say(
            f"{'resuming' if resume else 'running'} {plan.study.trials} trials of "
            f"{plan.study.epochs_per_trial} epochs ({time.perf_counter() - begin:.0f} s to start); "
            "a line per trial as it ends"
        )
        with _sigterm_as_interrupt(sigterm_as_ctrl_c):
            tuner.fit()
        reason = stop_reason(out, clear=True)
        if reason is not None:
            raise SearchStopped(reason)
        outcome = _outcome(plan)
        status, done = outcome.status, True
    except OSError as exc:
        if exc.errno not in NO_SPACE_ERRNOS:
            raise
        raise SearchStopped.no_space(exc.filename or out) from None
    finally:
        _close_manifest(plan, status, started, raise_errors=done)
        if shutdown:
            import ray

            ray.shutdown()
    return outcome


def _outcome(plan: SearchPlan) -> SearchOutcome:
    """The ended search: finished when every planned trial ended (the records count: a trial that
    ended after Ray's last snapshot of a killed driver is kept from its record, not rerun; an ended
    trial whose record was unreadable counts, left out) and none was cut off."""
    records = read_records(plan.out_dir)
    left_out = _left_out(plan.out_dir, records)
    ended = sum(r.status in FINAL_STATUSES for r in records) + len(left_out)
    cut = any(r.status in ("running", "interrupted") for r in records)
    status = "finished" if ended >= plan.study.trials and not cut else "interrupted"
    if status == "finished":
        _fail_orphaned_optuna_trials(plan)
    outcome = _finish(plan, status)
    outcome.left_out = left_out
    return outcome


def _term_as_interrupt(signum: int, frame: Any) -> None:
    signal.raise_signal(signal.SIGINT)


@contextmanager
def _sigterm_as_interrupt(enabled: bool) -> Iterator[None]:
    """While the trials run, SIGTERM (how job schedulers stop a job) does what Ctrl-C does: Tune
    stops, keeps the running trials for ``--resume`` and ``fit`` returns. Set after ``ray.init``,
    which installs its own SIGTERM handler (exit at once); that one is put back after.

    Tune installs its own SIGINT and SIGUSR1 handlers in ``fit`` and leaves them installed when
    the run ends normally: the next Ctrl-C in this process (a notebook's) would only set a stale
    flag of a finished run. Both are put back as they were, whether or not ``enabled``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1, signal.SIGTERM)}
    if enabled:
        signal.signal(signal.SIGTERM, _term_as_interrupt)
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:  # None: set from C, cannot be put back from Python
                signal.signal(sig, handler)


def _close_manifest(plan: SearchPlan, status: str, started: str, *, raise_errors: bool) -> None:
    """Write the manifest's final status. On a full disk while another error is on its way, the
    manifest keeps ``running`` (a search ``--resume`` continues) and that error is the one told."""
    try:
        atomic_write_json(plan.out_dir / MANIFEST, _manifest(plan, status, started, _now()))
    except OSError as exc:
        if not raise_errors:
            return
        if exc.errno in NO_SPACE_ERRNOS:
            raise SearchStopped.no_space(exc.filename or plan.out_dir) from None
        raise

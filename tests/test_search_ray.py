"""Ray Tune searches end to end on CPU: both modes, failing trials, resume after SIGKILL of the
driver, and a local multi-node cluster. Tiny data (builtin digits, 200 images), resnet20, 1-3 epochs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from fixtures.processes import local_ray

from rank_search.config import load_rank_config
from rank_search.outcomes import decode_outcomes
from rank_search.search.records import FINAL_STATUSES, TrialRecord, read_records
from rank_search.search.runner import open_storage, run_search
from rank_search.search.searcher import FAULT_ENV
from rank_search.search.study import Study, load_study

REPO = Path(__file__).resolve().parents[1]
MANIFEST_KEYS = {
    "budget_latency_ms",
    "latency_device",
    "latency_batch_size",
    "latency_table",
    "format",
    "version",
    "study_name",
    "storage",
    "model",
    "num_classes",
    "input_size",
    "data",
    "space",
    "mode",
    "sampler",
    "sampler_settings",
    "budget_macs",
    "dense_macs",
    "epochs_per_trial",
    "asha",
    "metric",
    "ray_path",
    "status",
    "started",
    "finished",
    "rank_search_version",
}
RECORD_KEYS = {
    "trial_id",
    "optuna_trial_number",
    "status",
    "epochs",
    "epochs_planned",
    "tags",
    "rank_config",
    "sampled",
    "macs",
    "dense_macs",
    "params",
    "val_accuracy",
    "best_val_accuracy",
    "val_size",
    "history",
    "wall_time_s",
    "node_id",
    "error",
}
TINY: dict[str, Any] = {
    "model": "resnet20",
    "data": "builtin",
    "data_options": {"val_fraction": 0.25, "max_train_samples": 200},
    "space": "cifar-resnet",
    "budget": 0.5,
    "trials": 5,
    "epochs_per_trial": 2,
    "asha": {"enabled": True, "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1},
    "seed": 0,
    "train": {"batch_size": 32, "lr": 0.05, "device": "cpu", "warmup_epochs": 0.5},
}

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    with local_ray():
        yield


def make_study(tmp_path: Path, name: str, **changes: Any) -> tuple[Path, Study]:
    data = {**TINY, "name": name, **changes}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, load_study(path)


def check_output(out: Path, trials: int) -> tuple[dict[str, Any], list[TrialRecord]]:
    manifest = json.loads((out / "search.json").read_text())
    assert set(manifest) == MANIFEST_KEYS and manifest["status"] == "finished"
    assert manifest["format"] == "rank-search/search" and Path(manifest["ray_path"]).is_dir()
    assert (out / "study.yaml").is_file()
    records = read_records(out)
    assert len(records) == trials
    for record in records:
        data = json.loads((out / "trials" / f"{record.trial_id}.json").read_text())
        assert set(data) >= RECORD_KEYS
        assert record.status in FINAL_STATUSES
        assert record.macs <= manifest["budget_macs"], "no trial may train over budget"
        assert len(record.history) == record.epochs
        if record.status == "stopped":
            assert record.epochs < record.epochs_planned
        if record.status == "completed":
            assert record.epochs == record.epochs_planned and record.val_accuracy is not None
            assert record.val_size is not None and record.val_size > 0
            outcomes = decode_outcomes(record.val_outcomes)  # paired selection needs them
            assert outcomes is not None and outcomes.size == record.val_size
            assert outcomes.mean() == pytest.approx(record.val_accuracy)
    numbers = [r.optuna_trial_number for r in records]
    assert len(set(numbers)) == trials
    return manifest, records


def optuna_trials(manifest: dict[str, Any]) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(
        study_name=manifest["study_name"], storage=open_storage(manifest["storage"])
    ).trials


@pytest.mark.slow
def test_search_at_budget_end_to_end_with_failing_trials(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_ENV, "2:diverge,4:error")
    _, study = make_study(tmp_path, "e2e", trials=6)
    out = tmp_path / "out"
    outcome = run_search(study, out)
    manifest, records = check_output(out, study.trials)
    assert manifest["storage"] == f"journal:{out / 'optuna.journal'}" and (out / "optuna.journal").is_file()
    assert manifest["sampler_settings"] == {
        "multivariate": True,
        "constant_liar": True,
        "n_startup_trials": 4,
    }
    by_number = {r.optuna_trial_number: r for r in records}
    # a diverged and a crashed trial are recorded and the search goes on
    assert by_number[2].status == "diverged" and "divergence" in (by_number[2].error or "")
    assert by_number[4].status == "failed" and "injected error" in (by_number[4].error or "")
    assert by_number[5].status in ("completed", "stopped")
    assert by_number[0].tags == ["uniform"] and by_number[0].macs >= 0.99 * manifest["budget_macs"]
    assert outcome.status == "finished" and outcome.best is not None and outcome.best.status == "completed"
    best = load_rank_config(out / "best.json")
    assert best.provenance["trial_id"] == outcome.best.trial_id
    states = {t.number: t for t in optuna_trials(manifest)}
    expected = {"completed": "COMPLETE", "stopped": "PRUNED", "diverged": "FAIL", "failed": "FAIL"}
    for record in records:
        trial = states[record.optuna_trial_number]
        assert trial.state.name == expected[record.status]
        if record.status in ("completed", "stopped"):
            assert trial.user_attrs["epochs"] == record.epochs
    with pytest.raises(Exception, match="already holds a search"):
        run_search(study, out)


@pytest.mark.slow
def test_search_front_mode(ray_session: None, tmp_path: Path) -> None:
    _, study = make_study(
        tmp_path,
        "front",
        mode="front",
        sampler="nsga2",
        trials=4,
        epochs_per_trial=1,
        asha={"enabled": False},
        budget={"fraction": 0.6},
    )
    out = tmp_path / "out"
    outcome = run_search(study, out)
    manifest, records = check_output(out, 4)
    assert manifest["mode"] == "front" and outcome.front
    assert len({r.macs for r in records}) > 1, "front mode does not push every trial to the budget"
    complete = [t for t in optuna_trials(manifest) if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and all(len(t.values) == 2 for t in complete)
    assert (out / "best.json").is_file()


@pytest.mark.slow
def test_two_searches_in_one_process(ray_session: None, tmp_path: Path) -> None:
    """A notebook runs searches back to back in one Ray session: an at-budget TPE search, then a
    front NSGA-II one (Ray pickles the searcher and its sampler in ``Tuner.__init__``; Optuna
    5.1's NSGA-II holds a thread lock, see ``searcher._picklable_locks``)."""
    tiny = {"trials": 2, "epochs_per_trial": 1, "asha": {"enabled": False}}
    _, first = make_study(tmp_path, "first", **tiny)
    _, second = make_study(
        tmp_path, "second", mode="front", sampler="nsga2", budget={"fraction": 0.6}, **tiny
    )
    ctrl_c = signal.getsignal(signal.SIGINT)
    for study in (first, second):
        out = tmp_path / study.name
        assert run_search(study, out).status == "finished"
        check_output(out, 2)
        assert signal.getsignal(signal.SIGINT) is ctrl_c  # Tune's handler is not left behind


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rank_search", "search", *args]


def wait_for_completed_record(out: Path, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the search ended before it could be killed"
        for path in (out / "trials").glob("*.json"):
            try:
                if json.loads(path.read_text())["status"] == "completed":
                    return
            except (OSError, ValueError, KeyError):
                continue
        time.sleep(0.5)
    raise AssertionError("no trial completed in time")


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path: Path) -> None:
    path, _ = make_study(
        tmp_path,
        "resume",
        trials=4,
        epochs_per_trial=2,
        asha={"enabled": False},
        resources={"cpu": 1, "concurrency": 1},
    )
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen(cli(str(path), "-o", str(out)), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_completed_record(out, first, timeout=240)
        time.sleep(1.0)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    before = {r.trial_id: r for r in read_records(out) if r.status == "completed"}
    assert before and json.loads((out / "search.json").read_text())["status"] == "running"
    second = subprocess.run(
        cli(str(path), "-o", str(out), "--resume"), capture_output=True, env=env, timeout=400
    )
    assert second.returncode == 0, second.stdout.decode()[-3000:] + second.stderr.decode()[-3000:]
    manifest, records = check_output(out, 4)
    after = {r.trial_id: r for r in records}
    for trial_id, record in before.items():  # completed trials are kept as they were, not retrained
        assert after[trial_id].status == "completed" and after[trial_id].history == record.history
    complete = [t for t in optuna_trials(manifest) if t.state.name == "COMPLETE"]
    assert len(complete) == sum(r.status == "completed" for r in records) == 4
    # the CLI put the OpenMP wait policy into the workers' environment before torch was imported
    assert all(r.threads == {"torch_threads": 1, "omp_wait_policy": "PASSIVE"} for r in records)


CLUSTER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    from rank_search.search.runner import open_storage, run_search
    from rank_search.search.study import load_study

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        outcome = run_search(load_study(sys.argv[1]), sys.argv[2])
        print(json.dumps({"nodes": len(ray.nodes()), "status": outcome.status}))
    finally:
        ray.shutdown()
        cluster.shutdown()
    """
)


@pytest.mark.slow
def test_search_spreads_over_a_multi_node_cluster(tmp_path: Path) -> None:
    path, _ = make_study(tmp_path, "cluster", trials=3, epochs_per_trial=1, asha={"enabled": False})
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", CLUSTER_SCRIPT, str(path), str(out)], capture_output=True, timeout=400
    )
    assert result.returncode == 0, result.stdout.decode()[-3000:] + result.stderr.decode()[-3000:]
    # the summary is the script's last JSON line: Ray may print log lines after it at shutdown
    # (its log deduplication flushes "[repeated 5x across cluster]")
    summary = json.loads([line for line in result.stdout.decode().splitlines() if line.startswith("{")][-1])
    assert summary == {"nodes": 3, "status": "finished"}
    _, records = check_output(out, 3)
    assert len({r.node_id for r in records}) > 1

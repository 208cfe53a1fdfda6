"""Latency budgets in the search: parsing, projection onto predicted latency, the smallest reachable
latency, a tiny front-mode Ray search under a latency budget, and its analysis on the latency axis.

The latency tables are prefilled with short timings (``FAST``) into a temporary cache, so the
search itself finds every entry there and never measures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import yaml
from fixtures.processes import local_ray
from fixtures.timing import macs_model_timer, macs_timer

from rank_search.analysis.pipeline import compute_analysis
from rank_search.cli import main
from rank_search.config import load_rank_config
from rank_search.convert import list_factorizable
from rank_search.errors import BudgetError, ConfigError, RankSearchError
from rank_search.latency import LatencyBudget, LatencyTable, TimingSettings, num_threads
from rank_search.models import create_model
from rank_search.search.budget import (
    Budget,
    LatencyCost,
    check_budget,
    parse_budget,
    project,
    smallest_cost,
    uniform_sample,
)
from rank_search.search.records import read_records
from rank_search.search.runner import open_storage, run_search
from rank_search.search.space import ResolvedSpace, Sample, UnitChoice, load_space, parse_space, resolve_space
from rank_search.search.study import find_named_file, load_study, parse_study

FAST = TimingSettings(repeats=2, warmup=1, min_sample_ms=0.0)
TINY = (3, 8, 8)
DIGITS = (3, 16, 16)  # the builtin data's input size
MIXED = {
    "models": ["resnet20"],
    "layers": [{"match": "layer*.*.conv*", "formats": ["tucker2", "svd", "dense"], "ratio": [0.1, 1.0],
                "round_to": 8, "tie": "block"}],
}  # fmt: skip

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:load average:UserWarning")


def fast_table(
    cache: Path, model: str, size: tuple[int, int, int], batch: int, formats: list[str]
) -> LatencyTable:
    """A one-thread table in ``cache`` with the grid of ``formats`` filled in.

    Layer and whole-model times come from :mod:`fixtures.timing`, so what the tests assert cannot
    depend on the machine's load; real timing is covered by the slow end-to-end search and the
    benchmarks."""
    table = LatencyTable.load_or_create(
        "cpu", threads=1, cache_dir=cache, settings=FAST, layer_timer=macs_timer, model_timer=macs_model_timer
    )
    table.prefill(model, size, batch, formats)
    return table


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[ResolvedSpace, LatencyCost]:
    """resnet20 at 3x8x8, per-block tucker2 | svd | dense, round_to 8, and a prefilled latency cost."""
    with num_threads(1):
        infos = list_factorizable(create_model("resnet20"), TINY)
        space = resolve_space(parse_space(MIXED, "mixed.yaml"), "resnet20", infos, input_size=TINY)
        table = fast_table(tmp_path_factory.mktemp("latency"), "resnet20", TINY, 2, ["tucker2", "svd"])
    return space, LatencyCost(table, 2)


# --- parsing ----------------------------------------------------------------------------------------


def test_parse_latency_budget() -> None:
    budget = parse_budget({"latency_ms": 3.0, "device": "cpu", "batch_size": 32})
    assert budget.latency == LatencyBudget(3.0, "cpu", 32) and budget.fraction is budget.macs is None
    assert parse_budget(budget.to_dict()) == budget  # study.yaml round trip
    assert parse_budget({"latency_ms": 2, "threads": 1}).latency == LatencyBudget(2.0, "cpu", 1, 1)
    with pytest.raises(ValueError, match="latency"):
        budget.resolve(1000)


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ({"latency_ms": 0}, "budget.latency_ms"),
        ({"latency_ms": "fast"}, "budget.latency_ms"),
        ({"latency_ms": 3, "device": "tpu"}, "budget.device"),
        ({"latency_ms": 3, "batch_size": 0}, "budget.batch_size"),
        ({"device": "cpu", "batch_size": 8}, "budget.latency_ms"),
        ({"latency_ms": 3, "fraction": 0.5}, "budget"),
        ({"latency_ms": 3, "flops": 1}, "budget"),
    ],
)
def test_latency_budget_errors_name_the_key(value: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_budget(value)
    assert info.value.key == key


def test_study_with_latency_budget(tmp_path: Path) -> None:
    data = {"model": "resnet20", "data": "builtin", "space": "cifar-resnet"}
    study = parse_study({**data, "budget": {"latency_ms": 3.0, "batch_size": 32}})
    assert study.budget == Budget(latency=LatencyBudget(3.0, "cpu", 32))
    assert study.to_dict()["budget"]["latency_ms"] == 3.0
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**data, "budget": {"latency_ms": 3.0}}))
    with pytest.raises(ConfigError, match=r"key 'budget\.batch_size'"):
        load_study(path, ["budget.batch_size=-1"])


# --- projection and the smallest reachable latency -------------------------------------------------


@pytest.mark.parametrize("fill_up", [False, True])
def test_projection_keeps_predicted_latency_within_budget(
    mixed: tuple[ResolvedSpace, LatencyCost], fill_up: bool
) -> None:
    space, cost = mixed
    least = smallest_cost(space, cost)
    budget = least * 1.25
    measured = cost.table.measurements
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=int(fill_up)))
    projected = 0
    for _ in range(15):
        sample = space.suggest(study.ask())
        result = project(space, sample, budget, fill_up=fill_up, cost=cost)
        assert result.cost == pytest.approx(cost(space, result.sample)) and result.cost <= budget
        assert result.sampled_cost == pytest.approx(cost(space, sample))
        assert result.macs == space.macs(result.sample)
        projected += result.projected
    assert projected, "the budget should bind for some samples"
    assert cost.table.measurements == measured, "projection must only look latencies up"


def test_uniform_start_fits_the_latency_budget(mixed: tuple[ResolvedSpace, LatencyCost]) -> None:
    space, cost = mixed
    lowest = uniform_sample(space, 0.0, cost=cost)  # unreachable budget: the smallest uniform config
    assert {c.value for c in lowest.units.values()} == {0.1}
    budget = cost(space, lowest) * 1.2  # measured latency is noisy: relative to the uniform config itself
    sample = uniform_sample(space, budget, cost=cost)
    assert cost(space, sample) <= budget


def test_budget_below_smallest_reachable_latency_names_it(mixed: tuple[ResolvedSpace, LatencyCost]) -> None:
    space, cost = mixed
    least = smallest_cost(space, cost)
    check_budget(space, least, cost)
    with pytest.raises(BudgetError) as info:
        check_budget(space, least * 0.9, cost)
    message = str(info.value)
    assert "Smallest reachable latency" in message and f"{least:.3f} ms" in message
    assert "mixed.yaml" in message
    # every unit's fastest format at its smallest rank is no slower than any single-format config
    for fmt in ("tucker2", "svd", "dense"):
        uniform = Sample({u.key: UnitChoice(fmt, u.value_bounds[0]) for u in space.units})
        assert least <= cost(space, uniform) + 1e-9


# --- end to end --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """Ray for this module (reused, and left running, if another module started it)."""
    with local_ray():
        yield


STUDY: dict[str, Any] = {
    "name": "latency",
    "model": "resnet20",
    "data": "builtin",
    "data_options": {"val_fraction": 0.25, "max_train_samples": 200},
    "space": "cifar-resnet",
    "mode": "front",
    "sampler": "tpe",
    "trials": 3,
    "epochs_per_trial": 1,
    "asha": {"enabled": False},
    "resources": {"cpu": 1},
    "seed": 0,
    "train": {"batch_size": 32, "lr": 0.05, "device": "cpu", "warmup_epochs": 0.5},
}


@pytest.mark.slow
def test_latency_search_end_to_end(
    ray_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("RANK_SEARCH_CACHE", str(cache))
    with num_threads(1):
        table = fast_table(cache / "latency", "resnet20", DIGITS, 8, ["tucker2"])
        infos = list_factorizable(create_model("resnet20"), DIGITS)
    space_file = find_named_file("cifar-resnet", "spaces")
    assert space_file is not None
    space = resolve_space(load_space(space_file), "resnet20", infos, input_size=DIGITS)
    budget = round(smallest_cost(space, LatencyCost(table, 8)) * 1.3, 4)
    stored = table.path.read_text()
    path = tmp_path / "latency.yaml"
    path.write_text(
        yaml.safe_dump({**STUDY, "budget": {"latency_ms": budget, "batch_size": 8, "threads": 1}})
    )
    study = load_study(path)
    out = tmp_path / "out"
    outcome = run_search(study, out)
    assert table.path.read_text() == stored, "the search measured the table instead of looking up"

    manifest = json.loads((out / "search.json").read_text())
    assert manifest["budget_latency_ms"] == budget and manifest["budget_macs"] is None
    assert manifest["latency_device"] == "cpu" and manifest["latency_batch_size"] == 8
    records = read_records(out)
    assert len(records) == 3 and outcome.status == "finished"
    for record in records:
        assert record.latency_ms is not None and record.latency_ms <= budget
    storage = open_storage(manifest["storage"])
    trials = optuna.load_study(study_name=manifest["study_name"], storage=storage).trials
    by_number = {r.optuna_trial_number: r for r in records}
    for trial in trials:  # front mode: the second objective is the predicted latency
        assert trial.values[1] == pytest.approx(by_number[trial.number].latency_ms)
    best = load_rank_config(out / "best.json")
    assert best.provenance["budget_latency_ms"] == budget and best.provenance["latency_ms"] <= budget

    assert main(["analyze", str(out), "--no-importance", "--bootstrap", "10"]) == 0
    folder = out / "analysis"
    assert (folder / "pareto.png").is_file() and (folder / "pareto.pdf").is_file()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["axis"] == "latency" and summary["budget_latency_ms"] == budget
    assert summary["front_points"] >= 1 and summary["best_at_budget"][0]["latency_ms"] <= budget
    assert pd.read_csv(folder / "trials.csv")["latency_ms"].notna().all()
    assert "latency_ms" in pd.read_csv(folder / "pareto.csv").columns
    macs = compute_analysis(out, axis="macs", importance=False, n_boot=5)
    assert macs.axis == "macs" and macs.budget_macs is None and not macs.front.empty
    with pytest.raises(RankSearchError, match="does not apply"):
        compute_analysis(out, axis="macs", max_latency_ms=budget, importance=False)
    tight = min(r.latency_ms for r in records if r.latency_ms is not None) * 0.5
    assert main(["export", str(out), "--max-latency-ms", str(tight), "-o", str(tmp_path / "x.json")]) == 2
    assert main(["export", str(out), "--max-latency-ms", str(budget), "-o", str(tmp_path / "b.json")]) == 0
    assert load_rank_config(tmp_path / "b.json").provenance["latency_ms"] <= budget


# --- runtime onnxruntime -------------------------------------------------------------------------------


def test_parse_latency_budget_runtime() -> None:
    budget = parse_budget({"latency_ms": 1.0, "runtime": "onnxruntime", "threads": 1})
    assert budget.latency == LatencyBudget(1.0, "cpu", 1, 1, runtime="onnxruntime")
    assert parse_budget(budget.to_dict()) == budget
    assert "runtime" not in parse_budget({"latency_ms": 1.0}).to_dict()
    for bad in ({"runtime": "tvm"}, {"runtime": "onnxruntime", "device": "cuda"}):
        with pytest.raises(ConfigError) as info:
            parse_budget({"latency_ms": 1.0, **bad})
        assert info.value.key == "budget.runtime"


def test_onnxruntime_latency_budget_projects_on_looked_up_latencies(tmp_path: Path) -> None:
    """A latency budget with runtime onnxruntime: the table is filled in ONNX Runtime (real
    timings, fastest form per entry), then projection only looks latencies up."""
    pytest.importorskip("onnxruntime")
    space_data = {
        "models": ["resnet20"],
        "layers": [{"match": "layer3.*.conv*", "formats": ["svd", "dense"], "ratio": [0.25, 1.0],
                    "round_to": 16, "tie": "block"}],
    }  # fmt: skip
    budget = LatencyBudget(1.0, threads=1, runtime="onnxruntime")
    with num_threads(1):
        infos = list_factorizable(create_model("resnet20"), TINY)
        space = resolve_space(parse_space(space_data, "ort.yaml"), "resnet20", infos, input_size=TINY)
        table = LatencyTable.load_or_create(
            "cpu", threads=1, cache_dir=tmp_path, settings=FAST, runtime=budget.runtime
        )
        assert "ort" in table.key and table.to_dict()["device"]["runtime"] == "onnxruntime"
        table.prefill("resnet20", TINY, 1, ["svd"])
        cost = LatencyCost(table, 1)
        least = smallest_cost(space, cost)
        measured = table.measurements
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(5):
            result = project(space, space.suggest(study.ask()), least * 1.1, cost=cost)
            assert result.cost <= least * 1.1
        assert table.measurements == measured

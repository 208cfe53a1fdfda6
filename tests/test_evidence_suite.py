"""The evidence suite's bookkeeping (benchmarks/evidence/run_all.py): profiles, paired differences
and the time-to-reach figure. The suite itself runs with ``run_all.py --smoke``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

EVIDENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "evidence"


@pytest.fixture(scope="module")
def run_all() -> Iterator[ModuleType]:
    sys.path.insert(0, str(EVIDENCE))
    try:
        import run_all as module

        yield module
    finally:
        sys.path.remove(str(EVIDENCE))
        for name in ("run_all", "common", "profiles", "exp2_searched_vs_uniform", "exp3_search_efficiency"):
            sys.modules.pop(name, None)


def test_cpu_profile_flags_and_overrides(run_all: ModuleType, tmp_path: Path) -> None:
    args = run_all.parse_args(["--profile", "cpu", "--out", str(tmp_path), "--seeds", "0", "1", "2", "3"])
    assert args.scale.seeds == (0, 1, 2, 3)
    assert run_all.PROFILES["cpu"].seeds == (0, 1, 2)  # the shared profile is not changed
    flags = args.scale.data_options()
    assert flags[flags.index("--image-size") + 1] == "16"
    assert flags[flags.index("--max-train-samples") + 1] == "20000"
    sets = run_all.study_sets(args, args.scale, 0.28, 1)
    assert sets[:3] == [f"data={args.data}", "budget=0.28", "seed=1"]
    assert "resources.concurrency=2" in sets


def test_paired_difference_is_per_seed(run_all: ModuleType) -> None:
    rows = {
        "a-searched": {"acc_by_seed": {0: 60.0, 1: 62.0, 2: 61.0, 3: None}, "test_acc_mean": 61.0},
        "a-uniform": {"acc_by_seed": {0: 59.0, 1: 60.0, 2: 61.0, 3: 50.0}, "test_acc_mean": 60.0},
    }
    _, values = run_all.paired(rows, ["a"], {"test_acc_mean": 63.0})
    (value,) = values
    assert value["diffs"] == [1.0, 2.0, 0.0]  # seed 3 diverged for one config: no pair
    assert value["mean"] == pytest.approx(1.0)
    assert value["sd"] == pytest.approx(1.0)
    assert value["searched_minus_dense"] == pytest.approx(-2.0)


def test_time_to_reach(run_all: ModuleType) -> None:
    curve = ([1.0, 2.0, 3.0], [None, 50.0, 55.0])
    assert run_all.time_to_reach(curve, 52.0) == 3.0
    assert run_all.time_to_reach(curve, 50.0) == 2.0
    assert run_all.time_to_reach(curve, 60.0) is None
    assert run_all.time_to_reach(curve, None) is None


def test_a_training_is_keyed_by_its_config_without_provenance(run_all: ModuleType, tmp_path: Path) -> None:
    import json

    from common import Arm

    config = {"model": "resnet20", "layers": {"a": {"format": "tucker2", "ranks": [4, 4]}}}
    exported = tmp_path / "exported.json"
    uniform = tmp_path / "uniform.json"
    other = tmp_path / "other.json"
    exported.write_text(json.dumps({**config, "provenance": {"trial_id": "t1", "selection": "uniform"}}))
    uniform.write_text(json.dumps({"provenance": {"source": "uniform"}, **config}, indent=2))
    other.write_text(json.dumps({**config, "layers": {"a": {"format": "tucker2", "ranks": [4, 5]}}}))

    def key(path: Path, seed: int = 0) -> str:
        return str(run_all.Run(Arm("x", config_path=path), seed).key())

    assert key(exported) == key(uniform)  # one training serves both
    assert key(exported) != key(other)
    assert key(exported, 0) != key(exported, 1)
    assert run_all.Run(Arm("dense", model="resnet20"), 2).key() == "resnet20:2"

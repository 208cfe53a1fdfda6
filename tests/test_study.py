"""Study files: parsing, defaults, --set overrides, unknown keys, shipped studies, searcher glue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from rank_search.convert import list_factorizable
from rank_search.errors import ConfigError
from rank_search.models import create_model
from rank_search.search.budget import Budget
from rank_search.search.searcher import (
    CONFIG_KEY,
    FAULT_ENV,
    TAG_ATTR,
    SpaceFunction,
    default_sampler_options,
    make_sampler,
)
from rank_search.search.space import load_space, resolve_space
from rank_search.search.study import apply_overrides, load_study, parse_study

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted((REPO / "studies").glob("*.yaml"))
MINIMAL: dict[str, Any] = {"model": "resnet20", "data": "builtin", "space": "cifar-resnet", "budget": 0.5}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, data: dict[str, Any], name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_shipped_studies_parse(path: Path) -> None:
    study = load_study(path)
    assert study.space_path().is_file()
    assert study.name == path.stem


def test_shipped_studies_exist() -> None:
    assert {"quickstart", "resnet20-cifar10", "resnet56-cifar10", "resnet18-imagenet"} <= {
        p.stem for p in STUDIES
    }
    gpu = load_study(REPO / "studies/resnet56-cifar10.yaml")
    assert gpu.resources.gpu == 0.25


def test_defaults(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, MINIMAL, "my-study.yaml"))
    assert study.name == "my-study" and study.mode == "at_budget" and study.sampler == "tpe"
    assert study.budget == Budget(fraction=0.5) and study.asha.enabled and study.starting_points.uniform
    assert study.space_path() == (REPO / "spaces/cifar-resnet.yaml").resolve()
    assert study.to_dict()["budget"] == {"fraction": 0.5}


def test_space_relative_to_study_file(tmp_path: Path) -> None:
    (tmp_path / "my-space.yaml").write_text((REPO / "spaces/cifar-resnet.yaml").read_text())
    study = load_study(write(tmp_path, {**MINIMAL, "space": "my-space.yaml"}))
    assert study.space_path() == (tmp_path / "my-space.yaml").resolve()


def test_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    study = load_study(
        path,
        [
            "trials=3",
            "asha.enabled=false",
            "train.lr=0.05",
            "budget={macs: 1000000}",
            "resources.gpu=0.25",
            "data_options.max_train_samples=200",
        ],
    )
    assert study.trials == 3 and not study.asha.enabled and study.train == {"lr": 0.05}
    assert study.budget == Budget(macs=1_000_000) and study.resources.gpu == 0.25
    assert study.data_options == {"max_train_samples": 200}


def test_apply_overrides_leaves_input_alone() -> None:
    data = {"asha": {"enabled": True}}
    out = apply_overrides(data, ["asha.grace_period=2", "name=x"])
    assert data == {"asha": {"enabled": True}} and out == {
        "asha": {"enabled": True, "grace_period": 2},
        "name": "x",
    }


ERRORS: list[tuple[str, dict[str, Any], list[str], str]] = [
    ("unknown top key", {**MINIMAL, "trails": 3}, [], r"key 'trails'.*unknown"),
    ("unknown key via --set", MINIMAL, ["asha.grace=2"], r"with --set overrides.*key 'asha\.grace'.*unknown"),
    ("missing model", {k: v for k, v in MINIMAL.items() if k != "model"}, [], r"key 'model'.*missing"),
    ("unknown model", {**MINIMAL, "model": "resnet21"}, [], r"key 'model'.*unknown model"),
    ("bad data", {**MINIMAL, "data": "mnist:/x"}, [], r"key 'data'"),
    ("bad mode", MINIMAL, ["mode=pareto"], r"key 'mode'"),
    ("bad sampler", MINIMAL, ["sampler=cmaes"], r"key 'sampler'"),
    ("bad budget", MINIMAL, ["budget=2"], r"key 'budget'"),
    ("trials zero", MINIMAL, ["trials=0"], r"key 'trials'"),
    (
        "grace above epochs",
        MINIMAL,
        ["epochs_per_trial=2", "asha.grace_period=3"],
        r"key 'asha\.grace_period'",
    ),
    ("reduction factor", MINIMAL, ["asha.reduction_factor=1"], r"key 'asha\.reduction_factor'"),
    ("gpu 1.5", MINIMAL, ["resources.gpu=1.5"], r"key 'resources\.gpu'"),
    ("train unknown", MINIMAL, ["train.lrate=0.1"], r"key 'train\.lrate'.*unknown"),
    ("train epochs", MINIMAL, ["train.epochs=3"], r"key 'train\.epochs'.*epochs_per_trial"),
    ("train invalid", MINIMAL, ["train.batch_size=0"], r"key 'train\.batch_size'"),
    ("data option", MINIMAL, ["data_options.val_frac=0.1"], r"key 'data_options\.val_frac'.*unknown"),
    ("starting key", MINIMAL, ["starting_points.dprp=x"], r"key 'starting_points\.dprp'"),
    ("bad name", {**MINIMAL, "name": "a b"}, [], r"key 'name'"),
    ("set not a mapping", MINIMAL, ["model.name=x"], r"key '--set model\.name'.*not a mapping"),
    ("set no value", MINIMAL, ["trials"], r"key '--set'.*KEY\.SUB=VALUE"),
]


@pytest.mark.parametrize(
    ("data", "overrides", "pattern"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_study_errors_name_file_and_key(
    tmp_path: Path, data: dict[str, Any], overrides: list[str], pattern: str
) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_study(path, overrides)
    assert "--set" in pattern or str(path.resolve()) in str(info.value)


def test_missing_space_file(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, {**MINIMAL, "space": "no-such-space"}))
    with pytest.raises(ConfigError, match=r"key 'space'.*not found"):
        study.space_path()


def test_parse_study_without_file() -> None:
    assert parse_study(MINIMAL).model == "resnet20"


# --- searcher glue (no Ray) ----------------------------------------------------------------------


def test_prepare_maps_starting_points(tmp_path: Path) -> None:
    from rank_search.config import LayerSpec, ModelSpec, RankConfig, save_rank_config
    from rank_search.search.runner import prepare

    layers = {f"layer{s}.{b}.conv{c}": LayerSpec.tucker2(4 * s, 4 * s) for s in (1, 2, 3) for b in (0, 1, 2)
              for c in (1, 2)}  # fmt: skip
    dprp = RankConfig(ModelSpec("resnet20"), (3, 16, 16), layers, provenance={"source": "dprp"})
    save_rank_config(dprp, tmp_path / "dprp.json")
    data = {
        **MINIMAL,
        "space": "cifar-resnet-per-layer",
        "starting_points": {"configs": ["dprp.json"]},
        "data_options": {"max_train_samples": 200},
    }
    plan = prepare(load_study(write(tmp_path, data)), tmp_path / "out")
    assert [tag for tag, _ in plan.points] == ["uniform", "dprp"]
    dprp_params = plan.points[1][1]
    assert dprp_params["layer1.0.conv1.ratio"] == pytest.approx(0.25)
    assert dprp_params["layer3.2.conv2.ratio"] == pytest.approx(0.25)  # 12/64, raised to the floor
    assert plan.storage_url == f"journal:{(tmp_path / 'out' / 'optuna.journal').resolve()}"
    assert plan.study_name.startswith("study-") and plan.budget_macs == plan.space.dense_macs // 2
    wrong = RankConfig(ModelSpec("resnet32"), (3, 16, 16), {}, provenance={"source": "dprp"})
    save_rank_config(wrong, tmp_path / "wrong.json")
    data["starting_points"] = {"configs": ["wrong.json"]}
    with pytest.raises(ConfigError, match=r"starting_points\.configs\[0\]'.*resnet32"):
        prepare(load_study(write(tmp_path, data)), tmp_path / "out")


def space_function(fill_up: bool = True) -> SpaceFunction:
    infos = list_factorizable(create_model("resnet20"), (3, 16, 16))
    res = resolve_space(
        load_space(REPO / "spaces/cifar-resnet-per-layer.yaml"), "resnet20", infos, input_size=(3, 16, 16)
    )
    return SpaceFunction(res, Budget(fraction=0.5).resolve(res.dense_macs), fill_up=fill_up)


def test_space_function_plans_within_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "1:diverge")
    fn = space_function()
    study = optuna.create_study(
        direction="maximize", sampler=make_sampler("tpe", seed=0, options={}, trials=4)
    )
    study.enqueue_trial({"layer1.0.conv1.ratio": 0.3}, user_attrs={TAG_ATTR: "uniform"})
    plans = []
    for _ in range(3):
        trial = study.ask()
        plans.append(fn(trial)[CONFIG_KEY])
        assert trial.user_attrs["macs"] <= fn.budget_macs
        study.tell(trial, 0.5)
    assert plans[0]["tags"] == ["uniform"] and plans[1]["tags"] == []
    assert [p["fault"] for p in plans] == [None, "diverge", None]
    assert all(p["macs"] <= fn.budget_macs and p["layers"] for p in plans)
    assert plans[0]["sampled"]["layer1.0.conv1.ratio"] == 0.3
    assert set(plans[0]["projection"]) == {"projected", "scale", "sampled_macs", "sampled_layers"}


@pytest.mark.parametrize("name", ["tpe", "nsga2", "gp", "random"])
def test_samplers(name: str) -> None:
    sampler = make_sampler(name, seed=3, options={}, trials=20)
    if name == "nsga2":
        assert sampler._population_size == 5  # small population for short studies
    with pytest.raises(ConfigError, match="sampler_options"):
        make_sampler(name, seed=3, options={"no_such_option": 1}, trials=20)


def test_sampler_settings_are_explicit() -> None:
    assert default_sampler_options("tpe", 8) == {
        "multivariate": True,
        "constant_liar": True,
        "n_startup_trials": 4,
    }
    assert default_sampler_options("tpe", 200)["n_startup_trials"] == 10
    sampler = make_sampler("tpe", seed=0, options={"n_startup_trials": 2}, trials=40)
    assert sampler._n_startup_trials == 2 and sampler._multivariate and sampler._constant_liar


def test_grace_period_is_only_checked_when_asha_is_on() -> None:
    study = parse_study({**MINIMAL, "epochs_per_trial": 1, "asha": {"enabled": False, "grace_period": 2}})
    assert study.asha.enabled is False
    with pytest.raises(ConfigError, match="grace_period"):
        parse_study({**MINIMAL, "epochs_per_trial": 1, "asha": {"enabled": True, "grace_period": 2}})


@pytest.mark.parametrize("mode", ["at_budget", "front"])
def test_resume_tells_optuna_how_trials_it_holds_running_ended(tmp_path: Path, mode: str) -> None:
    """A driver killed between a trial's final record and Optuna's ``tell`` leaves the Optuna trial
    RUNNING. Before ``--resume`` it is told from the record (the source of truth), so it counts
    against the planned total instead of being sampled again; a trial with no final record stays."""
    from rank_search.search.records import TrialRecord, write_record
    from rank_search.search.runner import _settle_ended_optuna_trials, open_storage, prepare

    data = {**MINIMAL, "mode": mode, "data_options": {"max_train_samples": 200}}
    plan = prepare(load_study(write(tmp_path, data)), tmp_path / "out")
    plan.out_dir.mkdir(parents=True)
    directions = ["maximize", "minimize"] if mode == "front" else ["maximize"]
    storage = open_storage(plan.storage_url, writer=True)
    study = optuna.create_study(study_name=plan.study_name, storage=storage, directions=directions)
    asked = [study.ask() for _ in range(4)]
    outcomes = [("completed", 4, 0.8), ("stopped", 2, 0.6), ("failed", 1, None), ("running", 1, None)]
    for trial, (status, epochs, acc) in zip(asked, outcomes):
        record = TrialRecord(f"t{trial.number}", 4, {}, 1000 + trial.number, 2000, 10, trial.number)
        record.status, record.epochs, record.val_accuracy = status, epochs, acc
        write_record(plan.out_dir, record)
    _settle_ended_optuna_trials(plan)
    states = optuna.load_study(study_name=plan.study_name, storage=open_storage(plan.storage_url)).trials
    TS = optuna.trial.TrialState
    assert [t.state for t in states] == [TS.COMPLETE, TS.PRUNED, TS.FAIL, TS.RUNNING]
    assert states[0].values == ([0.8, 1000.0] if mode == "front" else [0.8])
    assert [t.user_attrs.get("epochs") for t in states] == [4, 2, 1, None]


def test_finish_without_records_and_with_one_at_budget(tmp_path: Path) -> None:
    """An early Ctrl-C (no trial record yet) ends with no best and no error; with records, the one
    fully-trained trial within the budget is exported to best.json and the one over it is not on
    the reported front."""
    from fixtures.searchdir import config_dict

    from rank_search._io import atomic_write_json
    from rank_search.search.records import TrialRecord, write_record
    from rank_search.search.runner import MANIFEST, _finish, _manifest, prepare

    plan = prepare(
        load_study(write(tmp_path, {**MINIMAL, "data_options": {"max_train_samples": 200}})), tmp_path / "o"
    )
    plan.out_dir.mkdir(parents=True)
    atomic_write_json(plan.out_dir / MANIFEST, _manifest(plan, "interrupted", "t0", None))
    empty = _finish(plan, "interrupted")
    assert (empty.records, empty.best, empty.best_path, empty.front) == ([], None, None, [])

    dense = plan.space.dense_macs
    for number, (kind, macs, acc) in enumerate([("u0.25", dense // 4, 0.7), ("dense", dense, 0.9)]):
        record = TrialRecord(f"t{number}", 4, config_dict(kind), macs, dense, 10, number)
        record.status, record.epochs, record.val_accuracy = "completed", 4, acc
        write_record(plan.out_dir, record)
    outcome = _finish(plan, "completed")
    assert outcome.best is not None and outcome.best.trial_id == "t0"
    assert outcome.best_path == plan.out_dir / "best.json" and outcome.best_path.exists()
    assert [r.trial_id for r in outcome.front] == ["t0"]


def test_a_relative_data_root_is_made_absolute_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials run in Ray workers with another working directory: the study carries the root
    resolved where the search was started (a relative root failed every trial with 'root does
    not exist')."""
    monkeypatch.chdir(tmp_path)
    study = parse_study({**MINIMAL, "data": "imagefolder:runs/data"})
    assert study.data == f"imagefolder:{tmp_path.resolve() / 'runs' / 'data'}"
    assert parse_study({**MINIMAL, "data": "imagefolder:/abs/data"}).data == "imagefolder:/abs/data"
    assert parse_study(MINIMAL).data == "builtin"

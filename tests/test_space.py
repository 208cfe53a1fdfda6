"""Search spaces: parsing, every malformed case (file + key named), resolving, tying, rounding,
define-by-run sampling, and every shipped space against every model it names."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from rank_search.config import LayerSpec
from rank_search.convert import LayerInfo, list_factorizable
from rank_search.errors import ConfigError
from rank_search.models import create_model, default_input_size
from rank_search.search.space import (
    ResolvedSpace,
    load_space,
    parse_space,
    resolve_space,
    trials_warning,
)

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted((REPO / "spaces").glob("*.yaml"))

BASE: dict[str, Any] = {
    "models": ["resnet20", "resnet56"],
    "layers": [{"match": "layer*.*.conv*", "formats": ["tucker2"], "ratio": [0.1, 1.0]}],
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


@functools.cache
def infos(model: str) -> tuple[LayerInfo, ...]:
    return tuple(list_factorizable(create_model(model), small_size(model)))


def small_size(model: str) -> tuple[int, int, int]:
    """Layer names and channels do not depend on the image size: ImageNet models run at 64 px."""
    size = default_input_size(model)
    return (3, 64, 64) if size[1] > 64 else size


def resolved(data: dict[str, Any], model: str = "resnet20") -> ResolvedSpace:
    return resolve_space(parse_space(data, "test.yaml"), model, infos(model), input_size=small_size(model))


def with_group(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["layers"][0].update(changes)
    return {k: v for k, v in data.items()}


def drop_none(data: dict[str, Any]) -> dict[str, Any]:
    data["layers"][0] = {k: v for k, v in data["layers"][0].items() if v is not None}
    return data


# --- shipped spaces ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "model"),
    [(p, m) for p in SPACES for m in yaml.safe_load(p.read_text())["models"]],
    ids=lambda v: v.name if isinstance(v, Path) else v,
)
def test_shipped_space_validates_against_each_model(path: Path, model: str) -> None:
    space = load_space(path)
    res = resolve_space(space, model, infos(model), input_size=small_size(model))
    assert res.units, "a space must search at least one layer"
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    sample = res.suggest(trial)
    specs = res.layer_specs(sample)
    assert specs and all(name in {i.name for i in infos(model)} for name in specs)


def test_shipped_spaces_exist() -> None:
    names = {p.stem for p in SPACES}
    assert {"cifar-resnet", "torchvision-resnet", "mobilenet-v2"} <= names


def test_conventions_cifar_and_imagenet() -> None:
    cifar = resolve_space(load_space(REPO / "spaces/cifar-resnet.yaml"), "resnet20", infos("resnet20"))
    names = {i.name for u in cifar.units for i in u.layers}
    assert "conv1" not in names and "fc" not in names and len(names) == 18
    tv = resolve_space(
        load_space(REPO / "spaces/torchvision-resnet.yaml"),
        "resnet18",
        infos("resnet18"),
        input_size=(3, 64, 64),
    )
    names = {i.name for u in tv.units for i in u.layers}
    assert not any("downsample" in n for n in names) and "conv1" not in names and "fc" not in names


def test_shipped_resnet_spaces_tie_per_stage_above_a_floor() -> None:
    """Sized to tens of trials: the default CIFAR and torchvision ResNet spaces draw one ratio
    per stage (3 or 4 plus the DSO weight); per-layer ranks are the opt-in space; every shipped
    ResNet space keeps ranks at >= 0.25 of full (no rank-2 bottlenecks)."""
    cifar = resolve_space(load_space(REPO / "spaces/cifar-resnet.yaml"), "resnet20", infos("resnet20"))
    assert [u.key for u in cifar.units] == ["layer1", "layer2", "layer3"] and cifar.dimensions() == 4
    tv = resolve_space(
        load_space(REPO / "spaces/torchvision-resnet.yaml"),
        "resnet18",
        infos("resnet18"),
        input_size=(3, 64, 64),
    )
    assert tv.dimensions() == 5
    per_layer = resolve_space(
        load_space(REPO / "spaces/cifar-resnet-per-layer.yaml"), "resnet20", infos("resnet20")
    )
    assert len(per_layer.units) == 18 and per_layer.dimensions() == 19
    assert per_layer.dimensions("stage") == 4 and per_layer.dimensions("block") == 10
    for path in SPACES:
        space = load_space(path)
        if any(m.startswith("resnet") for m in space.models):
            assert all(g.kind == "ratio" and g.lo >= 0.25 for g in space.groups), path.name


def test_too_few_trials_for_the_space_warn_with_the_tie_that_fits() -> None:
    per_layer = resolve_space(
        load_space(REPO / "spaces/cifar-resnet-per-layer.yaml"), "resnet20", infos("resnet20")
    )
    warning = trials_warning(per_layer, 20)
    assert warning is not None and "20 trials are too few for 19 searched parameters" in warning
    assert "want >= 5 per parameter, 95" in warning and "tie: stage (4 parameters) would fit" in warning
    assert "tie: block (10 parameters) would fit" in str(trials_warning(per_layer, 50))
    assert trials_warning(per_layer, 95) is None
    assert "even tie: stage has 4 parameters" in str(trials_warning(per_layer, 8))
    stage = resolve_space(load_space(REPO / "spaces/cifar-resnet.yaml"), "resnet20", infos("resnet20"))
    assert trials_warning(stage, 20) is None
    assert "use more trials or a smaller space" in str(trials_warning(stage, 8))


def test_mobilenet_skips_depthwise_silently() -> None:
    space = load_space(REPO / "spaces/mobilenet-v2.yaml")
    res = resolve_space(space, "mobilenet_v2", infos("mobilenet_v2"), input_size=(3, 64, 64))
    assert all(info.groups == 1 for unit in res.units for info in unit.layers)


def test_mobilenet_pattern_with_only_depthwise_is_an_error() -> None:
    data = {
        "models": ["mobilenet_v2"],
        "layers": [{"match": "features.*.conv.1.0", "formats": ["tucker2"], "ratio": [0.2, 1.0]}],
    }
    with pytest.raises(ConfigError, match=r"test.yaml.*layers\[0\]\.match.*only layers that cannot"):
        resolve_space(
            parse_space(data, "test.yaml"), "mobilenet_v2", infos("mobilenet_v2"), input_size=(3, 64, 64)
        )


# --- malformed spaces ----------------------------------------------------------------------------

MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top key", {**BASE, "layerz": []}, r"key 'layerz'.*unknown"),
    ("missing models", {"layers": BASE["layers"]}, r"key 'models'.*missing"),
    ("models not a list", {**BASE, "models": "resnet20"}, r"key 'models'"),
    ("empty layers", {**BASE, "layers": []}, r"key 'layers'.*non-empty"),
    ("unknown group key", with_group(ranks=[1, 2]), r"key 'layers\[0\]\.ranks'.*unknown"),
    ("missing match", drop_none(with_group(match=None)), r"key 'layers\[0\]\.match'.*missing"),
    ("unknown format", with_group(formats=["tucker3"]), r"key 'layers\[0\]\.formats\[0\]'.*unknown format"),
    ("dense only", with_group(formats=["dense"]), r"key 'layers\[0\]\.formats'.*tucker2 or svd"),
    ("duplicate format", with_group(formats=["svd", "svd"]), r"key 'layers\[0\]\.formats'.*duplicate"),
    ("both ratio and rank", with_group(rank=[2, 8]), r"key 'layers\[0\]'.*exactly one"),
    ("no range", drop_none(with_group(ratio=None)), r"key 'layers\[0\]'.*exactly one"),
    ("inverted ratio", with_group(ratio=[0.8, 0.2]), r"key 'layers\[0\]\.ratio'.*inverted"),
    ("empty ratio", with_group(ratio=[]), r"key 'layers\[0\]\.ratio'.*\[lo, hi\]"),
    ("ratio above 1", with_group(ratio=[0.5, 1.5]), r"key 'layers\[0\]\.ratio'.*\(0, 1\]"),
    ("ratio zero", with_group(ratio=[0.0, 0.5]), r"key 'layers\[0\]\.ratio'.*\(0, 1\]"),
    ("rank float", drop_none(with_group(ratio=None, rank=[2.5, 8])), r"key 'layers\[0\]\.rank'.*integers"),
    ("rank zero", drop_none(with_group(ratio=None, rank=[0, 8])), r"key 'layers\[0\]\.rank'.*>= 1"),
    ("inverted rank", drop_none(with_group(ratio=None, rank=[9, 8])), r"key 'layers\[0\]\.rank'.*inverted"),
    ("bad round_to", with_group(round_to=0), r"key 'layers\[0\]\.round_to'"),
    ("bad tie", with_group(tie="layer"), r"key 'layers\[0\]\.tie'"),
    ("unknown regularizer", {**BASE, "regularizer": {"kinds": ["l2"]}}, r"key 'regularizer\.kinds\[0\]'"),
    ("regularizer key", {**BASE, "regularizer": {"kind": ["so"]}}, r"key 'regularizer\.kind'.*unknown"),
    ("weight not log", {**BASE, "regularizer": {"weight": [0, 1e-3]}}, r"key 'regularizer\.weight'.*lo > 0"),
    ("unknown train key", {**BASE, "train": {"momentum": [0.8, 0.9]}}, r"key 'train\.momentum'.*unknown"),
    ("inverted lr", {**BASE, "train": {"lr": [0.2, 0.01]}}, r"key 'train\.lr'.*inverted"),
]


@pytest.mark.parametrize(("data", "pattern"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_space_names_file_and_key(data: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=r"^test\.yaml: " + pattern):
        parse_space(data, "test.yaml")


RESOLVE_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("pattern matches nothing", with_group(match="blocks.*"), r"key 'layers\[0\]\.match'.*matches no"),
    (
        "one of two patterns matches nothing",
        with_group(match=["layer1.*", "nope*"]),
        r"key 'layers\[0\]\.match\[1\]'.*'nope\*' matches no",
    ),
    (
        "round_to above the allowed ranks",
        with_group(ratio=[0.1, 0.25], round_to=8),
        r"key 'layers\[0\]\.round_to'.*larger than layer layer1\.0\.conv1",
    ),
    (
        "round_to above every rank",
        drop_none(with_group(ratio=None, rank=[2, 6], round_to=8)),
        r"key 'layers\[0\]\.round_to'",
    ),
    (
        "pattern taken by an earlier group",
        {**BASE, "layers": [BASE["layers"][0], {"match": "layer1.*", "ratio": [0.2, 0.5]}]},
        r"key 'layers\[1\]\.match'.*already taken by layers\[0\]",
    ),
]


@pytest.mark.parametrize(
    ("data", "pattern"), [c[1:] for c in RESOLVE_ERRORS], ids=[c[0] for c in RESOLVE_ERRORS]
)
def test_resolve_errors_name_file_and_key(data: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=r"^test\.yaml: " + pattern):
        resolved(data)


def test_model_not_in_models() -> None:
    with pytest.raises(ConfigError, match=r"test\.yaml: key 'models'.*'resnet32'"):
        resolve_space(parse_space(BASE, "test.yaml"), "resnet32", infos("resnet32"))


def test_load_space_missing_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [resnet20\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*YAML"):
        load_space(bad)


# --- resolving, tying, rounding ------------------------------------------------------------------


def test_one_space_serves_two_depths() -> None:
    assert len(resolved(BASE, "resnet20").units) == 18
    assert len(resolved(BASE, "resnet56").units) == 54


@pytest.mark.parametrize(("tie", "keys"), [("stage", ["layer1", "layer2", "layer3"]), ("block", None)])
def test_tying(tie: str, keys: list[str] | None) -> None:
    res = resolved(with_group(tie=tie))
    got = [u.key for u in res.units]
    if keys is not None:
        assert got == keys
        assert all(len(u.layers) == 6 for u in res.units)
    else:
        assert len(got) == 9 and got[0] == "layer1.0" and all(len(u.layers) == 2 for u in res.units)
    trial = optuna.trial.FixedTrial({f"{k}.ratio": 0.5 for k in got})
    specs = res.layer_specs(res.suggest(trial))
    assert specs["layer1.0.conv1"] == specs["layer1.0.conv2"]


def test_colliding_tied_prefixes_get_group_suffix() -> None:
    data = {
        **BASE,
        "layers": [
            {"match": "layer*.*.conv1", "ratio": [0.2, 1.0], "tie": "stage"},
            {"match": "layer*.*.conv2", "ratio": [0.2, 1.0], "tie": "stage"},
        ],
    }
    keys = {u.key for u in resolved(data).units}
    assert keys == {"layer1", "layer2", "layer3", "layer1@1", "layer2@1", "layer3@1"}


def test_first_group_wins() -> None:
    data = {
        **BASE,
        "layers": [{"match": "layer3.*", "formats": ["svd"], "ratio": [0.5, 0.5]}, BASE["layers"][0]],
    }
    res = resolved(data)
    assert res.unit("layer3.0.conv1").formats == ("svd",)
    assert res.unit("layer1.0.conv1").formats == ("tucker2",)


@pytest.mark.parametrize("value", [0.1, 0.23, 0.5, 0.77, 1.0])
def test_rounding_to_multiples(value: float) -> None:
    res = resolved(with_group(round_to=4))
    params = {f"{u.key}.ratio": value for u in res.units}
    for spec in res.layer_specs(res.suggest(optuna.trial.FixedTrial(params))).values():
        assert all(r % 4 == 0 and r >= 4 for r in spec.ranks().values())


def test_rank_units_cap_at_full_rank() -> None:
    res = resolved(drop_none(with_group(ratio=None, rank=[8, 48], round_to=8)))
    params = {f"{u.key}.rank": 40 for u in res.units}
    specs = res.layer_specs(res.suggest(optuna.trial.FixedTrial(params)))
    assert specs["layer1.0.conv1"].ranks() == {"rank_in": 16, "rank_out": 16}
    assert specs["layer3.0.conv1"].ranks() == {"rank_in": 32, "rank_out": 40}


def test_linear_layers_take_svd_only() -> None:
    data = {**BASE, "layers": [{"match": "fc", "formats": ["svd", "tucker2"], "ratio": [0.5, 1.0]}]}
    assert resolved(data).units[0].formats == ("svd",)


# --- define-by-run -------------------------------------------------------------------------------


def test_define_by_run_stays_in_ranges() -> None:
    data = with_group(formats=["tucker2", "svd", "dense"], ratio=[0.25, 0.75], round_to=2)
    data["regularizer"] = {"kinds": ["dso", "so", "none"], "weight": [1e-5, 1e-2]}
    data["train"] = {"lr": [0.01, 0.3], "weight_decay": [1e-5, 1e-3]}
    res = resolved(data, "resnet56")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1, n_startup_trials=5))
    full = {i.name: i for i in infos("resnet56")}
    for _ in range(20):
        trial = study.ask()
        sample = res.suggest(trial)
        for name, spec in res.layer_specs(sample).items():
            assert spec.format in ("tucker2", "svd", "dense")
            for key, rank in spec.ranks().items():
                cap = full[name].full_ranks[spec.format][key]
                assert rank % 2 == 0 and round(0.25 * cap) - 1 <= rank <= round(0.75 * cap) + 1
        assert sample.regularizer.name in ("dso", "so", "none")
        assert 1e-5 <= sample.regularizer.weight <= 1e-2
        assert 0.01 <= sample.train["lr"] <= 0.3
        study.tell(trial, 0.5)
    names = set(study.trials[0].params)
    assert "layer1.0.conv1.ratio" in names and "layer1.0.conv1.format" in names and "train.lr" in names


def test_params_round_trip() -> None:
    data = with_group(formats=["tucker2", "svd"], tie="block")
    data["regularizer"] = {"kinds": ["dso", "none"], "weight": [1e-4, 1e-2]}
    res = resolved(data)
    sample = res.suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask())
    again = res.suggest(optuna.trial.FixedTrial(res.params(sample)))
    assert res.layer_specs(again) == res.layer_specs(sample)
    assert again.regularizer == sample.regularizer


def test_sample_from_layers_maps_a_config() -> None:
    res = resolved(with_group(formats=["tucker2", "dense"]))
    layers = {"layer1.0.conv1": LayerSpec.tucker2(8, 8), "layer3.2.conv2": LayerSpec.tucker2(16, 16)}
    sample = res.sample_from_layers(layers)
    assert sample.units["layer1.0.conv1"].format == "tucker2"
    assert sample.units["layer1.0.conv1"].value == pytest.approx(0.5)
    assert sample.units["layer3.2.conv2"].value == pytest.approx(0.25)
    assert sample.units["layer2.0.conv1"].format == "dense"
    assert res.layer_specs(sample)["layer1.0.conv1"] == LayerSpec.tucker2(8, 8)


def test_analytic_macs_match_built_model() -> None:
    data = with_group(formats=["tucker2", "svd", "dense"], tie="none")
    res = resolved(data)
    sample = res.suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7)).ask())
    config = res.rank_config(sample)
    assert res.macs(sample) == config.compute_cost().macs

"""Budgets: parsing, projection keeps every sample within budget, the uniform starting point lands
within 1% of the budget, and an unreachable budget names the smallest reachable one."""

from __future__ import annotations

import functools
from typing import Any

import optuna
import pytest

from rank_search.convert import list_factorizable
from rank_search.errors import BudgetError, ConfigError
from rank_search.models import create_model
from rank_search.search.budget import (
    Budget,
    check_budget,
    parse_budget,
    project,
    smallest_macs,
    uniform_sample,
)
from rank_search.search.space import ResolvedSpace, parse_space, resolve_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

SIZE = (3, 32, 32)
SPACES: dict[str, dict[str, Any]] = {
    "tucker2": {"models": ["resnet20"], "layers": [{"match": "layer*.*.conv*", "ratio": [0.1, 1.0]}]},
    "mixed-block": {
        "models": ["resnet20"],
        "layers": [
            {
                "match": "layer*.*.conv*",
                "formats": ["tucker2", "svd", "dense"],
                "ratio": [0.1, 1.0],
                "round_to": 2,
                "tie": "block",
            }
        ],
    },
    "rank-stage": {
        "models": ["resnet20"],
        "layers": [
            {
                "match": "layer*.*.conv*",
                "formats": ["tucker2", "dense"],
                "rank": [4, 64],
                "round_to": 4,
                "tie": "stage",
            },
            {"match": "fc", "formats": ["svd", "dense"], "ratio": [0.2, 1.0]},
        ],
    },
}


@functools.cache
def space(name: str) -> ResolvedSpace:
    infos = list_factorizable(create_model("resnet20"), SIZE)
    return resolve_space(parse_space(SPACES[name], f"{name}.yaml"), "resnet20", infos, input_size=SIZE)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.5, Budget(fraction=0.5)),
        ({"fraction": 0.25}, Budget(fraction=0.25)),
        ({"macs": 1000}, Budget(macs=1000)),
    ],
)
def test_parse_budget(value: Any, expected: Budget) -> None:
    assert parse_budget(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        0,
        1.5,
        -0.1,
        "half",
        True,
        {"fraction": 2},
        {"macs": 0},
        {"macs": 1.5},
        {"flops": 10},
        {"fraction": 0.5, "macs": 10},
    ],
)
def test_parse_budget_errors(value: Any) -> None:
    with pytest.raises(ConfigError, match="budget"):
        parse_budget(value)


def test_budget_resolves_against_dense() -> None:
    assert Budget(fraction=0.5).resolve(40_551_040) == 20_275_520
    assert Budget(macs=123).resolve(40_551_040) == 123


@pytest.mark.parametrize("name", sorted(SPACES))
@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("fill_up", [False, True])
def test_projection_keeps_every_sample_within_budget(name: str, fraction: float, fill_up: bool) -> None:
    res = space(name)
    budget = Budget(fraction=fraction).resolve(res.dense_macs)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=int(fraction * 10)))
    gaps = []
    for _ in range(40):
        sample = res.suggest(study.ask())
        result = project(res, sample, budget, fill_up=fill_up)
        assert result.macs == res.macs(result.sample) <= budget
        assert result.sampled_macs == res.macs(sample)
        if result.sampled_macs <= budget and not fill_up:
            assert not result.projected and result.sample == sample
        if result.projected:
            gaps.append(1 - result.macs / budget)
    # projected samples land close to the budget (rank steps of tied units are the only gap)
    assert not gaps or sorted(gaps)[len(gaps) // 2] < 0.05


def test_projection_scales_down_not_up_per_unit() -> None:
    res = space("tucker2")
    budget = Budget(fraction=0.3).resolve(res.dense_macs)
    params = {f"{u.key}.ratio": 0.9 for u in res.units}
    sample = res.suggest(optuna.trial.FixedTrial(params))
    result = project(res, sample, budget)
    assert result.projected and result.scale < 1
    for key, choice in result.sample.units.items():
        assert choice.value <= sample.units[key].value + 1e-9


def test_projection_switches_dense_units_when_needed() -> None:
    res = space("mixed-block")
    budget = Budget(fraction=0.15).resolve(res.dense_macs)
    params: dict[str, Any] = {}
    for unit in res.units:
        params[unit.format_param], params[unit.value_param] = "dense", 0.5
    result = project(res, res.suggest(optuna.trial.FixedTrial(params)), budget)
    assert result.macs <= budget
    assert any(choice.format != "dense" for choice in result.sample.units.values())


@pytest.mark.parametrize("name", sorted(SPACES))
@pytest.mark.parametrize("fraction", [0.15, 0.3, 0.5, 0.75])
def test_uniform_sample_within_one_percent(name: str, fraction: float) -> None:
    res = space(name)
    budget = Budget(fraction=fraction).resolve(res.dense_macs)
    sample = uniform_sample(res, budget)
    macs = res.macs(sample)
    # per-layer units reach 1%; coarser units land within one of their rank steps (block-tied,
    # round_to 2: about 1%; stage-tied, round_to 4: 4 ranks in 6 layers at once)
    assert {"tucker2": 0.99, "mixed-block": 0.98, "rank-stage": 0.9}[name] * budget <= macs <= budget
    formats = {c.format for c in sample.units.values()}
    assert formats <= {"tucker2", "svd"} and ("tucker2" in formats)
    values = [c.value for k, c in sample.units.items() if res.unit(k).group.kind == "ratio"]
    if values:  # uniform up to one rounding level
        assert max(values) - min(values) < 0.15


def test_uniform_sample_stays_uniform_when_tucker2_cannot_meet_the_budget() -> None:
    """MobileNetV2's 1x1 convs: Tucker-2 at the minimum ratio costs ~0.79 of dense, so at a 0.5
    budget the uniform point is uniform SVD near the budget, not a min-rank projection (~0.32)."""
    from pathlib import Path

    from rank_search.search.budget import project
    from rank_search.search.space import load_space

    size = (3, 32, 32)
    infos = list_factorizable(create_model("mobilenet_v2", num_classes=10), size)
    spaces = Path(__file__).resolve().parents[1] / "spaces"
    res = resolve_space(load_space(spaces / "mobilenet-v2.yaml"), "mobilenet_v2", infos, input_size=size)
    budget = Budget(fraction=0.5).resolve(res.dense_macs)
    tucker_at_min = uniform_sample(res, 0.0, fmt="tucker2")
    assert res.macs(tucker_at_min) > budget  # the preferred format cannot reach it
    sample = uniform_sample(res, budget)
    assert {c.format for c in sample.units.values()} == {"svd"}
    assert 0.98 * budget <= res.macs(sample) <= budget
    assert not project(res, sample, budget, fill_up=True).projected


def test_uniform_sample_is_valid_params() -> None:
    res = space("mixed-block")
    budget = Budget(fraction=0.4).resolve(res.dense_macs)
    params = res.params(uniform_sample(res, budget))
    again = res.suggest(optuna.trial.FixedTrial(params))
    assert res.macs(again) <= budget


def test_budget_below_smallest_reachable_names_it() -> None:
    res = space("tucker2")
    least = smallest_macs(res)
    check_budget(res, least)
    with pytest.raises(BudgetError) as info:
        check_budget(res, least - 1)
    message = str(info.value)
    assert f"{least:,} MACs" in message and f"{least / res.dense_macs:.4f}" in message
    assert "Smallest reachable budget" in message and "tucker2.yaml" in message


def test_smallest_uses_cheapest_formats() -> None:
    res = space("mixed-block")
    least = smallest_macs(res)
    for fmt in ("tucker2", "svd", "dense"):
        params = {p: v for u in res.units for p, v in ((u.format_param, fmt), (u.value_param, 0.1))}
        assert least <= res.macs(res.suggest(optuna.trial.FixedTrial(params)))
    assert smallest_macs(space("rank-stage")) < space("rank-stage").dense_macs

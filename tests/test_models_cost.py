"""Model registry and MAC counting against formulas, flop_counter and published counts."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rank_search.config import LayerSpec
from rank_search.convert import apply_rank_config, list_factorizable
from rank_search.cost import count_cost, count_params
from rank_search.models import create_model, default_input_size, list_models


def flop_counter_macs(model: nn.Module, size: tuple[int, ...]) -> int:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *size))
    return counter.get_total_flops() // 2


def test_registry_lists_cifar_and_torchvision() -> None:
    names = list_models()
    for name in ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18", "mobilenet_v2"):
        assert name in names
    assert list_models("resnet2*") == ["resnet20"]


def test_cifar_resnet_names_follow_torchvision() -> None:
    names = dict(create_model("resnet20").named_modules())
    for name in ("conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1", "layer3.2.conv2", "fc"):
        assert name in names
    assert "layer4" not in names


@pytest.mark.parametrize(
    ("name", "macs", "params"),
    [("resnet20", 40_550_000, 270_000), ("resnet56", 125_490_000, 850_000)],
)
def test_cifar_resnet_published_counts(name: str, macs: int, params: int) -> None:
    report = count_cost(create_model(name), (3, 32, 32))
    assert report.macs == pytest.approx(macs, rel=2e-3)
    assert report.params == pytest.approx(params, rel=0.02)


def test_resnet18_published_counts() -> None:
    model = create_model("resnet18", num_classes=1000)
    report = count_cost(model, (3, 224, 224))
    assert report.params == 11_689_512
    assert report.macs == pytest.approx(1.814e9, rel=1e-3)


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
def test_macs_match_flop_counter_dense(name: str) -> None:
    size = (3, 32, 32) if name == "resnet20" else (3, 64, 64)
    model = create_model(name)
    assert count_cost(model, size).macs == flop_counter_macs(model, size)


def test_macs_match_flop_counter_low_rank() -> None:
    model = create_model("resnet20")
    apply_rank_config(
        model,
        {
            "layer1.0.conv1": LayerSpec.tucker2(8, 4),
            "layer2.0.conv1": LayerSpec.svd(12),
            "fc": LayerSpec.svd(5),
        },
    )
    report = count_cost(model, (3, 32, 32))
    assert report.macs == flop_counter_macs(model, (3, 32, 32))
    by_name = {layer.name: layer for layer in report.layers}
    # hand formula: layer1.0.conv1 is 16->16, 3x3, 32x32 in and out
    hw = 32 * 32
    assert by_name["layer1.0.conv1"].macs == hw * 16 * 8 + hw * 8 * 4 * 9 + hw * 4 * 16
    assert by_name["layer1.0.conv1"].format == "tucker2"
    assert by_name["fc"].macs == 5 * (64 + 10)
    assert report.params == count_params(model)


def test_analytic_layer_macs_equal_counted() -> None:
    """LayerInfo.macs (used to cost sampled configs) equals counting the built model."""
    model = create_model("resnet20")
    infos = {i.name: i for i in list_factorizable(model, (3, 32, 32))}
    specs = {
        "layer2.0.conv1": LayerSpec.tucker2(5, 7),
        "layer3.1.conv2": LayerSpec.svd(9),
        "fc": LayerSpec.svd(3),
    }
    apply_rank_config(model, specs)
    counted = {layer.name: layer.macs for layer in count_cost(model, (3, 32, 32)).layers}
    for name, spec in specs.items():
        assert infos[name].macs(spec.format, spec.ranks()) == counted[name]


@pytest.mark.parametrize("model_name", ["resnet20", "mobilenet_v2"])
def test_formula_table_equals_counting_for_every_format(model_name: str) -> None:
    """The formula table (LayerInfo.macs/param_count, AnalyticCost) equals counting the built
    model layer by layer: dense (grouped and depthwise convs too), Tucker-2 and SVD, conv and linear."""
    from rank_search.config import ModelSpec, RankConfig
    from rank_search.cost import AnalyticCost

    size = (3, 32, 32)
    model = create_model(model_name)
    infos = {i.name: i for i in list_factorizable(model, size)}
    dense_counted = {layer.name: layer for layer in count_cost(model, size).layers}
    specs: dict[str, LayerSpec] = {}
    for index, (name, info) in enumerate(infos.items()):
        assert info.macs("dense", {}) == info.dense_macs == dense_counted[name].macs
        assert info.param_count("dense", {}) == info.params == dense_counted[name].params
        fmts = [f for f in ("tucker2", "svd") if info.allows(f)]
        if fmts:
            fmt = fmts[index % len(fmts)]
            specs[name] = LayerSpec(fmt, **{k: max(1, v // 3) for k, v in info.full_ranks[fmt].items()})
    built = create_model(model_name)
    apply_rank_config(built, specs)
    counted = {layer.name: layer for layer in count_cost(built, size).layers}
    for name, spec in specs.items():
        assert infos[name].macs(spec.format, spec.ranks()) == counted[name].macs, name
        assert infos[name].param_count(spec.format, spec.ranks()) == counted[name].params, name
    cost = AnalyticCost.of(RankConfig(ModelSpec(model_name), size)).of_layers(specs)
    assert (cost.macs, cost.params) == (count_cost(built, size).macs, count_params(built))
    assert AnalyticCost.of(RankConfig(ModelSpec(model_name), size)).of_model(built) == cost


def test_list_factorizable_reports_ranks_and_reasons() -> None:
    infos = {i.name: i for i in list_factorizable(create_model("mobilenet_v2"), (3, 64, 64))}
    first = infos["features.0.0"]
    assert first.full_ranks["tucker2"] == {"rank_in": 3, "rank_out": 32}
    assert first.full_ranks["svd"] == {"rank": min(32, 3 * 9)}
    depthwise = infos["features.1.conv.0.0"]
    assert depthwise.groups == 32
    assert "tucker2" not in depthwise.full_ranks and "group" in depthwise.reasons["tucker2"]
    assert "tucker2" not in infos["classifier.1"].full_ranks
    assert infos["classifier.1"].full_ranks["svd"] == {"rank": 1000}  # torchvision: 1000 classes


def test_default_input_sizes() -> None:
    assert default_input_size("resnet20") == (3, 32, 32)
    assert default_input_size("resnet50") == (3, 224, 224)


def test_seeded_models_are_reproducible() -> None:
    a, b = create_model("resnet20", seed=3), create_model("resnet20", seed=3)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, create_model("resnet20", seed=4).conv1.weight)


def test_import_stays_light() -> None:
    import subprocess

    code = (
        "import sys, rank_search, rank_search.config, rank_search.convert, rank_search.cost;"
        "bad=[m for m in ('ray','optuna','matplotlib') if m in sys.modules]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

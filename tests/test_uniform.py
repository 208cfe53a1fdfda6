"""Uniform rank configs and the one ratio bisection (rank_search.uniform)."""

from __future__ import annotations

import pytest

from rank_search.config import LayerSpec
from rank_search.convert import layer_infos
from rank_search.cost import analytic_macs
from rank_search.uniform import largest_fitting, uniform_config, uniform_layers, uniform_ratio_bounds


def test_uniform_config_halves_ranks() -> None:
    config = uniform_config("resnet20", 10, (3, 32, 32), 0.5, ["layer1.0.conv1", "layer3.0.conv2"])
    assert config.layers["layer1.0.conv1"] == LayerSpec.tucker2(8, 8)
    assert config.layers["layer3.0.conv2"] == LayerSpec.tucker2(32, 32)


def test_uniform_layers_keep_each_layers_format() -> None:
    infos = layer_infos("resnet20", 10, (3, 16, 16))
    formats = {"layer1.0.conv1": "svd", "layer1.0.conv2": "tucker2", "layer2.0.conv1": "dense"}
    layers = uniform_layers(infos, 0.25, formats)
    assert layers["layer1.0.conv1"] == LayerSpec.svd(4)  # full rank min(16, 16*9) = 16
    assert layers["layer1.0.conv2"] == LayerSpec.tucker2(4, 4)
    assert layers["layer2.0.conv1"] == LayerSpec("dense")


def test_uniform_ratio_bounds_bracket_the_target() -> None:
    infos = layer_infos("resnet20", 10, (3, 32, 32))
    formats = dict.fromkeys(["layer1.0.conv1", "layer2.1.conv2", "layer3.2.conv1"], "tucker2")
    target = analytic_macs(infos, {}) - 200_000
    lo, hi = uniform_ratio_bounds(infos, formats, target)
    assert 0 < lo < hi <= 1 and hi - lo == pytest.approx(2**-30)
    at = {r: analytic_macs(infos, uniform_layers(infos, r, formats)) for r in (lo, hi)}
    assert at[lo] <= target < at[hi]
    assert uniform_ratio_bounds(infos, formats, 10 * analytic_macs(infos, {})) == (1.0, 1.0)


def test_largest_fitting_keeps_only_fitting_points() -> None:
    assert largest_fitting(lambda x: x <= 0.3, 0.0, 1.0, 40)[0] == pytest.approx(0.3)
    assert largest_fitting(lambda x: True, 0.0, 1.0, 40) == (1.0, 1.0)
    seen: list[float] = []
    lo, _ = largest_fitting(lambda x: seen.append(x) or x in (0.0, 0.5), 0.0, 1.0, 5)  # not monotone
    assert lo == 0.5


def test_uniform_ranks_rounded_to_the_runtime_block() -> None:
    infos = layer_infos("resnet18", 1000, (3, 64, 64))
    formats = {"layer1.0.conv1": "tucker2", "layer4.0.conv2": "tucker2"}  # 64 -> 64, 512 -> 512
    layers = uniform_layers(infos, 0.49, formats, round_to=16)
    assert layers["layer1.0.conv1"] == LayerSpec.tucker2(32, 32)  # 31.4 -> 32
    assert layers["layer4.0.conv2"] == LayerSpec.tucker2(256, 256)  # 250.9 -> 256
    assert uniform_layers(infos, 0.45, formats, round_to=16)["layer4.0.conv2"] == LayerSpec.tucker2(224, 224)
    assert uniform_layers(infos, 0.01, formats, round_to=16)["layer1.0.conv1"] == LayerSpec.tucker2(16, 16)
    assert uniform_layers(infos, 1.0, formats, round_to=48)["layer1.0.conv1"] == LayerSpec.tucker2(48, 48)
    target = analytic_macs(infos, {}) - 0.5 * sum(infos[n].dense_macs for n in formats)
    lo, _ = uniform_ratio_bounds(infos, formats, target, round_to=16)
    fitted = uniform_layers(infos, lo, formats, round_to=16)
    assert analytic_macs(infos, fitted) <= target
    assert all(v % 16 == 0 for spec in fitted.values() for v in spec.ranks().values())

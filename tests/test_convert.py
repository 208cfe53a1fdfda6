"""Conversion by rank config on resnet20, resnet18 and mobilenet_v2: it trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rank_search.config import LayerSpec
from rank_search.convert import apply_rank_config, list_factorizable
from rank_search.errors import ConfigError
from rank_search.layers import LowRankLayer
from rank_search.models import create_model

CASES = {
    "resnet20": (
        (3, 32, 32),
        {
            "layer1.0.conv1": LayerSpec.tucker2(8, 8),
            "layer2.1.conv2": LayerSpec.svd(12),
            "layer3.0.conv1": LayerSpec.tucker2(16, 24),
            "fc": LayerSpec.svd(4),
        },
    ),
    "resnet18": (
        (3, 64, 64),
        {
            "layer1.0.conv1": LayerSpec.tucker2(16, 16),
            "layer4.1.conv2": LayerSpec.svd(32),
            "fc": LayerSpec.svd(8),
        },
    ),
    "mobilenet_v2": (
        (3, 64, 64),
        {
            "features.2.conv.0.0": LayerSpec.tucker2(8, 32),
            "features.18.0": LayerSpec.svd(64),
            "classifier.1": LayerSpec.svd(6),
        },
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_converted_model_trains(name: str) -> None:
    torch.manual_seed(0)
    size, specs = CASES[name]
    model = create_model(name, num_classes=10, seed=0)
    report = apply_rank_config(model, specs)
    assert report.converted == {n: s.format for n, s in specs.items()}
    modules = dict(model.named_modules())
    for layer_name in specs:
        assert isinstance(modules[layer_name], LowRankLayer)
    x, y = torch.randn(8, *size), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if not losses:
            for layer_name in specs:
                for pname, param in modules[layer_name].named_parameters():
                    assert param.grad is not None and param.grad.abs().sum() > 0, f"{layer_name}.{pname}"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_unknown_layer_lists_close_names() -> None:
    with pytest.raises(ConfigError, match=r"layer1\.0\.conv1") as info:
        apply_rank_config(create_model("resnet20"), {"layer1.0.conv": LayerSpec.tucker2(4, 4)})
    assert info.value.key == "layers.layer1.0.conv"


def test_grouped_conv_is_refused_or_skipped_with_reason() -> None:
    spec = {"features.1.conv.0.0": LayerSpec.tucker2(4, 4)}
    with pytest.raises(ConfigError, match="group"):
        apply_rank_config(create_model("mobilenet_v2"), spec)
    report = apply_rank_config(create_model("mobilenet_v2"), spec, skip_unfactorizable=True)
    assert report.converted == {}
    assert "group" in report.left_dense["features.1.conv.0.0"]


def test_rank_above_full_is_refused() -> None:
    with pytest.raises(ConfigError, match="16"):
        apply_rank_config(create_model("resnet20"), {"layer1.0.conv1": LayerSpec.tucker2(17, 4)})


def test_svd_init_from_dense_is_exact_at_full_rank() -> None:
    model = create_model("resnet20", seed=1).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    infos = {i.name: i for i in list_factorizable(model, (3, 32, 32))}
    full = infos["layer2.0.conv2"].full_ranks["tucker2"]
    apply_rank_config(model, {"layer2.0.conv2": LayerSpec("tucker2", **full)}, init="svd")
    torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)

"""Inference export: BatchNorm folding and SVD-scale merging give the eval-mode model's outputs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from fixtures.weights import randomize_bn_and_scales
from torch import nn

from rank_search.config import LayerSpec
from rank_search.convert import apply_rank_config, list_factorizable
from rank_search.errors import RankSearchError
from rank_search.inference import (
    check_equivalence,
    export_for_inference,
    find_conv_bn_pairs,
    fold_bn_into_conv,
)
from rank_search.latency import num_threads
from rank_search.layers import LowRankLayer, SVDConv2d, SVDLinear, Tucker2Conv2d
from rank_search.models import create_model


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: fast and steady on a small or shared CPU."""
    with num_threads(1):
        yield


def _low_rank_model(name: str, input_size: tuple[int, int, int], mix: str) -> nn.Module:
    """``name`` with all factorizable layers but the first in ``mix`` ('dense', 'tucker2', 'svd', 'mixed')."""
    model = create_model(name, seed=0)
    layers = {}
    for index, info in enumerate(list_factorizable(model, input_size)[1:]):
        fmt = mix if mix != "mixed" else ("tucker2", "svd")[index % 2]
        if mix == "dense" or not info.allows(fmt):
            continue
        half = {k: max(1, v // 2) for k, v in info.full_ranks[fmt].items()}
        layers[info.name] = LayerSpec(fmt, **half)
    apply_rank_config(model, layers)
    return randomize_bn_and_scales(model)


CASES = [
    ("resnet20", (3, 32, 32), "dense"),
    ("resnet20", (3, 32, 32), "tucker2"),
    ("resnet20", (3, 32, 32), "svd"),
    ("resnet20", (3, 32, 32), "mixed"),
    ("resnet18", (3, 32, 32), "mixed"),
    ("mobilenet_v2", (3, 64, 64), "mixed"),
]


@pytest.mark.parametrize(("name", "input_size", "mix"), CASES)
def test_export_matches_eval_model(name: str, input_size: tuple[int, int, int], mix: str) -> None:
    model = _low_rank_model(name, input_size, mix)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(find_conv_bn_pairs(model)) == n_bn  # every BN in these models follows a conv
    exported = export_for_inference(model)
    result = check_equivalence(model, exported, input_size, atol=1e-4, rtol=1e-4)
    assert result.ok, result
    assert not any(isinstance(m, nn.BatchNorm2d | LowRankLayer) for m in exported.modules())
    assert model.training and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn  # untouched
    conv_weights = [
        m.weight for m in exported.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
    ]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights)


def test_low_rank_layers_become_plain_convs_under_the_same_names() -> None:
    model = _low_rank_model("resnet20", (3, 32, 32), "mixed")
    exported = export_for_inference(model, channels_last=False)
    modules = dict(exported.named_modules())
    for name, module in model.named_modules():
        if isinstance(module, Tucker2Conv2d):
            assert {f"{name}.first", f"{name}.core", f"{name}.last"} <= set(modules)
            assert modules[f"{name}.last"].bias is not None  # the folded BN
        elif isinstance(module, SVDConv2d):
            assert {f"{name}.v", f"{name}.u"} <= set(modules)
            assert not hasattr(modules[name], "s")
    assert not any(p.requires_grad for p in exported.parameters())


def test_svd_linear_scale_is_merged() -> None:
    torch.manual_seed(0)
    layer = SVDLinear(12, 5, rank=4)
    with torch.no_grad():
        layer.s.copy_(torch.tensor([3.0, 2.0, 0.5, -1.0]))
    model = nn.Sequential(nn.Flatten(), layer)
    exported = export_for_inference(model)
    assert check_equivalence(model, exported, (12,)).ok
    assert isinstance(exported[1], nn.Sequential) and len(exported[1]) == 2


def test_single_low_rank_layer_exports() -> None:
    layer = Tucker2Conv2d(8, 8, 3, padding=1, rank_in=4, rank_out=4)
    exported = export_for_inference(layer)
    assert isinstance(exported, nn.Sequential)
    assert check_equivalence(layer, exported, (8, 6, 6)).ok


def test_fold_bn_into_conv_with_and_without_bias() -> None:
    torch.manual_seed(0)
    for bias in (False, True):
        conv, bn = nn.Conv2d(3, 4, 3, bias=bias), nn.BatchNorm2d(4)
        randomize_bn_and_scales(bn, seed=1)
        model = nn.Sequential(conv, bn).eval()
        x = torch.randn(2, 3, 7, 7)
        expected = model(x)
        fold_bn_into_conv(conv, bn)
        torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)


class _Shared(nn.Module):
    """conv output feeds a BN and the residual: folding it would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        return self.bn(z) + z


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self, shared: bool = False) -> None:
        super().__init__()
        self.shared = shared
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.sum() > 0:
            y = y.relu()
        z = self.conv2(y)
        return self.bn2(z) + (z if self.shared else 0)


def test_shared_conv_output_is_not_folded() -> None:
    model = randomize_bn_and_scales(_Shared())
    assert find_conv_bn_pairs(model) == []
    exported = export_for_inference(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in exported.modules())
    assert check_equivalence(model, exported, (4, 5, 5)).ok


def test_untraceable_model_uses_hook_fallback_with_input_size() -> None:
    model = randomize_bn_and_scales(_Branchy())
    with pytest.warns(UserWarning, match="not folded"):
        unfolded = export_for_inference(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in unfolded.modules()) == 2
    folded = export_for_inference(model, input_size=(3, 8, 8))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert check_equivalence(model, folded, (3, 8, 8)).ok
    assert check_equivalence(model, unfolded, (3, 8, 8)).ok


def test_hook_fallback_refuses_a_wrong_fold() -> None:
    model = randomize_bn_and_scales(_Branchy(shared=True))
    with pytest.raises(RankSearchError, match="fold_bn=False"):
        export_for_inference(model, input_size=(3, 8, 8))
    assert check_equivalence(model, export_for_inference(model, fold_bn=False), (3, 8, 8)).ok


def test_check_equivalence_detects_a_difference() -> None:
    model = create_model("resnet20", seed=0)
    exported = export_for_inference(model)
    with torch.no_grad():
        next(exported.parameters()).add_(0.5)
    assert not check_equivalence(model, exported, (3, 32, 32)).ok


def test_dtype_export_runs() -> None:
    model = _low_rank_model("resnet20", (3, 16, 16), "mixed")
    exported = export_for_inference(model, dtype=torch.bfloat16)
    assert check_equivalence(model, exported, (3, 16, 16), atol=0.5, rtol=0.1).ok


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_export_matches() -> None:
    model = _low_rank_model("resnet20", (3, 32, 32), "mixed").cuda()
    exported = export_for_inference(model, cuda_graph=True)
    x = torch.randn(8, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = model.eval()(x)
        torch.testing.assert_close(exported(x).clone(), expected, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(exported(x * 2).clone(), model(x * 2), atol=1e-3, rtol=1e-3)

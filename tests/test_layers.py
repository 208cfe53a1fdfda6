"""Tests for rank_search.layers: equivalence with dense layers, costs, init scale, validation."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rank_search.layers import (
    LOW_RANK_CONV_CLASSES,
    LowRankLayer,
    SVDConv2d,
    SVDLinear,
    Tucker2Conv2d,
    conv_output_hw,
    dense_layer_macs,
    full_ranks,
    low_rank_class,
    low_rank_modules,
    make_low_rank,
    unfactorizable_reason,
)

CONV_CASES: dict[str, dict[str, Any]] = {
    "3x3": {"in_channels": 5, "out_channels": 7, "kernel_size": 3},
    "stride2_pad1": {"in_channels": 5, "out_channels": 7, "kernel_size": 3, "stride": 2, "padding": 1},
    "dilation2_nobias": {"in_channels": 6, "out_channels": 4, "kernel_size": 3, "dilation": 2, "bias": False},
    "1x1": {"in_channels": 3, "out_channels": 9, "kernel_size": 1},
    "1x1_stride2_nobias": {"in_channels": 9, "out_channels": 3, "kernel_size": 1, "stride": 2, "bias": False},
    "nonsquare_kernel": {"in_channels": 4, "out_channels": 6, "kernel_size": (3, 1), "padding": (1, 0)},
    "reflect_same": {
        "in_channels": 4,
        "out_channels": 5,
        "kernel_size": 3,
        "padding": "same",
        "padding_mode": "reflect",
    },
}
INPUT_HW = (9, 7)  # non-square input


def _dense_conv(**kwargs: Any) -> nn.Conv2d:
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs, dtype=torch.float64)
    if conv.bias is not None:
        nn.init.normal_(conv.bias)
    return conv


def _conv_input(conv: nn.Conv2d, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, conv.in_channels, *INPUT_HW, dtype=torch.float64)


# --------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("fmt", sorted(LOW_RANK_CONV_CLASSES))
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_full_rank_from_dense_matches_dense_conv(fmt: str, case: str) -> None:
    conv = _dense_conv(**CONV_CASES[case])
    layer = make_low_rank(conv, fmt, full_ranks(conv, fmt), init="svd")
    x = _conv_input(conv)
    expected = conv(x)
    assert layer(x).shape == expected.shape
    torch.testing.assert_close(layer(x), expected, atol=1e-10, rtol=1e-8)
    dense = layer.to_dense()
    assert isinstance(dense, nn.Conv2d)
    assert (dense.stride, dense.padding, dense.dilation) == (conv.stride, conv.padding, conv.dilation)
    assert dense.padding_mode == conv.padding_mode
    assert (dense.bias is None) == (conv.bias is None)
    torch.testing.assert_close(dense.weight, conv.weight, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(dense(x), expected, atol=1e-10, rtol=1e-8)


def test_full_rank_from_dense_float32_close() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 6, 6)
    for fmt in LOW_RANK_CONV_CLASSES:
        layer = make_low_rank(conv, fmt, full_ranks(conv, fmt), init="svd")
        assert all(p.dtype == torch.float32 for p in layer.parameters())
        torch.testing.assert_close(layer(x), conv(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_svd_linear_full_rank_matches_dense(bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(6, 4, bias=bias, dtype=torch.float64)
    layer = make_low_rank(linear, "svd", {"rank": 4}, init="svd")
    assert isinstance(layer, SVDLinear)
    x = torch.randn(3, 2, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), linear(x))
    dense = layer.to_dense()
    assert isinstance(dense, nn.Linear)
    torch.testing.assert_close(dense.weight, linear.weight)
    torch.testing.assert_close(dense(x), linear(x))


@pytest.mark.parametrize("fmt", sorted(LOW_RANK_CONV_CLASSES))
def test_truncation_error_decreases_with_rank(fmt: str) -> None:
    conv = _dense_conv(in_channels=6, out_channels=8, kernel_size=3, padding=1)
    x = _conv_input(conv)
    full = full_ranks(conv, fmt)
    steps = range(1, max(full.values()) + 1)
    weight_errors, output_errors = [], []
    for r in steps:
        ranks = {name: min(r, limit) for name, limit in full.items()}
        layer = make_low_rank(conv, fmt, ranks, init="svd")
        weight_errors.append((layer.to_dense().weight - conv.weight).norm().item())
        output_errors.append((layer(x) - conv(x)).norm().item())
    # Nested orthogonal projections: the weight error can only shrink.
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(weight_errors))
    assert all(a >= 0.8 * b for a, b in itertools.pairwise(output_errors))  # roughly
    assert output_errors[0] > 10 * output_errors[-1]


def test_tucker2_hosvd_factors_are_orthonormal() -> None:
    conv = _dense_conv(in_channels=6, out_channels=8, kernel_size=3)
    layer = Tucker2Conv2d.from_dense(conv, rank_in=3, rank_out=5)
    u_in, u_out = layer.factor_matrices()
    assert u_in.shape == (6, 3) and u_out.shape == (8, 5)
    torch.testing.assert_close(u_in.T @ u_in, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(u_out.T @ u_out, torch.eye(5, dtype=torch.float64))
    assert layer.core.weight.shape == (5, 3, 3, 3)


def test_factor_matrices_are_views_of_parameters() -> None:
    tucker = Tucker2Conv2d(6, 8, 3, rank_in=3, rank_out=5)
    svd = SVDConv2d(6, 8, 3, rank=4)
    assert [tuple(m.shape) for m in tucker.factor_matrices()] == [(6, 3), (8, 5)]
    assert [tuple(m.shape) for m in svd.factor_matrices()] == [(8, 4), (54, 4)]
    loss = sum(m.sum() for m in [*tucker.factor_matrices(), *svd.factor_matrices()])
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    for param in (tucker.first.weight, tucker.last.weight, svd.u.weight, svd.v.weight):
        assert param.grad is not None and torch.all(param.grad == 1.0)


# --------------------------------------------------------------------------- costs


def test_macs_and_params_by_hand() -> None:
    # Tucker2Conv2d(16 -> 32, 3x3, stride 2, pad 1), r_in=4, r_out=8, input 16x8x8 -> output 4x4.
    # MACs = 8*8*16*4 + 4*4*4*8*9 + 4*4*8*32 = 4096 + 4608 + 4096 = 12800.
    # Params = 16*4 + 4*8*9 + 8*32 + 32 (bias) = 64 + 288 + 256 + 32 = 640.
    tucker = Tucker2Conv2d(16, 32, 3, stride=2, padding=1, rank_in=4, rank_out=8)
    assert conv_output_hw(tucker, 8, 8) == (4, 4)
    assert tucker.macs((16, 8, 8)) == 12800
    assert tucker.num_params() == 640
    # SVDConv2d(16 -> 32, 3x3, stride 2, pad 1), r=6: MACs = 4*4*16*9*6 + 4*4*6*32 = 13824 + 3072 = 16896.
    # Params = 6*16*9 + 6 (s) + 32*6 + 32 (bias) = 864 + 6 + 192 + 32 = 1094.
    svd = SVDConv2d(16, 32, 3, stride=2, padding=1, rank=6)
    assert svd.macs((16, 8, 8)) == 16896
    assert svd.num_params() == 1094
    # SVDLinear(20 -> 10), r=4: MACs = 20*4 + 4*10 = 120 per row; params = 80 + 4 + 40 + 10 = 134.
    linear = SVDLinear(20, 10, rank=4)
    assert linear.macs((20,)) == 120
    assert linear.macs((3, 20)) == 360
    assert linear.num_params() == 134
    # Dense: 4*4*32*16*9 = 73728; grouped (groups=4, no pad, 6x6 out): 36*32*4*9 = 41472; linear 5*20*10.
    assert dense_layer_macs(nn.Conv2d(16, 32, 3, stride=2, padding=1), (16, 8, 8)) == 73728
    assert dense_layer_macs(nn.Conv2d(16, 32, 3, groups=4), (16, 8, 8)) == 41472
    assert dense_layer_macs(nn.Linear(20, 10), (5, 20)) == 1000


def test_conv_output_hw_matches_torch() -> None:
    for case in CONV_CASES.values():
        conv = nn.Conv2d(**case)
        out = conv(torch.zeros(1, conv.in_channels, *INPUT_HW))
        assert conv_output_hw(conv, *INPUT_HW) == tuple(out.shape[-2:])


def test_macs_reject_wrong_input_size() -> None:
    with pytest.raises(ValueError, match="C=16"):
        Tucker2Conv2d(16, 32, 3, rank_in=4, rank_out=8).macs((8, 8, 8))
    with pytest.raises(ValueError, match="in_features=20"):
        SVDLinear(20, 10, rank=4).macs((10,))


def _counted_macs(module: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return int(counter.get_total_flops()) // 2


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_macs_match_flop_counter(case: str) -> None:
    conv = nn.Conv2d(**CONV_CASES[case])
    x = torch.randn(1, conv.in_channels, *INPUT_HW)
    size = tuple(x.shape[1:])
    assert dense_layer_macs(conv, size) == _counted_macs(conv, x)
    for fmt in LOW_RANK_CONV_CLASSES:
        full = full_ranks(conv, fmt)
        layer = make_low_rank(conv, fmt, {name: max(1, r - 1) for name, r in full.items()})
        assert layer.macs(size) == _counted_macs(layer, x)


def test_linear_macs_match_flop_counter() -> None:
    layer = SVDLinear(12, 7, rank=5)
    x = torch.randn(1, 3, 12)
    assert layer.macs((3, 12)) == _counted_macs(layer, x) == 3 * 5 * (12 + 7)
    assert dense_layer_macs(nn.Linear(12, 7), (3, 12)) == _counted_macs(nn.Linear(12, 7), x)


# --------------------------------------------------------------------------- initialization


def _he_conv() -> nn.Conv2d:
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    return conv


def _make_layer(kind: str) -> nn.Module:
    if kind == "dense":
        return _he_conv()
    if kind == "tucker2":
        return Tucker2Conv2d(64, 64, 3, padding=1, rank_in=32, rank_out=32)
    return SVDConv2d(64, 64, 3, padding=1, rank=32)


def _stack_variance(kind: str, seed: int) -> float:
    torch.manual_seed(seed)
    x = torch.randn(8, 64, 16, 16)
    layers: list[nn.Module] = []
    for _ in range(20):
        layers += [_make_layer(kind), nn.ReLU()]
    with torch.no_grad():
        return nn.Sequential(*layers)(x).var().item()


def test_init_keeps_dense_activation_scale_through_20_layers() -> None:
    # Output variance of a 20-layer conv+ReLU stack, low-rank (ranks 32 of 64) against dense He,
    # over 12 seeds: both the mean variance and the typical (geometric-mean) variance stay
    # within a factor of 2. nn.Conv2d's default init would give ~1e-10.
    seeds = range(12)
    dense = [_stack_variance("dense", s) for s in seeds]
    for kind in ("tucker2", "svd"):
        low_rank = [_stack_variance(kind, s) for s in seeds]
        mean_ratio = sum(low_rank) / sum(dense)
        geo_ratio = math.exp(sum(map(math.log, low_rank)) / 12 - sum(map(math.log, dense)) / 12)
        assert 0.5 <= mean_ratio <= 2.0, (kind, mean_ratio)
        assert 0.5 <= geo_ratio <= 2.0, (kind, geo_ratio)


def test_init_matches_he_expected_gain_of_one_layer() -> None:
    # E_init ||relu(layer(x))||^2 for a fixed input equals the dense He layer's (derivation in
    # Tucker2Conv2d's docstring); averaged over 48 draws it agrees to a few percent.
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4, 64, 8, 8))

    def mean_gain(kind: str) -> float:
        with torch.no_grad():
            gains = [torch.relu(_make_layer(kind)(x)).square().mean().item() for _ in range(48)]
        return sum(gains) / len(gains) / x.square().mean().item()

    dense = mean_gain("dense")
    assert 0.75 < dense < 1.0  # ReLU halves 2*E[x^2]; the zero border loses a little
    for kind in ("tucker2", "svd"):
        assert 0.88 < mean_gain(kind) / dense < 1.12, kind


def test_svd_linear_init_matches_he_linear() -> None:
    torch.manual_seed(0)
    dense_gains, svd_gains = [], []
    for _ in range(32):
        dense = nn.Linear(64, 48)
        nn.init.kaiming_normal_(dense.weight, mode="fan_in", nonlinearity="relu")
        with torch.no_grad():
            dense_gains.append(dense.weight.square().sum().item())
            svd_gains.append(SVDLinear(64, 48, rank=16).to_dense().weight.square().sum().item())
    # ||W||_F^2 = 2 * out_features = 96 in expectation, for He and for the rescaled truncation.
    assert abs(sum(dense_gains) / len(dense_gains) - 96.0) < 3.0
    assert abs(sum(svd_gains) / len(svd_gains) - 96.0) < 3.0


def test_init_factors_orthonormal_and_bias_zero() -> None:
    tucker = Tucker2Conv2d(8, 12, 3, rank_in=4, rank_out=6)
    svd = SVDConv2d(8, 12, 3, rank=5)
    for matrix in [*tucker.factor_matrices(), *svd.factor_matrices()]:
        eye = torch.eye(matrix.shape[1])
        torch.testing.assert_close(matrix.T @ matrix, eye, atol=1e-5, rtol=0)
    assert torch.all(svd.s[:-1] >= svd.s[1:]) and torch.all(svd.s > 0)  # sorted, as DPRP wants
    assert tucker.last.bias is not None and torch.all(tucker.last.bias == 0)
    std = tucker.core.weight.std().item()
    assert 0.7 < std / math.sqrt(2 * 12 / (6 * 4 * 9)) < 1.3


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("layer", "fmt", "fragment"),
    [
        (nn.Conv2d(32, 32, 3, groups=32), "svd", "grouped conv (groups=32) is not factorized"),
        (nn.Conv2d(8, 16, 3, groups=2), "tucker2", "grouped conv (groups=2)"),
        (nn.Linear(4, 4), "tucker2", "tucker2 applies to Conv2d only"),
        (nn.ConvTranspose2d(4, 4, 3), "svd", "transposed"),
        (nn.Conv1d(4, 4, 3), "svd", "not a Conv2d or Linear"),
        (nn.ReLU(), "tucker2", "not a Conv2d or Linear"),
        (Tucker2Conv2d(4, 4, 3, rank_in=2, rank_out=2), "tucker2", "already low-rank"),
    ],
)
def test_unfactorizable_reason(layer: nn.Module, fmt: str, fragment: str) -> None:
    reason = unfactorizable_reason(layer, fmt)
    assert reason is not None and fragment in reason
    with pytest.raises(ValueError, match="cannot factorize"):
        make_low_rank(layer, fmt, {"rank": 1})


def test_factorizable_layers_have_no_reason() -> None:
    assert unfactorizable_reason(nn.Conv2d(4, 8, 3), "tucker2") is None
    assert unfactorizable_reason(nn.Conv2d(4, 8, 3), "svd") is None
    assert unfactorizable_reason(nn.Linear(4, 8), "svd") is None
    with pytest.raises(ValueError, match="unknown low-rank format 'cp'"):
        unfactorizable_reason(nn.Conv2d(4, 8, 3), "cp")


def test_full_ranks() -> None:
    assert full_ranks(nn.Conv2d(3, 64, 3), "tucker2") == {"rank_in": 3, "rank_out": 64}
    assert full_ranks(nn.Conv2d(3, 64, 3), "svd") == {"rank": 27}
    assert full_ranks(nn.Conv2d(64, 16, 1), "svd") == {"rank": 16}
    assert full_ranks(nn.Linear(10, 4), "svd") == {"rank": 4}
    assert low_rank_class("svd", nn.Linear(10, 4)) is SVDLinear
    assert low_rank_class("svd", nn.Conv2d(10, 4, 1)) is SVDConv2d


@pytest.mark.parametrize(
    ("fmt", "ranks", "message"),
    [
        ("svd", {"rank": 0}, "between 1 and 27"),
        ("svd", {"rank": 28}, "rank=28 is out of range, must be between 1 and 27"),
        ("tucker2", {"rank_in": 4, "rank_out": 2}, "rank_in=4 .* between 1 and 3"),
        ("tucker2", {"rank_in": 1, "rank_out": 0}, "between 1 and 32"),
        ("tucker2", {"rank_in": 2}, "missing \\['rank_out'\\]"),
        ("svd", {"rank": 2, "rank_in": 2}, "extra \\['rank_in'\\]"),
        ("svd", {"rank": 2.5}, "must be an integer"),
        ("svd", {"rank": True}, "must be an integer"),
        ("cp", {"rank": 2}, "unknown low-rank format"),
    ],
)
def test_make_low_rank_rejects_bad_ranks(fmt: str, ranks: dict[str, Any], message: str) -> None:
    conv = nn.Conv2d(3, 32, 3)
    with pytest.raises(ValueError, match=message):
        make_low_rank(conv, fmt, ranks)


def test_make_low_rank_copies_hyperparameters() -> None:
    conv = nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), dilation=2, bias=False, dtype=torch.float64)
    for fmt in LOW_RANK_CONV_CLASSES:
        layer = make_low_rank(conv, fmt, {name: 2 for name in full_ranks(conv, fmt)})
        assert isinstance(layer, LOW_RANK_CONV_CLASSES[fmt]) and layer.format == fmt
        assert (layer.kernel_size, layer.stride, layer.padding, layer.dilation) == (
            (3, 5),
            (2, 1),
            (1, 2),
            (2, 2),
        )
        assert all(p.dtype == torch.float64 for p in layer.parameters())
        assert layer.to_dense().bias is None
        assert layer.ranks() == {name: 2 for name in full_ranks(conv, fmt)}
    with pytest.raises(ValueError, match="unknown init"):
        make_low_rank(conv, "svd", {"rank": 2}, init="random")


# --------------------------------------------------------------------------- training


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = Tucker2Conv2d(3, 8, 3, padding=1, rank_in=2, rank_out=4)
        self.head = SVDLinear(8, 5, rank=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_training_step_gives_gradients_everywhere() -> None:
    torch.manual_seed(0)
    model = _Tiny()
    x, target = torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), target).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    names = [name for name, _ in low_rank_modules(model)]
    assert names == ["conv", "head"]
    assert all(isinstance(m, LowRankLayer) for _, m in low_rank_modules(model))

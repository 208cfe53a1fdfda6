"""Tests for rank_search.regularizers: hand-computed values, gradients, batching, DPRP."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from rank_search.layers import SVDConv2d, SVDLinear, Tucker2Conv2d, low_rank_modules
from rank_search.regularizers import (
    REGULARIZERS,
    dprp_compression_loss,
    dprp_structure_loss,
    dso,
    mc,
    orthogonality_penalty,
    penalty_of_matrices,
    regularizer_names,
    so,
    srip,
)

# A = [[1, 0], [0, 2], [0, 0]] (3 x 2): G = A^T A = diag(1, 4), G - I = diag(0, 3).
#   SO   = 0^2 + 3^2 = 9
#   A A^T - I = diag(0, 3, -1): ||.||^2 = 10, so DSO = 9 + 10 = 19 (= 2*9 + (3 - 2)); without floor 18
#   MC   = max |G - I| = 3
#   SRIP = spectral norm of diag(0, 3) = 3
DIAGONAL = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)

# B = [[1, 1], [0, 1], [0, 0]]: G = [[1, 1], [1, 2]], G - I = [[0, 1], [1, 1]].
#   SO = 0 + 1 + 1 + 1 = 3; B B^T - I = [[1, 1, 0], [1, 0, 0], [0, 0, -1]]: 4, so DSO = 7 (= 2*3 + 1)
#   MC = 1; SRIP = largest |eigenvalue| of [[0, 1], [1, 1]] = (1 + sqrt(5)) / 2
COUPLED = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
GOLDEN = (1 + math.sqrt(5)) / 2


def test_hand_values_diagonal() -> None:
    assert so(DIAGONAL).item() == pytest.approx(9.0)
    assert dso(DIAGONAL).item() == pytest.approx(19.0)
    assert dso(DIAGONAL, remove_floor=True).item() == pytest.approx(18.0)
    assert mc(DIAGONAL).item() == pytest.approx(3.0)
    assert srip(DIAGONAL).item() == pytest.approx(3.0)


def test_hand_values_coupled() -> None:
    assert so(COUPLED).item() == pytest.approx(3.0)
    assert dso(COUPLED).item() == pytest.approx(7.0)
    assert dso(COUPLED, remove_floor=True).item() == pytest.approx(6.0)
    assert mc(COUPLED).item() == pytest.approx(1.0)
    assert srip(COUPLED, n_iter=30).item() == pytest.approx(GOLDEN, rel=1e-10)
    assert srip(COUPLED, n_iter=2).item() <= GOLDEN + 1e-12  # power iteration is a lower bound


def test_dso_matches_definition_on_random_tall_and_wide() -> None:
    torch.manual_seed(0)
    for shape in [(7, 3), (3, 7), (4, 4)]:
        a = torch.randn(*shape, dtype=torch.float64)
        direct = (a.T @ a - torch.eye(shape[1], dtype=a.dtype)).square().sum() + (
            a @ a.T - torch.eye(shape[0], dtype=a.dtype)
        ).square().sum()
        torch.testing.assert_close(dso(a), direct)
        torch.testing.assert_close(dso(a, remove_floor=True), direct - abs(shape[0] - shape[1]))


def test_orthonormal_columns_reach_floor() -> None:
    q, _ = torch.linalg.qr(torch.randn(6, 4, dtype=torch.float64))
    assert so(q).item() == pytest.approx(0.0, abs=1e-12)
    assert dso(q).item() == pytest.approx(2.0, abs=1e-12)  # C - r = 6 - 4
    assert dso(q, remove_floor=True).item() == pytest.approx(0.0, abs=1e-12)
    assert mc(q).item() == pytest.approx(0.0, abs=1e-12)
    assert srip(q).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_gradcheck(name: str) -> None:
    torch.manual_seed(1)
    a = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(REGULARIZERS[name], (a,))


def test_srip_gradient_is_nonzero_and_pure() -> None:
    a = COUPLED.clone().requires_grad_(True)
    first = srip(a)
    first.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert srip(a).item() == first.item()  # deterministic start vector: no hidden state


def test_rejects_non_matrix() -> None:
    with pytest.raises(ValueError, match="2-D"):
        so(torch.ones(2, 2, 2))


def test_regularizer_names() -> None:
    assert regularizer_names() == ["none", "dso", "mc", "so", "srip"]


# --------------------------------------------------------------------------- model level


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        # Tucker U_in/U_out and the SVD conv's U are all 8 x 4: one batched group of shapes.
        self.a = Tucker2Conv2d(8, 8, 3, rank_in=4, rank_out=4, dtype=torch.float64)
        self.b = Tucker2Conv2d(8, 8, 3, rank_in=4, rank_out=4, dtype=torch.float64)
        self.c = SVDConv2d(8, 8, 3, rank=4, dtype=torch.float64)
        self.d = SVDLinear(8, 6, rank=3, dtype=torch.float64)
        self.dense = nn.Conv2d(8, 8, 3, dtype=torch.float64)
        with torch.no_grad():  # move away from the orthonormal init so the penalties are non-zero
            for param in self.parameters():
                param.add_(0.3 * torch.randn_like(param))


def _loop(
    model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], weights: dict[str, float]
) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for name, layer in low_rank_modules(model):
        for matrix in layer.factor_matrices():
            total = total + weights.get(name, 1.0) * fn(matrix)
    return total


@pytest.mark.parametrize("kind", sorted(REGULARIZERS))
def test_batched_penalty_equals_per_matrix_loop(kind: str) -> None:
    model = _Model()
    expected = _loop(model, REGULARIZERS[kind], {})
    assert expected.item() > 0
    torch.testing.assert_close(orthogonality_penalty(model, kind), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(orthogonality_penalty(model, kind, 0.5), 0.5 * expected)


@pytest.mark.parametrize("kind", sorted(REGULARIZERS))
def test_penalty_of_matrices_equals_the_model_penalty(kind: str) -> None:
    model = _Model()
    matrices = [m for _, layer in low_rank_modules(model) for m in layer.factor_matrices()]
    torch.testing.assert_close(penalty_of_matrices(matrices, kind), orthogonality_penalty(model, kind))
    assert penalty_of_matrices([], kind).item() == 0.0


def test_penalty_remove_floor_and_gradients() -> None:
    model = _Model()
    floor = sum(
        abs(m.shape[0] - m.shape[1]) for _, layer in low_rank_modules(model) for m in layer.factor_matrices()
    )
    with_floor = orthogonality_penalty(model, "dso")
    without = orthogonality_penalty(model, "dso", remove_floor=True)
    assert with_floor.item() - without.item() == pytest.approx(floor)
    without.backward()
    assert model.a.first.weight.grad is not None and model.a.first.weight.grad.abs().sum() > 0
    assert model.a.core.weight.grad is None  # the core is not regularized
    assert model.dense.weight.grad is None


def test_per_layer_weights() -> None:
    model = _Model()
    weights = {"a": 2.0, "c": 0.5, "*": 0.0}
    expected = _loop(model, so, {"a": 2.0, "b": 0.0, "c": 0.5, "d": 0.0})
    torch.testing.assert_close(orthogonality_penalty(model, "so", weights), expected)
    full = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 3.0}
    torch.testing.assert_close(orthogonality_penalty(model, "so", full), _loop(model, so, full))
    with pytest.raises(KeyError, match="unknown layers"):
        orthogonality_penalty(model, "so", {"a": 1.0, "dense": 1.0, "*": 1.0})
    with pytest.raises(KeyError, match="no '\\*' default"):
        orthogonality_penalty(model, "so", {"a": 1.0})


def test_penalty_none_and_unknown() -> None:
    model = _Model()
    zero = orthogonality_penalty(model, "none")
    assert zero.item() == 0.0 and zero.dtype == torch.float64
    assert orthogonality_penalty(nn.Linear(3, 3), "dso").item() == 0.0
    with pytest.raises(ValueError, match="unknown regularizer"):
        orthogonality_penalty(model, "l2")


# --------------------------------------------------------------------------- DPRP


def _svd_linear_with(s: list[float]) -> SVDLinear:
    layer = SVDLinear(3, 3, rank=3, dtype=torch.float64)  # square orthogonal U, V at init
    with torch.no_grad():
        layer.s.copy_(torch.tensor(s, dtype=torch.float64))
    return layer


def test_dprp_structure_loss_by_hand() -> None:
    # s = [1, -0.5, 2]: relu(-s) sums to 0.5; relu(s[1:] - s[:-1]) = relu([-1.5, 2.5]) sums to 2.5.
    layer = _svd_linear_with([1.0, -0.5, 2.0])
    assert dprp_structure_loss(layer).item() == pytest.approx(3.0, abs=1e-10)
    assert dprp_structure_loss(_svd_linear_with([3.0, 2.0, 0.0])).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        layer.u.weight.mul_(2.0)  # U^T U = 4 I: ||4I - I||^2 = 3 * 9 = 27
    assert dprp_structure_loss(layer).item() == pytest.approx(30.0, abs=1e-10)


def test_dprp_compression_loss_by_hand() -> None:
    layer = _svd_linear_with([1.0, -0.5, 2.0])
    # ||s||_1 = 3.5, ||s||_2 = sqrt(1 + 0.25 + 4) = sqrt(5.25)
    assert dprp_compression_loss(layer, "l1").item() == pytest.approx(3.5)
    assert dprp_compression_loss(layer).item() == pytest.approx(3.5 / math.sqrt(5.25))
    with pytest.raises(ValueError, match="unknown compression loss"):
        dprp_compression_loss(layer, "l0")


def test_dprp_skips_non_svd_layers_and_sums() -> None:
    model = nn.Sequential(
        Tucker2Conv2d(4, 4, 3, rank_in=2, rank_out=2), _svd_linear_with([1.0, -0.5, 2.0]).float()
    )
    assert dprp_structure_loss(model).item() == pytest.approx(3.0, abs=1e-5)
    doubled = nn.Sequential(_svd_linear_with([1.0, -0.5, 2.0]), _svd_linear_with([1.0, -0.5, 2.0]))
    assert dprp_compression_loss(doubled, "l1").item() == pytest.approx(7.0)
    no_svd = nn.Sequential(Tucker2Conv2d(4, 4, 3, rank_in=2, rank_out=2))
    assert dprp_structure_loss(no_svd).item() == 0.0
    assert dprp_compression_loss(no_svd).item() == 0.0


def test_dprp_gradients_reach_s() -> None:
    layer = _svd_linear_with([1.0, -0.5, 2.0])
    (dprp_structure_loss(layer) + dprp_compression_loss(layer)).backward()
    assert layer.s.grad is not None and layer.s.grad.abs().sum() > 0

"""Orthogonality and DPRP regularizers: pure functions of the model's parameters.

Matrix level (``A`` is C x r, normally tall, ``G = A^T A`` its r x r Gram matrix):

* ``so``: soft orthogonality ``||A^T A - I||_F^2``.
* ``dso``: double soft orthogonality ``||A^T A - I||_F^2 + ||A A^T - I||_F^2``, computed from
  ``G`` alone as ``2||G - I||_F^2 + (C - r)``; its floor ``C - r`` can be removed for logging.
* ``mc``: mutual coherence, the largest absolute entry of ``A^T A - I``.
* ``srip``: spectral norm of ``A^T A - I`` estimated by power iteration from a fixed start.

Model level: :func:`orthogonality_penalty` sums one of them over the factor matrices of every
:class:`~rank_search.layers.LowRankLayer`, batching matrices of equal shape into one ``bmm``
(:func:`penalty_of_matrices` does the same for a list of matrices the caller keeps).
DPRP (SVD layers only): :func:`dprp_structure_loss` and :func:`dprp_compression_loss`.
No function keeps state between calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
from torch import Tensor, nn

from rank_search.layers import SVDConv2d, SVDLinear, low_rank_modules

__all__ = [
    "REGULARIZERS",
    "dprp_compression_loss",
    "dprp_structure_loss",
    "dso",
    "mc",
    "orthogonality_penalty",
    "penalty_of_matrices",
    "regularizer_names",
    "so",
    "srip",
]

_EPS = 1e-12


# --------------------------------------------------------------------------- batched kernels
# Each takes a stack of matrices A of shape (..., C, r) and returns one value per matrix (...).


def _gram_minus_identity(a: Tensor) -> Tensor:
    """``A^T A - I`` for a stack of matrices ``(..., C, r)``."""
    gram = a.mT @ a
    eye = torch.eye(gram.shape[-1], device=a.device, dtype=a.dtype)
    return gram - eye


def _so_batched(a: Tensor) -> Tensor:
    """``||A^T A - I||_F^2`` per matrix."""
    return _gram_minus_identity(a).square().sum(dim=(-2, -1))


def _dso_batched(a: Tensor, remove_floor: bool = False) -> Tensor:
    """``||A^T A - I||_F^2 + ||A A^T - I||_F^2`` per matrix, via the smaller Gram matrix.

    With ``G`` the min(C, r)-sized Gram matrix, ``||AA^T||_F = ||A^TA||_F`` gives
    ``DSO = 2||G - I||_F^2 + |C - r|``; ``remove_floor`` drops the constant ``|C - r|``.
    """
    rows, cols = a.shape[-2], a.shape[-1]
    if rows < cols:
        a = a.mT
    value = 2.0 * _so_batched(a)
    return value if remove_floor else value + abs(rows - cols)


def _mc_batched(a: Tensor) -> Tensor:
    """Largest absolute entry of ``A^T A - I`` per matrix."""
    return _gram_minus_identity(a).abs().amax(dim=(-2, -1))


def _srip_batched(a: Tensor, n_iter: int = 3) -> Tensor:
    """Spectral norm of ``M = A^T A - I`` per matrix by ``n_iter`` power iterations.

    Starts from the fixed vector ``linspace(1, 2, r)`` (normalized), so the result is a
    deterministic, differentiable (through every iteration) lower bound ``||M v||`` with unit ``v``.
    """
    if n_iter < 1:
        raise ValueError(f"srip needs n_iter >= 1, got {n_iter}")
    m = _gram_minus_identity(a)
    r = m.shape[-1]
    start = torch.linspace(1.0, 2.0, r, device=a.device, dtype=a.dtype)
    v = (start / start.norm()).expand(*m.shape[:-1]).unsqueeze(-1)
    for _ in range(n_iter):
        w = m @ v
        v = w / w.norm(dim=-2, keepdim=True).clamp_min(_EPS)
    return (m @ v).norm(dim=(-2, -1))


# --------------------------------------------------------------------------- matrix level


def _check_matrix(a: Tensor) -> None:
    """Raise ``ValueError`` unless ``a`` is 2-D."""
    if a.dim() != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(a.shape)}")


def so(a: Tensor) -> Tensor:
    """Soft orthogonality ``||A^T A - I||_F^2`` of a 2-D matrix."""
    _check_matrix(a)
    return _so_batched(a)


def dso(a: Tensor, remove_floor: bool = False) -> Tensor:
    """Double soft orthogonality ``||A^T A - I||_F^2 + ||A A^T - I||_F^2`` of a 2-D matrix.

    Equals ``2||G||_F^2 - 4 tr G + r + C`` with ``G = A^T A``; its minimum over A is ``|C - r|``,
    which ``remove_floor=True`` subtracts (the result is then ``2||G - I||_F^2`` for tall A).
    """
    _check_matrix(a)
    return _dso_batched(a, remove_floor)


def mc(a: Tensor) -> Tensor:
    """Mutual coherence: the largest absolute entry of ``A^T A - I``."""
    _check_matrix(a)
    return _mc_batched(a)


def srip(a: Tensor, n_iter: int = 3) -> Tensor:
    """Spectral norm of ``A^T A - I`` estimated by ``n_iter`` power iterations (a lower bound)."""
    _check_matrix(a)
    return _srip_batched(a, n_iter)


REGULARIZERS: dict[str, Callable[[Tensor], Tensor]] = {"so": so, "dso": dso, "mc": mc, "srip": srip}
"""Matrix-level regularizer per name."""


def regularizer_names() -> list[str]:
    """Names accepted as ``kind`` by :func:`orthogonality_penalty`: ``"none"`` and the registry's."""
    return ["none", *sorted(REGULARIZERS)]


# --------------------------------------------------------------------------- model level


def _zero(model: nn.Module) -> Tensor:
    """A scalar zero on the device and dtype of ``model``'s first parameter."""
    param = next(model.parameters(), None)
    if param is None:
        return torch.zeros(())
    return torch.zeros((), device=param.device, dtype=param.dtype)


def _layer_weights(names: list[str], weight: float | Mapping[str, float]) -> list[float]:
    """Per-layer weights: a float for all, or a mapping by module name with optional ``"*"`` default.

    Raises ``KeyError`` for a mapping key that names no low-rank layer, or a layer with no entry
    and no ``"*"`` default; the message names the offending layers.
    """
    if not isinstance(weight, Mapping):
        return [float(weight)] * len(names)
    unknown = sorted(set(weight) - set(names) - {"*"})
    if unknown:
        raise KeyError(f"regularizer weights name unknown layers {unknown}; low-rank layers: {names}")
    missing = [name for name in names if name not in weight]
    if missing and "*" not in weight:
        raise KeyError(f"no regularizer weight for layers {missing} and no '*' default")
    return [float(weight.get(name, weight.get("*", 0.0))) for name in names]


def _batched_kernel(kind: str, remove_floor: bool) -> Callable[[Tensor], Tensor]:
    """The batched kernel of ``kind``."""
    kernels: dict[str, Callable[[Tensor], Tensor]] = {
        "so": _so_batched,
        "dso": partial(_dso_batched, remove_floor=remove_floor),
        "mc": _mc_batched,
        "srip": _srip_batched,
    }
    return kernels[kind]


def _weighted_matrices(model: nn.Module, weight: float | Mapping[str, float]) -> list[tuple[Tensor, float]]:
    """``(factor matrix, layer weight)`` for every low-rank layer with a non-zero weight."""
    layers = low_rank_modules(model)
    weights = _layer_weights([name for name, _ in layers], weight)
    return [
        (matrix, w)
        for (_, layer), w in zip(layers, weights)
        if w != 0.0
        for matrix in layer.factor_matrices()
    ]


def orthogonality_penalty(
    model: nn.Module,
    kind: str,
    weight: float | Mapping[str, float] = 1.0,
    *,
    remove_floor: bool = False,
) -> Tensor:
    """Weighted sum of regularizer ``kind`` over the factor matrices of every low-rank layer.

    ``kind`` is one of :func:`regularizer_names` (``"none"`` gives zero). ``weight`` is a float
    applied to every layer, or a mapping from module name (as in ``named_modules``) to weight
    where ``"*"`` gives the default for unlisted layers; without ``"*"`` every low-rank layer
    must be listed (``KeyError`` otherwise, as for names that match no low-rank layer).
    ``remove_floor`` applies to ``"dso"`` only. Matrices of equal shape are stacked and
    evaluated with one batched matmul (:func:`penalty_of_matrices`); the value equals the
    per-matrix sum.
    """
    if kind not in regularizer_names():
        raise ValueError(f"unknown regularizer {kind!r}; known: {regularizer_names()}")
    if kind == "none":
        return _zero(model)
    by_weight: dict[float, list[Tensor]] = {}
    for matrix, w in _weighted_matrices(model, weight):
        by_weight.setdefault(w, []).append(matrix)
    total = _zero(model)
    for w, matrices in by_weight.items():  # usually one weight: no host-to-device copy per step
        total = total + penalty_of_matrices(matrices, kind, remove_floor=remove_floor) * w
    return total


def penalty_of_matrices(matrices: Sequence[Tensor], kind: str, *, remove_floor: bool = False) -> Tensor:
    """Unweighted sum of regularizer ``kind`` (not ``"none"``) over ``matrices``.

    Matrices of equal shape, dtype and device are stacked into one batched evaluation. For a
    caller that keeps its list of factor matrices (no ``named_modules`` walk per step).
    """
    kernel = _batched_kernel(kind, remove_floor)
    groups: dict[tuple[object, ...], list[Tensor]] = {}
    for matrix in matrices:
        groups.setdefault((tuple(matrix.shape), matrix.dtype, matrix.device), []).append(matrix)
    values = [kernel(torch.stack(members)).sum() for members in groups.values()]
    if not values:
        return torch.zeros(())
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


# --------------------------------------------------------------------------- DPRP


def _svd_layers(model: nn.Module) -> list[SVDConv2d | SVDLinear]:
    """The SVD layers of ``model``, in ``named_modules`` order."""
    return [layer for _, layer in low_rank_modules(model) if isinstance(layer, SVDConv2d | SVDLinear)]


def _structure_terms(layer: SVDConv2d | SVDLinear) -> Tensor:
    """``SO(U) + SO(V) + sum relu(-s) + sum relu(s[1:] - s[:-1])`` of one SVD layer."""
    s = layer.s
    orthogonality = _so_batched(layer.u_matrix()) + _so_batched(layer.v_matrix())
    negative = torch.relu(-s).sum()
    unsorted = torch.relu(s[1:] - s[:-1]).sum()
    return orthogonality + negative + unsorted


def dprp_structure_loss(model: nn.Module) -> Tensor:
    """DPRP structure loss summed over SVD layers (others are skipped).

    Per layer: ``||U^T U - I||_F^2 + ||V^T V - I||_F^2 + sum(relu(-s)) + sum(relu(s[i+1] - s[i]))``,
    i.e. orthonormal factors and non-negative singular values sorted in descending order.
    Zero when the model has no SVD layer.
    """
    total = _zero(model)
    for layer in _svd_layers(model):
        total = total + _structure_terms(layer)
    return total


def _compression_term(s: Tensor, kind: str) -> Tensor:
    """Sparsity of one singular-value vector: Hoyer ``||s||_1/||s||_2`` or ``||s||_1``."""
    l1 = s.abs().sum()
    if kind == "l1":
        return l1
    return l1 / s.norm().clamp_min(_EPS)


def dprp_compression_loss(model: nn.Module, kind: str = "hoyer") -> Tensor:
    """DPRP compression loss summed over SVD layers: ``"hoyer"`` (``||s||_1/||s||_2``) or ``"l1"``.

    Zero when the model has no SVD layer.
    """
    if kind not in ("hoyer", "l1"):
        raise ValueError(f"unknown compression loss {kind!r}; expected 'hoyer' or 'l1'")
    total = _zero(model)
    for layer in _svd_layers(model):
        total = total + _compression_term(layer.s, kind)
    return total

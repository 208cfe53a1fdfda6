"""Low-rank drop-in replacements for ``nn.Conv2d`` and ``nn.Linear``.

Two formats are provided:

* ``"tucker2"``: :class:`Tucker2Conv2d` holds a conv weight ``W`` (C_out x C_in x kh x kw) as
  ``W = G x0 U_out x1 U_in`` with a core ``G`` (r_out x r_in x kh x kw) and two factor matrices
  ``U_in`` (C_in x r_in) and ``U_out`` (C_out x r_out). It runs as three convolutions:
  1x1 (C_in -> r_in), kh x kw (r_in -> r_out, with the layer's stride/padding/dilation) and
  1x1 (r_out -> C_out, carrying the bias).
* ``"svd"``: :class:`SVDConv2d` / :class:`SVDLinear` hold ``W = U diag(s) V^T`` with explicit
  singular values ``s``; a conv kernel is reshaped to C_out x (C_in*kh*kw) first and runs as a
  kh x kw conv with ``r`` filters, a per-channel scale by ``s`` and a 1x1 conv.

Every layer takes the dense layer's constructor arguments plus keyword-only ranks, converts
from a dense layer (:meth:`LowRankLayer.from_dense`, exact at full rank), converts back
(:meth:`LowRankLayer.to_dense`) and counts its parameters and MACs (multiply-accumulates of the
conv/linear operations only; the elementwise ``s`` scale and the bias are not counted).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import torch
from torch import Tensor, nn

from ._formulas import conv_macs, linear_macs

__all__ = [
    "HOOI_SWEEPS",
    "LOW_RANK_CONV_CLASSES",
    "ConvLike",
    "LowRankLayer",
    "SVDConv2d",
    "SVDLinear",
    "Tucker2Conv2d",
    "conv_output_hw",
    "dense_layer_macs",
    "full_ranks",
    "low_rank_class",
    "low_rank_modules",
    "make_low_rank",
    "tucker2_hooi",
    "unfactorizable_reason",
]

_L = TypeVar("_L", bound="LowRankLayer")
IntPair = int | tuple[int, int]
Padding = int | tuple[int, int] | str
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]


class ConvLike(Protocol):
    """Anything carrying the geometry attributes of ``nn.Conv2d``."""

    @property
    def kernel_size(self) -> tuple[int, ...]: ...

    @property
    def stride(self) -> tuple[int, ...]: ...

    @property
    def padding(self) -> str | tuple[int, ...]: ...

    @property
    def dilation(self) -> tuple[int, ...]: ...


# --------------------------------------------------------------------------- helpers


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 1) -> (3, 1)``."""
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def _padding(value: Padding) -> str | tuple[int, int]:
    """Normalize a Conv2d padding argument (strings such as ``"same"`` are kept)."""
    return value if isinstance(value, str) else _pair(value)


def conv_output_hw(conv_like: ConvLike, h: int, w: int) -> tuple[int, int]:
    """Spatial output size of a 2-D convolution with ``conv_like``'s geometry on an ``h x w`` input."""
    padding_arg = conv_like.padding
    if isinstance(padding_arg, str):
        if padding_arg == "same":
            return (h, w)
        padding = (0, 0)  # "valid"
    else:
        padding = _pair(padding_arg)
    sizes = []
    for size, k, s, p, d in zip((h, w), conv_like.kernel_size, conv_like.stride, padding, conv_like.dilation):
        sizes.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
    return (sizes[0], sizes[1])


def _chw(input_size: Sequence[int], in_channels: int) -> tuple[int, int, int]:
    """Check and unpack a per-sample conv input shape ``(C, H, W)``."""
    if len(input_size) != 3 or input_size[0] != in_channels:
        raise ValueError(
            f"conv input size must be per-sample (C, H, W) with C={in_channels}, got {tuple(input_size)}"
        )
    c, h, w = input_size
    return (c, h, w)


def _leading(input_size: Sequence[int], in_features: int) -> int:
    """Product of the leading dims of a per-sample linear input shape ``(..., in_features)``."""
    if len(input_size) < 1 or input_size[-1] != in_features:
        raise ValueError(
            f"linear input size must end with in_features={in_features}, got {tuple(input_size)}"
        )
    return math.prod(input_size[:-1])


def _pixels(conv_like: ConvLike, input_size: Sequence[int], in_channels: int) -> tuple[int, int]:
    """Input and output pixel counts (H*W) of a conv on a per-sample input ``(C, H, W)``."""
    _, h, w = _chw(input_size, in_channels)
    h_out, w_out = conv_output_hw(conv_like, h, w)
    return h * w, h_out * w_out


def dense_layer_macs(layer: nn.Conv2d | nn.Linear, input_size: Sequence[int]) -> int:
    """MACs of a dense conv/linear layer for one sample of shape ``input_size`` (bias not counted).

    Conv: ``H_out*W_out*C_out*(C_in/groups)*kh*kw``; linear: ``prod(leading dims)*in*out``.
    """
    if isinstance(layer, nn.Conv2d):
        in_hw, out_hw = _pixels(layer, input_size, layer.in_channels)
        return conv_macs(
            "dense",
            layer.in_channels,
            layer.out_channels,
            _pair(layer.kernel_size),
            in_hw,
            out_hw,
            {},
            layer.groups,
        )
    if isinstance(layer, nn.Linear):
        lead = _leading(input_size, layer.in_features)
        return linear_macs("dense", layer.in_features, layer.out_features, lead, {})
    raise TypeError(f"dense_layer_macs expects nn.Conv2d or nn.Linear, got {type(layer).__name__}")


def _check_rank(cls_name: str, name: str, value: int, limit: int, limit_text: str) -> int:
    """Return ``value`` as an int if ``1 <= value <= limit``, else raise ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"{cls_name}: {name} must be an integer, got {value!r}")
    try:
        rank = operator.index(value)
    except TypeError:
        raise ValueError(f"{cls_name}: {name} must be an integer, got {value!r}") from None
    if not 1 <= rank <= limit:
        raise ValueError(
            f"{cls_name}: {name}={rank} is out of range, must be between 1 and {limit} ({limit_text})"
        )
    return rank


def _leading_left_vectors(matrix: Tensor, rank: int) -> Tensor:
    """The ``rank`` leading left singular vectors of ``matrix`` (a full basis if rank > min(shape))."""
    full = rank > min(matrix.shape)
    u, _, _ = torch.linalg.svd(matrix, full_matrices=full)
    return u[:, :rank]


def _work_dtype(weight: Tensor) -> Tensor:
    """``weight`` detached, promoted to float32 when it is a half type (SVD needs it)."""
    weight = weight.detach()
    return weight.float() if weight.dtype in (torch.float16, torch.bfloat16) else weight


def _copy_bias(target: nn.Conv2d | nn.Linear, source: nn.Conv2d | nn.Linear) -> None:
    """Copy ``source``'s bias into ``target`` (both have one or neither)."""
    if target.bias is not None and source.bias is not None:
        target.bias.copy_(source.bias)


HOOI_SWEEPS = 3
"""HOOI sweeps after the HOSVD start of a Tucker-2 decomposition (each lowers the error or keeps it)."""


def tucker2_hooi(
    weight: Tensor, rank_out: int, rank_in: int, sweeps: int = HOOI_SWEEPS
) -> tuple[Tensor, Tensor, Tensor]:
    """Tucker-2 of a conv kernel over its two channel modes: ``(core, U_out, U_in)``.

    HOSVD (leading left singular vectors of the mode-0 and mode-1 unfoldings), then ``sweeps``
    rounds of HOOI: each factor becomes the leading left singular vectors of the kernel projected
    on the other factor. Computed in float64, returned in ``weight``'s dtype. Exact at full rank.
    """
    w = weight.detach().double()
    u_out = _leading_left_vectors(w.flatten(1), rank_out)
    u_in = _leading_left_vectors(w.transpose(0, 1).flatten(1), rank_in)
    for _ in range(sweeps):
        u_out = _leading_left_vectors(torch.einsum("oikl,is->oskl", w, u_in).flatten(1), rank_out)
        u_in = _leading_left_vectors(torch.einsum("oikl,or->irkl", w, u_out).flatten(1), rank_in)
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)
    return core.to(weight.dtype), u_out.to(weight.dtype), u_in.to(weight.dtype)


# --------------------------------------------------------------------------- base class


class LowRankLayer(nn.Module):
    """Common interface of the low-rank layers.

    Subclasses set the class attributes and implement the methods that raise
    ``NotImplementedError`` here.
    """

    format: ClassVar[str]
    rank_names: ClassVar[tuple[str, ...]]
    dense_type: ClassVar[type[nn.Module]]

    def ranks(self) -> dict[str, int]:
        """The layer's ranks, keyed by constructor argument name."""
        raise NotImplementedError

    def factor_matrices(self) -> list[Tensor]:
        """The tall (rows >= cols) 2-D factor matrices the orthogonality regularizers act on.

        They are differentiable views of the parameters.
        """
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Initialize for training from scratch (He-equivalent scale, see the subclass)."""
        raise NotImplementedError

    def to_dense(self) -> nn.Conv2d | nn.Linear:
        """A dense layer computing the same function (a new module, detached from this one)."""
        raise NotImplementedError

    def macs(self, input_size: Sequence[int]) -> int:
        """Multiply-accumulates of the conv/linear ops for one sample of shape ``input_size``."""
        raise NotImplementedError

    def num_params(self) -> int:
        """Number of parameters (factors, core or singular values, and bias)."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def max_ranks(cls, layer: nn.Module) -> dict[str, int]:
        """The largest useful ranks for replacing ``layer``."""
        raise NotImplementedError

    @classmethod
    def _construct(cls: type[_L], layer: Any, ranks: dict[str, int]) -> _L:
        """A new layer with ``layer``'s hyperparameters (on its device and dtype) and ``ranks``."""
        raise NotImplementedError

    def _load_dense(self, layer: Any) -> None:
        """Set the parameters to a truncated decomposition of ``layer`` (called under no_grad)."""
        raise NotImplementedError

    @classmethod
    def _check_layer_and_ranks(cls, layer: nn.Module, ranks: Mapping[str, int]) -> dict[str, int]:
        """Raise ``ValueError`` unless ``layer`` can be replaced by ``cls`` with these rank keys."""
        reason = unfactorizable_reason(layer, cls.format)
        if reason is None and not isinstance(layer, cls.dense_type):
            reason = f"{cls.__name__} replaces {cls.dense_type.__name__}, got {type(layer).__name__}"
        if reason is not None:
            raise ValueError(f"cannot build {cls.__name__}: {reason}")
        if set(ranks) != set(cls.rank_names):
            raise ValueError(
                f"{cls.__name__} needs ranks {sorted(cls.rank_names)}, got {sorted(ranks)} "
                f"(missing {sorted(set(cls.rank_names) - set(ranks))}, "
                f"extra {sorted(set(ranks) - set(cls.rank_names))})"
            )
        return dict(ranks)

    @classmethod
    def like_dense(cls: type[_L], layer: nn.Module, **ranks: int) -> _L:
        """A freshly initialized (from-scratch) low-rank layer with ``layer``'s hyperparameters."""
        return cls._construct(layer, cls._check_layer_and_ranks(layer, ranks))

    @classmethod
    def from_dense(cls: type[_L], layer: nn.Module, **ranks: int) -> _L:
        """Convert ``layer`` by truncated decomposition; exact at full rank."""
        new = cls._construct(layer, cls._check_layer_and_ranks(layer, ranks))
        with torch.no_grad():
            new._load_dense(layer)
        return new


# --------------------------------------------------------------------------- Tucker-2


class Tucker2Conv2d(LowRankLayer):
    """Tucker-2 factorized ``nn.Conv2d``: ``last(core(first(x)))``.

    ``first``: 1x1 conv C_in -> r_in (weight = U_in^T); ``core``: kh x kw conv r_in -> r_out with
    the layer's stride, padding, dilation and padding mode; ``last``: 1x1 conv r_out -> C_out
    (weight = U_out) with the bias. Grouped convolutions are not supported.

    Initialization (:meth:`reset_parameters`): a dense He-initialized conv (kaiming_normal_,
    fan_in, relu) has ``W_ij ~ N(0, 2/fan_in)`` with ``fan_in = C_in*kh*kw``, so
    ``E||W||_F^2 = 2*C_out``; for an input with isotropic second moment ``q`` the mean output
    second moment is ``q*||W||_F^2/C_out = 2q``. Here ``W = G x0 U_out x1 U_in``; with orthonormal
    columns in ``U_in`` and ``U_out`` (``orthogonal_``), ``||W||_F = ||G||_F``, so core entries
    ``N(0, sigma^2)`` with ``sigma^2 = 2*C_out/(r_out*r_in*kh*kw)`` give the same
    ``E||W||_F^2 = 2*C_out`` and hence the same activation scale as the dense layer. Bias is zero.
    """

    format: ClassVar[str] = "tucker2"
    rank_names: ClassVar[tuple[str, ...]] = ("rank_in", "rank_out")
    dense_type: ClassVar[type[nn.Module]] = nn.Conv2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: Padding = 0,
        dilation: IntPair = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        *,
        rank_in: int,
        rank_out: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        rank_in = _check_rank(name, "rank_in", rank_in, in_channels, "C_in")
        rank_out = _check_rank(name, "rank_out", rank_out, out_channels, "C_out")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _padding(padding)
        self.dilation = _pair(dilation)
        self.padding_mode = padding_mode
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.first = nn.Conv2d(in_channels, rank_in, 1, bias=False, **factory)
        self.core = nn.Conv2d(
            rank_in,
            rank_out,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=False,
            padding_mode=padding_mode,
            **factory,
        )
        self.last = nn.Conv2d(rank_out, out_channels, 1, bias=bias, **factory)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """``last(core(first(x)))``."""
        return self.last(self.core(self.first(x)))

    @property
    def rank_in(self) -> int:
        """Rank of the input-channel mode."""
        return self.first.out_channels

    @property
    def rank_out(self) -> int:
        """Rank of the output-channel mode."""
        return self.last.in_channels

    def ranks(self) -> dict[str, int]:
        """``{"rank_in": r_in, "rank_out": r_out}``."""
        return {"rank_in": self.rank_in, "rank_out": self.rank_out}

    def u_in(self) -> Tensor:
        """Input factor matrix U_in (C_in x r_in), a view of ``first.weight``."""
        return self.first.weight.flatten(1).t()

    def u_out(self) -> Tensor:
        """Output factor matrix U_out (C_out x r_out), a view of ``last.weight``."""
        return self.last.weight.flatten(1)

    def factor_matrices(self) -> list[Tensor]:
        """``[U_in (C_in x r_in), U_out (C_out x r_out)]``."""
        return [self.u_in(), self.u_out()]

    def reset_parameters(self) -> None:
        """Orthonormal factors, core ``N(0, 2*C_out/(r_out*r_in*kh*kw))``, zero bias (see class doc)."""
        kh, kw = self.kernel_size
        std = math.sqrt(2.0 * self.out_channels / (self.rank_out * self.rank_in * kh * kw))
        nn.init.orthogonal_(self.first.weight)
        nn.init.orthogonal_(self.last.weight)
        nn.init.normal_(self.core.weight, 0.0, std)
        if self.last.bias is not None:
            nn.init.zeros_(self.last.bias)

    def dense_weight(self) -> Tensor:
        """The full weight ``G x0 U_out x1 U_in`` (C_out x C_in x kh x kw), differentiable."""
        return torch.einsum("rskl,or,is->oikl", self.core.weight, self.u_out(), self.u_in())

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the reconstructed weight and bias."""
        weight = self.first.weight
        dense = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=self.last.bias is not None,
            padding_mode=self.padding_mode,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            _copy_bias(dense, self.last)
        return dense

    def macs(self, input_size: Sequence[int]) -> int:
        """``H_in*W_in*C_in*r_in + H_out*W_out*r_in*r_out*kh*kw + H_out*W_out*r_out*C_out``
        (:func:`rank_search.cost.conv_macs`)."""
        in_hw, out_hw = _pixels(self, input_size, self.in_channels)
        return conv_macs(
            "tucker2", self.in_channels, self.out_channels, self.kernel_size, in_hw, out_hw, self.ranks()
        )

    @classmethod
    def max_ranks(cls, layer: nn.Module) -> dict[str, int]:
        """``{"rank_in": C_in, "rank_out": C_out}``."""
        conv = _as_conv(layer)
        return {"rank_in": conv.in_channels, "rank_out": conv.out_channels}

    @classmethod
    def _construct(cls, layer: Any, ranks: dict[str, int]) -> Tucker2Conv2d:
        kwargs: dict[str, Any] = {**_conv_kwargs(layer), **ranks}
        return cls(**kwargs)

    def _load_dense(self, layer: Any) -> None:
        """Truncated HOSVD of the two channel modes, refined by :data:`HOOI_SWEEPS` HOOI sweeps."""
        weight = _work_dtype(layer.weight)
        core, u_out, u_in = tucker2_hooi(weight, self.rank_out, self.rank_in, HOOI_SWEEPS)
        self.first.weight.copy_(u_in.t().reshape_as(self.first.weight))
        self.core.weight.copy_(core)
        self.last.weight.copy_(u_out.reshape_as(self.last.weight))
        _copy_bias(self.last, layer)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, "
            f"rank_in={self.rank_in}, rank_out={self.rank_out}"
        )


def _as_conv(layer: nn.Module) -> nn.Conv2d:
    """``layer`` as an ``nn.Conv2d`` (``ValueError`` otherwise)."""
    if not isinstance(layer, nn.Conv2d):
        raise ValueError(f"expected nn.Conv2d, got {type(layer).__name__}")
    return layer


def _as_linear(layer: nn.Module) -> nn.Linear:
    """``layer`` as an ``nn.Linear`` (``ValueError`` otherwise)."""
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"expected nn.Linear, got {type(layer).__name__}")
    return layer


def _conv_kwargs(layer: nn.Module) -> dict[str, Any]:
    """Constructor arguments reproducing a dense conv's hyperparameters, device and dtype."""
    conv = _as_conv(layer)
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": _pair(conv.kernel_size),
        "stride": _pair(conv.stride),
        "padding": conv.padding if isinstance(conv.padding, str) else _pair(conv.padding),
        "dilation": _pair(conv.dilation),
        "bias": conv.bias is not None,
        "padding_mode": conv.padding_mode,
        "device": conv.weight.device,
        "dtype": conv.weight.dtype,
    }


# --------------------------------------------------------------------------- SVD


def _top_singular(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``rank`` singular triplets (U: m x r, s: r, V: n x r); randomized for big matrices."""
    if matrix.numel() > 4_000_000 and rank < min(matrix.shape) // 2:
        u, s, v = torch.svd_lowrank(matrix, q=min(rank + 10, min(matrix.shape)), niter=4)
        return u[:, :rank], s[:rank], v[:, :rank]
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank].t()


class _SVDLayer(LowRankLayer):
    """Shared code of the SVD layers: children ``v`` (V^T), parameter ``s`` and ``u`` (U).

    Initialization: ``U`` and ``V`` get orthonormal columns and every ``s_i = sqrt(2*out/r)``,
    so ``||W||_F^2 = sum(s_i^2) = 2*out``, the expected squared norm of a dense He-initialized
    (kaiming_normal_, fan_in, relu) weight; activations then keep the dense layer's scale (see
    :class:`Tucker2Conv2d` for the argument). Bias is zero.
    """

    format: ClassVar[str] = "svd"
    rank_names: ClassVar[tuple[str, ...]] = ("rank",)
    v: nn.Conv2d | nn.Linear
    u: nn.Conv2d | nn.Linear
    s: nn.Parameter

    @property
    def rank(self) -> int:
        """Number of singular values."""
        return self.s.numel()

    def ranks(self) -> dict[str, int]:
        """``{"rank": r}``."""
        return {"rank": self.rank}

    def u_matrix(self) -> Tensor:
        """U (out x r), a view of ``u.weight``."""
        return self.u.weight.flatten(1)

    def v_matrix(self) -> Tensor:
        """V (in*kh*kw x r), a view of ``v.weight`` with rows in the weight's memory order.

        Rows are ordered (in, kh, kw) for a contiguous weight and (kh, kw, in) for a
        channels_last one (a reshape would copy it every step); the Gram matrix ``V^T V`` the
        regularizers use does not depend on the row order. :meth:`dense_weight` reorders.
        """
        weight = self.v.weight
        channels_last = weight.is_contiguous(memory_format=torch.channels_last)
        if weight.dim() == 4 and not weight.is_contiguous() and channels_last:
            return weight.permute(0, 2, 3, 1).flatten(1).t()
        return weight.flatten(1).t()

    def factor_matrices(self) -> list[Tensor]:
        """``[U (out x r), V (in*kh*kw x r)]``."""
        return [self.u_matrix(), self.v_matrix()]

    def reset_parameters(self) -> None:
        """Rank-r truncation of a He-initialized dense weight, rescaled to its full norm.

        U and V are the top-r singular vectors (orthonormal, as DPRP's structure loss wants),
        and s the top-r singular values (sorted descending) multiplied by
        ``||W||_F / ||s_r||_2`` so the layer keeps the dense He layer's expected gain. Equal
        singular values (``s_i = sqrt(2*out/r)``) have the same expected gain but lose about
        half the activation variance over a 20-layer stack; the truncation keeps it within
        a few percent (``tests/test_layers.py``). Bias is zero.
        """
        if self.s.device.type == "meta":
            return
        dtype = torch.float64 if self.s.dtype == torch.float64 else torch.float32
        # drawn and decomposed on the layer's device: no CPU SVD and copy for layers built on CUDA
        shape = (self.u.weight.shape[0], self.v.weight[0].numel())
        matrix = torch.empty(shape, dtype=dtype, device=self.s.device)
        nn.init.kaiming_normal_(matrix, mode="fan_in", nonlinearity="relu")
        u, s, v = _top_singular(matrix, self.rank)
        with torch.no_grad():
            self.u.weight.copy_(u.reshape(self.u.weight.shape))
            self.v.weight.copy_(v.t().reshape(self.v.weight.shape))
            self.s.copy_(s * (matrix.norm() / s.norm()))
        if self.u.bias is not None:
            nn.init.zeros_(self.u.bias)

    def dense_weight(self) -> Tensor:
        """``U diag(s) V^T`` in the dense layer's weight shape, differentiable."""
        matrix = (self.u_matrix() * self.s) @ self.v.weight.flatten(1)
        return matrix.reshape(self.u.weight.shape[0], *self.v.weight.shape[1:])

    def _load_dense(self, layer: Any) -> None:
        """Truncated SVD of the weight reshaped to out x (in*kh*kw)."""
        weight = _work_dtype(layer.weight)
        u, s, vh = torch.linalg.svd(weight.flatten(1), full_matrices=False)
        r = self.rank
        self.v.weight.copy_(vh[:r].reshape_as(self.v.weight))
        self.s.copy_(s[:r])
        self.u.weight.copy_(u[:, :r].reshape_as(self.u.weight))
        _copy_bias(self.u, layer)


class SVDConv2d(_SVDLayer):
    """SVD-factorized ``nn.Conv2d``: ``u(v(x) * s)``.

    ``v``: kh x kw conv C_in -> r (weight = V^T reshaped, V is C_in*kh*kw x r) with the layer's
    stride, padding, dilation and padding mode; ``s``: r singular values; ``u``: 1x1 conv
    r -> C_out (weight = U, C_out x r) with the bias. Initialization as in ``_SVDLayer``.
    """

    dense_type: ClassVar[type[nn.Module]] = nn.Conv2d
    v: nn.Conv2d
    u: nn.Conv2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: Padding = 0,
        dilation: IntPair = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        *,
        rank: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kh, kw = _pair(kernel_size)
        limit = min(out_channels, in_channels * kh * kw)
        rank = _check_rank(type(self).__name__, "rank", rank, limit, "min(C_out, C_in*kh*kw)")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kh, kw)
        self.stride = _pair(stride)
        self.padding = _padding(padding)
        self.dilation = _pair(dilation)
        self.padding_mode = padding_mode
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.v = nn.Conv2d(
            in_channels,
            rank,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=False,
            padding_mode=padding_mode,
            **factory,
        )
        self.s = nn.Parameter(torch.empty(rank, **factory))
        self.u = nn.Conv2d(rank, out_channels, 1, bias=bias, **factory)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """``u(v(x) * s)``, computed as ``v(x)`` through ``u`` with ``s`` folded into its weight.

        Folding scales the small ``C_out x r`` weight instead of the activations (one kernel
        less) and keeps them in the autocast dtype: a float32 ``s`` times a bf16 activation
        would promote it to float32.
        """
        return nn.functional.conv2d(self.v(x), self.u.weight * self.s.view(1, -1, 1, 1), self.u.bias)

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with weight ``U diag(s) V^T`` and the bias."""
        dense = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=self.u.bias is not None,
            padding_mode=self.padding_mode,
            device=self.s.device,
            dtype=self.s.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            _copy_bias(dense, self.u)
        return dense

    def macs(self, input_size: Sequence[int]) -> int:
        """``H_out*W_out*C_in*kh*kw*r + H_out*W_out*r*C_out`` (:func:`rank_search.cost.conv_macs`)."""
        in_hw, out_hw = _pixels(self, input_size, self.in_channels)
        shape = (self.in_channels, self.out_channels, self.kernel_size)
        return conv_macs("svd", *shape, in_hw, out_hw, self.ranks())

    @classmethod
    def max_ranks(cls, layer: nn.Module) -> dict[str, int]:
        """``{"rank": min(C_out, C_in*kh*kw)}``."""
        conv = _as_conv(layer)
        kh, kw = _pair(conv.kernel_size)
        return {"rank": min(conv.out_channels, conv.in_channels * kh * kw)}

    @classmethod
    def _construct(cls, layer: Any, ranks: dict[str, int]) -> SVDConv2d:
        kwargs: dict[str, Any] = {**_conv_kwargs(layer), **ranks}
        return cls(**kwargs)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, rank={self.rank}"
        )


class SVDLinear(_SVDLayer):
    """SVD-factorized ``nn.Linear``: ``u(v(x) * s)``.

    ``v``: Linear in -> r without bias (weight = V^T); ``s``: r singular values; ``u``: Linear
    r -> out (weight = U) with the bias. Initialization as in ``_SVDLayer`` (fan_in = in).
    """

    dense_type: ClassVar[type[nn.Module]] = nn.Linear
    v: nn.Linear
    u: nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rank: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        limit = min(out_features, in_features)
        rank = _check_rank(type(self).__name__, "rank", rank, limit, "min(out_features, in_features)")
        self.in_features = in_features
        self.out_features = out_features
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.v = nn.Linear(in_features, rank, bias=False, **factory)
        self.s = nn.Parameter(torch.empty(rank, **factory))
        self.u = nn.Linear(rank, out_features, bias=bias, **factory)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """``u(v(x) * s)``, with ``s`` folded into ``u``'s weight (see :meth:`SVDConv2d.forward`)."""
        return nn.functional.linear(self.v(x), self.u.weight * self.s, self.u.bias)

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with weight ``U diag(s) V^T`` and the bias."""
        dense = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.u.bias is not None,
            device=self.s.device,
            dtype=self.s.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            _copy_bias(dense, self.u)
        return dense

    def macs(self, input_size: Sequence[int]) -> int:
        """``prod(leading dims) * r * (in + out)`` (:func:`rank_search.cost.linear_macs`)."""
        lead = _leading(input_size, self.in_features)
        return linear_macs("svd", self.in_features, self.out_features, lead, self.ranks())

    @classmethod
    def max_ranks(cls, layer: nn.Module) -> dict[str, int]:
        """``{"rank": min(out_features, in_features)}``."""
        linear = _as_linear(layer)
        return {"rank": min(linear.out_features, linear.in_features)}

    @classmethod
    def _construct(cls, layer: Any, ranks: dict[str, int]) -> SVDLinear:
        linear = _as_linear(layer)
        return cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            **ranks,
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


# --------------------------------------------------------------------------- registry and factory

LOW_RANK_CONV_CLASSES: dict[str, type[LowRankLayer]] = {"tucker2": Tucker2Conv2d, "svd": SVDConv2d}
"""Low-rank conv class per format name; :func:`low_rank_class` also handles ``nn.Linear``."""

_LOW_RANK_LINEAR_CLASSES: dict[str, type[LowRankLayer]] = {"svd": SVDLinear}

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _check_format(fmt: str) -> None:
    """Raise ``ValueError`` for an unknown format name."""
    if fmt not in LOW_RANK_CONV_CLASSES:
        raise ValueError(f"unknown low-rank format {fmt!r}; known formats: {sorted(LOW_RANK_CONV_CLASSES)}")


def unfactorizable_reason(layer: nn.Module, fmt: str) -> str | None:
    """``None`` if ``layer`` can be replaced in format ``fmt``, else the reason why not.

    Only plain ``nn.Conv2d`` (groups=1) and, for ``"svd"``, plain ``nn.Linear`` are factorized.
    Subclasses are refused because they may compute something else with the same weight.
    Raises ``ValueError`` for an unknown ``fmt``.
    """
    _check_format(fmt)
    if isinstance(layer, LowRankLayer):
        return f"already low-rank ({type(layer).__name__})"
    if isinstance(layer, _TRANSPOSED):
        return f"transposed conv ({type(layer).__name__}) is not factorized"
    if isinstance(layer, nn.modules.lazy.LazyModuleMixin):
        return f"lazy module {type(layer).__name__} is not initialized; run a forward pass first"
    if not isinstance(layer, nn.Conv2d | nn.Linear):
        return f"{type(layer).__name__} is not a Conv2d or Linear layer"
    if type(layer) not in (nn.Conv2d, nn.Linear):
        return f"{type(layer).__name__} subclasses a Conv2d/Linear; only the plain classes are factorized"
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        depthwise = " (depthwise)" if layer.groups == layer.in_channels else ""
        return f"grouped conv (groups={layer.groups}) is not factorized{depthwise}"
    if isinstance(layer, nn.Linear) and fmt not in _LOW_RANK_LINEAR_CLASSES:
        return f"{fmt} applies to Conv2d only"
    return None


def low_rank_class(fmt: str, layer: nn.Module) -> type[LowRankLayer]:
    """The low-rank class replacing ``layer`` in format ``fmt`` (``ValueError`` if none can)."""
    reason = unfactorizable_reason(layer, fmt)
    if reason is not None:
        raise ValueError(f"cannot factorize {type(layer).__name__} as {fmt}: {reason}")
    return _LOW_RANK_LINEAR_CLASSES[fmt] if isinstance(layer, nn.Linear) else LOW_RANK_CONV_CLASSES[fmt]


def full_ranks(layer: nn.Conv2d | nn.Linear, fmt: str) -> dict[str, int]:
    """The largest useful ranks of ``layer`` in format ``fmt``.

    tucker2: ``rank_in=C_in, rank_out=C_out``; svd conv: ``rank=min(C_out, C_in*kh*kw)``;
    svd linear: ``rank=min(out, in)``.
    """
    return low_rank_class(fmt, layer).max_ranks(layer)


def make_low_rank(
    layer: nn.Module, fmt: str, ranks: Mapping[str, int], *, init: str = "scratch"
) -> LowRankLayer:
    """Build the low-rank replacement of ``layer`` with the same hyperparameters.

    ``init="scratch"`` initializes for training from scratch (:meth:`LowRankLayer.reset_parameters`);
    ``init="svd"`` decomposes ``layer``'s weight (:meth:`LowRankLayer.from_dense`). Raises
    ``ValueError`` for an unknown format or init, an unfactorizable layer, missing or extra rank
    keys and ranks outside ``[1, full rank]``.
    """
    cls = low_rank_class(fmt, layer)
    if init == "scratch":
        return cls.like_dense(layer, **ranks)
    if init == "svd":
        return cls.from_dense(layer, **ranks)
    raise ValueError(f"unknown init {init!r}; expected 'scratch' or 'svd'")


def low_rank_modules(model: nn.Module) -> list[tuple[str, LowRankLayer]]:
    """``(name, module)`` for every :class:`LowRankLayer` in ``model``, in ``named_modules`` order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LowRankLayer)]

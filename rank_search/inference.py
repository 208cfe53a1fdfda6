"""Export a trained (low-rank) model for inference: fold BatchNorm, merge SVD scales, channels_last.

:func:`export_for_inference` returns a new module computing what the original computes in eval
mode, with fewer and cheaper operations:

* every low-rank layer becomes a plain ``nn.Sequential`` of ``nn.Conv2d`` / ``nn.Linear``
  children under the same names (Tucker-2: ``first``, ``core``, ``last``; SVD: ``v``, ``u``),
  with the SVD singular values ``s`` multiplied into the columns of ``u`` (no scale kernel);
* every ``BatchNorm2d`` whose input is the output of a conv (dense, Tucker-2 or SVD) used nowhere
  else is folded into that conv's output-side conv (dense conv, Tucker-2 ``last``, SVD ``u``)
  and replaced by ``nn.Identity``;
* weights are converted to ``channels_last`` and, optionally, to another dtype; the result can
  be wrapped in ``torch.compile`` or a CUDA-graph replayer.

Finding conv -> BN pairs. Module registration order says nothing reliable about data flow
(a block may define ``bn1`` before ``conv1``, or feed a conv's output to two places), so pairs
come from the traced graph: ``torch.fx.symbolic_trace`` with low-rank layers kept as leaves;
a pair is a BN ``call_module`` node whose only input is a conv node with exactly one user, and
both modules are called exactly once. This works for the CIFAR ResNets and the torchvision
ResNets / MobileNets. Models that fx cannot trace (data-dependent control flow) fall back to
recording, during one forward pass at ``input_size``, which BN received exactly the tensor a
conv returned; that cannot see other users of the tensor, so the fallback checks the folded
model against the original numerically and raises if they differ. Without ``input_size`` a
model that cannot be traced is exported without folding (with a warning).
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

from .errors import RankSearchError
from .layers import LowRankLayer, SVDConv2d, SVDLinear, Tucker2Conv2d

__all__ = [
    "FORMS",
    "CUDAGraphModule",
    "Equivalence",
    "apply_form",
    "apply_forms",
    "check_equivalence",
    "export_for_inference",
    "find_conv_bn_pairs",
    "fold_bn_into_conv",
    "layer_format",
    "exported_low_rank_formats",
    "plain_low_rank",
]

# module types whose output a BatchNorm can be folded into (a dense conv or a low-rank conv)
BN_FOLDABLE_CONVS = (nn.Conv2d, Tucker2Conv2d, SVDConv2d)


# --------------------------------------------------------------------------- public API


def export_for_inference(
    model: nn.Module,
    *,
    channels_last: bool = True,
    fold_bn: bool = True,
    compile: bool | str = False,
    cuda_graph: bool = False,
    input_size: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A new eval-mode module for inference; ``model`` is not modified.

    ``compile``: ``True`` for ``torch.compile`` default mode, or a mode name such as
    ``"max-autotune"`` / ``"reduce-overhead"`` (the latter uses CUDA graphs itself).
    ``cuda_graph``: wrap in :class:`CUDAGraphModule` (CUDA only; pays off where per-kernel launch
    overhead dominates, i.e. small models and batches). ``input_size`` (C, H, W) enables the
    BN-folding fallback for models fx cannot trace (see the module docstring).
    """
    if compile and cuda_graph:
        raise ValueError("use either compile (mode 'reduce-overhead' captures CUDA graphs) or cuda_graph")
    exported = copy.deepcopy(model).eval()
    pairs, needs_check = _find_pairs(exported, input_size) if fold_bn else ([], False)
    reference = copy.deepcopy(exported) if needs_check else None
    exported = _replace_low_rank(exported)
    for conv_name, bn_name in pairs:
        fold_bn_into_conv(_output_conv(exported.get_submodule(conv_name)), exported.get_submodule(bn_name))
        exported.set_submodule(bn_name, nn.Identity())
    if reference is not None and input_size is not None:
        _verify_fallback(reference, exported, input_size)
    exported.requires_grad_(False)
    if dtype is not None:
        exported.to(dtype=dtype)
    if channels_last:
        exported.to(memory_format=torch.channels_last)
    if cuda_graph:
        exported = CUDAGraphModule(exported)
    if compile:
        exported = _compile(exported, compile)
    return exported


@dataclass(frozen=True)
class Equivalence:
    """Largest elementwise difference between two models' outputs and whether it is within tolerance."""

    max_abs_diff: float
    max_abs_reference: float
    atol: float
    rtol: float
    ok: bool


def check_equivalence(
    original: nn.Module,
    exported: nn.Module,
    input_size: Sequence[int],
    *,
    batch_size: int = 2,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 0,
) -> Equivalence:
    """Compare ``exported`` with ``original`` in eval mode on one random batch.

    ``ok`` is ``torch.allclose``'s criterion: ``|a - b| <= atol + rtol * |b|`` everywhere, where
    ``b`` is the original's output. ``original``'s training mode is restored afterwards.
    """
    device = _device_of(original)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *input_size, generator=generator).to(device)
    was_training = original.training
    try:
        original.eval()
        with torch.no_grad():
            reference = original(x).float()
            param = next(exported.parameters(), None)
            x_exp = x.to(param.dtype) if param is not None and param.is_floating_point() else x
            output = exported(x_exp).float()
    finally:
        original.train(was_training)
    diff = (output - reference).abs()
    ok = bool((diff <= atol + rtol * reference.abs()).all())
    return Equivalence(float(diff.max()), float(reference.abs().max()), atol, rtol, ok)


# --------------------------------------------------------------------------- low-rank layers


def plain_low_rank(layer: LowRankLayer) -> nn.Module:
    """``layer`` as a ``nn.Sequential`` of its convs/linears, SVD's ``s`` merged into ``u``."""
    if isinstance(layer, Tucker2Conv2d):
        return nn.Sequential(OrderedDict(first=layer.first, core=layer.core, last=layer.last))
    if isinstance(layer, SVDConv2d | SVDLinear):
        u = layer.u
        with torch.no_grad():
            shape = (1, -1) + (1,) * (u.weight.dim() - 2)
            u.weight.mul_(layer.s.detach().view(shape))
        return nn.Sequential(OrderedDict(v=layer.v, u=u))
    raise TypeError(f"no inference form for {type(layer).__name__}")


def _replace_low_rank(model: nn.Module) -> nn.Module:
    """Replace every low-rank layer of ``model`` (or ``model`` itself) by :func:`plain_low_rank`."""
    if isinstance(model, LowRankLayer):
        return plain_low_rank(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LowRankLayer):
            model.set_submodule(name, plain_low_rank(module))
    return model


def _output_conv(module: nn.Module) -> nn.Conv2d:
    """The conv producing ``module``'s output: itself, or the last child of an exported low-rank layer."""
    if isinstance(module, nn.Sequential):
        module = module[-1]
    if not isinstance(module, nn.Conv2d):
        raise TypeError(f"expected a conv, got {type(module).__name__}")
    return module


# --------------------------------------------------------------------------- equivalent forms

# Equivalent forms of an exported low-rank layer (the output of :func:`plain_low_rank`), per format:
# ``factorized`` keeps every factor; ``merge_first`` merges Tucker-2's 1x1 ``first`` into ``core``
# (C_in -> r_out kxk, then ``last``); ``merge_last`` merges ``last`` into ``core`` (``first``, then
# r_in -> C_out kxk); ``dense`` merges everything into one conv/linear. All are exact up to
# floating-point rounding (merged in float64): ``first`` has no bias and is 1x1 with stride 1 and no
# padding, so it commutes with ``core``'s zero padding, and a 1x1 ``last`` is a linear map of
# ``core``'s output channels (its bias and ``core``'s, if any, become one bias).
FORMS: dict[str, tuple[str, ...]] = {
    "tucker2": ("factorized", "merge_first", "merge_last", "dense"),
    "svd": ("factorized", "dense"),
}


def _matrix(layer: nn.Conv2d | nn.Linear) -> Tensor:
    """A 1x1 conv's or a linear layer's weight as an (out x in) float64 matrix."""
    return layer.weight.detach().double().flatten(1)


def _conv_like(template: nn.Conv2d, in_channels: int, out_channels: int, bias: bool) -> nn.Conv2d:
    """A conv with ``template``'s kernel, stride, padding and dilation and new channel counts."""
    weight = template.weight
    return nn.Conv2d(
        in_channels,
        out_channels,
        template.kernel_size,  # type: ignore[arg-type]
        template.stride,  # type: ignore[arg-type]
        template.padding,  # type: ignore[arg-type]
        template.dilation,  # type: ignore[arg-type]
        padding_mode=template.padding_mode,
        bias=bias,
        device=weight.device,
        dtype=weight.dtype,
    )


def _merge_in(inner: nn.Conv2d, conv: nn.Conv2d) -> nn.Conv2d:
    """One conv computing ``conv(inner(x))`` for a bias-free 1x1 ``inner`` (stride 1, no padding)."""
    if inner.bias is not None or inner.kernel_size != (1, 1) or inner.stride != (1, 1) or inner.groups != 1:
        raise ValueError("can only merge a bias-free 1x1 stride-1 conv into the next conv")
    if conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError("can only merge into an ungrouped zero-padded conv")
    merged = _conv_like(conv, inner.in_channels, conv.out_channels, conv.bias is not None)
    weight = torch.einsum("rskl,si->rikl", conv.weight.detach().double(), _matrix(inner))
    with torch.no_grad():
        merged.weight.copy_(weight.to(merged.weight.dtype))
        if conv.bias is not None and merged.bias is not None:
            merged.bias.copy_(conv.bias.detach())
    return merged


def _merge_out(conv: nn.Conv2d, outer: nn.Conv2d) -> nn.Conv2d:
    """One conv computing ``outer(conv(x))`` for a 1x1 ``outer`` (stride 1, no padding, ungrouped)."""
    if outer.kernel_size != (1, 1) or outer.stride != (1, 1) or outer.groups != 1 or outer.padding != (0, 0):
        raise ValueError("can only merge a 1x1 stride-1 unpadded conv into the previous conv")
    if conv.groups != 1:
        raise ValueError("can only merge into an ungrouped conv")
    has_bias = conv.bias is not None or outer.bias is not None
    merged = _conv_like(conv, conv.in_channels, outer.out_channels, has_bias)
    w_out = _matrix(outer)
    weight = torch.einsum("or,rskl->oskl", w_out, conv.weight.detach().double())
    with torch.no_grad():
        merged.weight.copy_(weight.to(merged.weight.dtype))
        if merged.bias is not None:
            merged.bias.copy_(_merged_bias(w_out, conv.bias, outer.bias).to(merged.bias.dtype))
    return merged


def _merged_bias(w_outer: Tensor, inner: Tensor | None, outer: Tensor | None) -> Tensor:
    """The bias of ``outer(inner(x))`` merged into one layer: ``W_outer b_inner + b_outer`` (float64)."""
    bias = torch.zeros(w_outer.shape[0], dtype=torch.float64, device=w_outer.device)
    if inner is not None:
        bias = bias + w_outer @ inner.detach().double()
    if outer is not None:
        bias = bias + outer.detach().double()
    return bias


def _merge_linear(v: nn.Linear, u: nn.Linear) -> nn.Linear:
    """One linear layer computing ``u(v(x))``."""
    has_bias = v.bias is not None or u.bias is not None
    weight = u.weight
    merged = nn.Linear(v.in_features, u.out_features, bias=has_bias, device=weight.device, dtype=weight.dtype)
    w_u = _matrix(u)
    with torch.no_grad():
        merged.weight.copy_((w_u @ _matrix(v)).to(weight.dtype))
        if merged.bias is not None:
            merged.bias.copy_(_merged_bias(w_u, v.bias, u.bias).to(weight.dtype))
    return merged


def layer_format(module: nn.Module) -> str | None:
    """``"tucker2"`` / ``"svd"`` for an exported low-rank layer (a :func:`plain_low_rank` result)."""
    if isinstance(module, nn.Sequential):
        names = tuple(name for name, _ in module.named_children())
        if names == ("first", "core", "last"):
            return "tucker2"
        if names == ("v", "u"):
            return "svd"
    return None


def apply_form(module: nn.Sequential, form: str) -> nn.Module:
    """An exported low-rank layer (see :func:`plain_low_rank`) in ``form`` (one of :data:`FORMS`).

    ``module`` is not modified; ``factorized`` returns it as is. The result computes the same
    function (merging runs in float64, then casts to the weights' dtype).
    """
    fmt = layer_format(module)
    if fmt is None:
        raise TypeError(f"not an exported low-rank layer: {type(module).__name__}")
    if form not in FORMS[fmt]:
        raise ValueError(f"unknown form {form!r} for {fmt}; expected one of {list(FORMS[fmt])}")
    if form == "factorized":
        return module
    if fmt == "svd":
        v, u = module.v, module.u
        if isinstance(v, nn.Linear) and isinstance(u, nn.Linear):
            return _merge_linear(v, u)
        assert isinstance(v, nn.Conv2d) and isinstance(u, nn.Conv2d)
        return _merge_out(v, u)
    first, core, last = module.first, module.core, module.last
    assert isinstance(first, nn.Conv2d) and isinstance(core, nn.Conv2d) and isinstance(last, nn.Conv2d)
    if form == "merge_first":
        return nn.Sequential(OrderedDict(core=_merge_in(first, core), last=last))
    if form == "merge_last":
        return nn.Sequential(OrderedDict(first=first, core=_merge_out(core, last)))
    return _merge_out(_merge_in(first, core), last)


def exported_low_rank_formats(exported: nn.Module) -> dict[str, str]:
    """``{name: format}`` of the exported low-rank layers in ``exported`` (see :func:`layer_format`)."""
    return {name: fmt for name, m in exported.named_modules() if (fmt := layer_format(m)) is not None}


def apply_forms(exported: nn.Module, forms: dict[str, str]) -> nn.Module:
    """Replace each named exported low-rank layer of ``exported`` by its ``forms[name]`` form, in place."""
    for name, form in forms.items():
        module = exported.get_submodule(name)
        if not isinstance(module, nn.Sequential):
            raise TypeError(f"{name} is not an exported low-rank layer")
        exported.set_submodule(name, apply_form(module, form))
    return exported


# --------------------------------------------------------------------------- BatchNorm folding


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Fold eval-mode ``bn`` (``BatchNorm2d`` with running statistics) into ``conv`` in place.

    ``W' = W * g``, ``b' = (b - mean) * g + beta`` with ``g = gamma / sqrt(var + eps)`` per output
    channel; a conv without bias gets one.
    """
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        raise TypeError("can only fold a BatchNorm2d with running statistics")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        bias = (bias - bn.running_mean.double()) * scale
        if bn.bias is not None:
            bias = bias + bn.bias.double()
        weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
        conv.weight.copy_(weight.to(conv.weight.dtype))
        new_bias = bias.to(device=conv.weight.device, dtype=conv.weight.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    """``bn`` is an eval-foldable BatchNorm2d over ``conv``'s output channels."""
    return (
        isinstance(conv, BN_FOLDABLE_CONVS)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_features == conv.out_channels
    )


def find_conv_bn_pairs(model: nn.Module, input_size: Sequence[int] | None = None) -> list[tuple[str, str]]:
    """``(conv name, bn name)`` pairs whose BN can be folded into the conv (see module docstring)."""
    return _find_pairs(model, input_size)[0]


def _find_pairs(model: nn.Module, input_size: Sequence[int] | None) -> tuple[list[tuple[str, str]], bool]:
    """The pairs, and whether they came from the hook fallback (which needs a numerical check)."""
    try:
        return _pairs_by_fx(model), False
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...) for untraceable code
        if input_size is None:
            warnings.warn(
                f"BatchNorm not folded: torch.fx cannot trace {type(model).__name__} ({exc}); "
                "pass input_size to use the hook fallback",
                stacklevel=4,
            )
            return [], False
        return _pairs_by_hooks(model, input_size), True


class _LowRankLeafTracer(fx.Tracer):
    """An fx tracer that keeps low-rank layers as single call_module nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, LowRankLayer) or super().is_leaf_module(m, module_qualified_name)


def _pairs_by_fx(model: nn.Module) -> list[tuple[str, str]]:
    graph = _LowRankLeafTracer().trace(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        conv_name, bn_name = str(source.target), str(node.target)
        if calls[conv_name] == 1 and calls[bn_name] == 1 and _foldable(modules[conv_name], modules[bn_name]):
            pairs.append((conv_name, bn_name))
    return pairs


def _pairs_by_hooks(model: nn.Module, input_size: Sequence[int]) -> list[tuple[str, str]]:
    produced: dict[int, tuple[str, Tensor]] = {}  # id(output) -> (conv name, output kept alive)
    found: list[tuple[str, str]] = []
    calls: dict[str, int] = {}
    handles = []
    modules = dict(model.named_modules())

    def on_conv(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            produced[id(out)] = (name, out)

        return hook

    def on_bn(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            calls[name] = calls.get(name, 0) + 1
            source = produced.get(id(args[0])) if args else None
            if source is not None and source[1] is args[0]:
                found.append((source[0], name))

        return hook

    low_rank = [n for n, m in modules.items() if isinstance(m, LowRankLayer)]
    for name, module in modules.items():
        if isinstance(module, BN_FOLDABLE_CONVS) and not any(name.startswith(n + ".") for n in low_rank):
            handles.append(module.register_forward_hook(on_conv(name)))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(on_bn(name)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=_device_of(model)))
    finally:
        for handle in handles:
            handle.remove()
    return [
        p for p in found if calls[p[0]] == 1 and calls[p[1]] == 1 and _foldable(modules[p[0]], modules[p[1]])
    ]


def _verify_fallback(reference: nn.Module, exported: nn.Module, input_size: Sequence[int]) -> None:
    result = check_equivalence(reference, exported, input_size, atol=1e-3, rtol=1e-3)
    if not result.ok:
        raise RankSearchError(
            f"BatchNorm folding found by the hook fallback changed the output (max diff "
            f"{result.max_abs_diff:.3g}); export with fold_bn=False or make the model fx-traceable"
        )


# --------------------------------------------------------------------------- compile and CUDA graphs


def _compile(module: nn.Module, mode: bool | str) -> nn.Module:
    """``torch.compile`` specialized to each input shape (``dynamic=False``: a bench uses few shapes)."""
    compiled = torch.compile(module, mode=mode if isinstance(mode, str) else None, dynamic=False)
    assert isinstance(compiled, nn.Module)
    return compiled


class CUDAGraphModule(nn.Module):
    """Replays one CUDA graph per input shape/dtype/memory format, captured on first use.

    The input is copied into a static buffer and the graph replayed; the returned tensor is
    the graph's static output, overwritten by the next call (clone it to keep it). Capture
    follows the PyTorch recipe: warm up on a side stream, then capture under ``torch.cuda.graph``.
    CPU inputs are passed straight to the wrapped module.
    """

    def __init__(self, module: nn.Module, warmup: int = 3) -> None:
        super().__init__()
        self.module = module
        self.warmup = warmup
        self._graphs: dict[tuple[Any, ...], tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cuda":
            return self.module(x)
        key = (tuple(x.shape), x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last))
        if key not in self._graphs:
            self._graphs[key] = self._capture(x)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def _capture(self, x: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor]:
        static_in = x.clone()
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.module(static_in)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            static_out = self.module(static_in)
        return graph, static_in, static_out


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")

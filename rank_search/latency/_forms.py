"""The fastest equivalent form of each low-rank layer in a runtime, chosen by measurement.

A low-rank layer can run factorized, with one side merged (Tucker-2), or merged back to one dense
layer (:data:`rank_search.inference.FORMS`); all compute the same function. Which is fastest
depends on the runtime, the CPU, the shapes and the batch: ONNX Runtime does not fuse the
1x1 -> kxk -> 1x1 chain, so at small sizes per-op overhead makes the merged forms faster, at
large sizes the factorized one. :func:`choose_forms` times every form of every low-rank layer
of an exported model at the layer's in-network input shape, interleaved, and
:func:`choose_form` picks the fastest median (ties go to the earlier form in ``FORMS``).
Equal layers (same format, weight shapes and input shape) are timed once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..inference import FORMS, apply_form, exported_low_rank_formats, layer_format
from ._device import num_threads
from ._runtime import runner
from ._timing import Spread, summarize, time_interleaved

__all__ = ["FormChoice", "choose_form", "choose_forms", "in_context", "layer_inputs", "time_forms"]


def choose_form(times_ms: Mapping[str, float]) -> str:
    """The form with the smallest time; ties go to the form listed first in ``FORMS``."""
    if not times_ms:
        raise ValueError("no form times")
    order = {form: i for forms in FORMS.values() for i, form in enumerate(forms)}
    return min(times_ms, key=lambda form: (times_ms[form], order.get(form, len(order))))


@dataclass(frozen=True)
class FormChoice:
    """The form chosen for one layer and the median time of every form it was chosen from."""

    name: str
    format: str
    form: str
    times_ms: dict[str, float]

    @property
    def speedup_vs_factorized(self) -> float:
        return self.times_ms["factorized"] / self.times_ms[self.form]

    @property
    def speedup_vs_dense(self) -> float:
        """How much faster the chosen form is than the merged dense layer (>= 1 by choice)."""
        return self.times_ms["dense"] / self.times_ms[self.form]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "form": self.form, "times_ms": dict(self.times_ms)}


def time_forms(
    layer: nn.Sequential,
    x: torch.Tensor,
    *,
    runtime: str = "onnxruntime",
    threads: int = 1,
    repeats: int = 7,
    warmup: int = 3,
    min_sample_ms: float = 2.0,
    precision: str = "fp32",
) -> dict[str, Spread]:
    """Time every form of the exported low-rank ``layer`` on input ``x``, interleaved
    (``precision="int8"``: each form statically quantized, context convs included)."""
    fmt = layer_format(layer)
    if fmt is None:
        raise TypeError(f"not an exported low-rank layer: {type(layer).__name__}")
    forms = FORMS[fmt]
    with num_threads(threads):
        modules = [in_context(apply_form(layer, form), x) for form in forms]
        calls = [runner(module, x, runtime, threads, precision) for module in modules]
        with torch.inference_mode():
            samples = time_interleaved(
                calls, x.device, repeats=repeats, warmup=warmup, min_sample_ms=min_sample_ms
            )
    return {form: summarize(s) for form, s in zip(forms, samples, strict=True)}


def in_context(module: nn.Module, x: torch.Tensor) -> nn.Module:
    """``module`` (a conv, or a chain of convs) between a 1x1 conv before and ReLU + 1x1 conv after.

    Inside a network, ONNX Runtime keeps conv activations in its blocked (NCHWc) layout from one
    conv to the next; a conv timed alone pays the layout reorders at its input and output,
    which can dwarf a small conv and favour the wrong form. The context convs take those
    reorders (the same for every form), so forms compare as they run in the network. Linear
    layers and non-4D inputs are returned as they are.
    """
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if x.dim() != 4 or not convs:
        return module
    before = nn.Conv2d(convs[0].in_channels, convs[0].in_channels, 1)
    after = nn.Conv2d(convs[-1].out_channels, convs[-1].out_channels, 1)
    return nn.Sequential(before, module, nn.ReLU(), after).eval()


def layer_inputs(exported: nn.Module, names: Sequence[str], example: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each named submodule of ``exported`` receives when it runs on ``example``."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:

        def hook(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            captured.setdefault(name, args[0].detach().clone())

        handles.append(exported.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            exported(example)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _shape_key(layer: nn.Module, x: torch.Tensor) -> tuple[Any, ...]:
    parts: list[Any] = [tuple(x.shape)]
    for child in layer.children():
        assert isinstance(child, nn.Conv2d | nn.Linear)
        extra = (child.stride, child.padding, child.dilation) if isinstance(child, nn.Conv2d) else ()
        parts.append((type(child).__name__, tuple(child.weight.shape), child.bias is not None, extra))
    return tuple(parts)


def choose_forms(
    exported: nn.Module,
    example: torch.Tensor,
    *,
    runtime: str = "onnxruntime",
    threads: int = 1,
    precision: str = "fp32",
    **timing: Any,
) -> dict[str, FormChoice]:
    """Per exported low-rank layer of ``exported`` (see :func:`~rank_search.inference.layer_format`),
    the fastest form in ``runtime`` at its input shape when ``exported`` runs on ``example``.

    ``precision``: ``fp32`` or ``int8`` (each form timed quantized: the fastest INT8 form can
    differ from the fastest float32 one). ``timing`` goes to :func:`time_forms` (``repeats``,
    ``warmup``, ``min_sample_ms``).
    """
    formats = exported_low_rank_formats(exported)
    inputs = layer_inputs(exported, list(formats), example)
    cache: dict[tuple[Any, ...], dict[str, float]] = {}
    choices = {}
    for name, fmt in formats.items():
        layer = exported.get_submodule(name)
        assert isinstance(layer, nn.Sequential)
        key = _shape_key(layer, inputs[name])
        if key not in cache:
            spreads = time_forms(
                layer, inputs[name], runtime=runtime, threads=threads, precision=precision, **timing
            )
            cache[key] = {form: s.median for form, s in spreads.items()}
        times = cache[key]
        choices[name] = FormChoice(name, fmt, choose_form(times), dict(times))
    return choices

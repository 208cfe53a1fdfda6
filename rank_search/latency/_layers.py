"""Single layers at their in-network input shape: build them, time dense vs low-rank, give advice.

A layer is rebuilt from its :class:`~rank_search.convert.LayerInfo` (in/out channels, kernel,
stride, groups, input and output size). Padding is recovered from the input and output sizes
(the usual ``(k - 1) // 2`` when it fits); dilation is taken as 1. Convs get a bias because
inference export folds BatchNorm into them. Low-rank layers are built with ``make_low_rank`` and
exported like whole models (SVD scales merged, channels_last), so a layer is timed as it runs
after :func:`~rank_search.inference.export_for_inference`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..convert import LayerInfo, layer_infos
from ..inference import export_for_inference
from ..layers import make_low_rank
from ._device import num_threads, resolve_device
from ._runtime import check_runtime, runner
from ._timing import Spread, summarize, time_interleaved

__all__ = [
    "LayerAdvice",
    "LayerTiming",
    "build_dense_layer",
    "build_layer",
    "factorization_pays",
    "layer_input",
    "measure_layer_latency",
    "ratio_ranks",
]


def _padding(in_size: int, out_size: int, k: int, stride: int) -> int:
    """A padding ``p`` with ``(in + 2p - k) // stride + 1 == out``, preferring ``(k - 1) // 2``."""
    candidates = [(k - 1) // 2, *range(k)]
    for p in candidates:
        if (in_size + 2 * p - k) // stride + 1 == out_size:
            return p
    raise ValueError(f"no padding maps size {in_size} to {out_size} with kernel {k}, stride {stride}")


def build_dense_layer(info: LayerInfo) -> nn.Conv2d | nn.Linear:
    """The dense conv/linear layer described by ``info`` (with bias, random weights)."""
    if info.kind == "linear":
        return nn.Linear(info.in_channels, info.out_channels)
    ph, pw = (
        _padding(info.input_size[1 + d], info.output_size[1 + d], info.kernel_size[d], info.stride[d])
        for d in range(2)
    )
    return nn.Conv2d(
        info.in_channels,
        info.out_channels,
        info.kernel_size,
        info.stride,
        (ph, pw),
        groups=info.groups,
        bias=True,
    )


def build_layer(
    info: LayerInfo,
    fmt: str,
    ranks: Mapping[str, int],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> nn.Module:
    """``info``'s layer in format ``fmt`` with ``ranks``, exported for inference on ``device``."""
    layer: nn.Module = build_dense_layer(info)
    if fmt != "dense":
        layer = make_low_rank(layer, fmt, dict(ranks))
    layer = layer.to(device)
    return export_for_inference(layer, channels_last=channels_last, fold_bn=False, dtype=dtype)


def layer_input(
    info: LayerInfo,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> torch.Tensor:
    """A random input batch of ``info``'s per-sample input size."""
    x = torch.randn(batch_size, *info.input_size, device=device, dtype=dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@dataclass(frozen=True)
class LayerTiming:
    """Dense and low-rank per-call latency of one layer at one batch size (milliseconds)."""

    name: str
    format: str
    ranks: dict[str, int]
    batch_size: int
    dense: Spread
    low_rank: Spread
    dense_macs: int
    low_rank_macs: int
    runtime: str = "torch"
    forms: dict[str, Spread] | None = None  # onnxruntime: every equivalent form; low_rank = fastest

    @property
    def speedup(self) -> float:
        """``dense median / low-rank median``; above 1 means factorizing is faster."""
        return self.dense.median / self.low_rank.median

    @property
    def form(self) -> str:
        """The form timed as ``low_rank``: the fastest equivalent form (onnxruntime), else factorized."""
        if not self.forms:
            return "factorized"
        from ._forms import choose_form

        return choose_form({k: v.median for k, v in self.forms.items()})


def measure_layer_latency(
    info: LayerInfo,
    fmt: str,
    ranks: Mapping[str, int],
    batch_size: int,
    device: str | torch.device = "cpu",
    *,
    repeats: int = 7,
    warmup: int = 3,
    threads: int | None = None,
    min_sample_ms: float = 2.0,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    runtime: str = "torch",
) -> LayerTiming:
    """Time ``info``'s dense layer and its ``fmt``/``ranks`` form, interleaved, at the layer's
    exact input shape with ``batch_size`` samples (eval mode, inference mode).

    ``runtime="onnxruntime"``: every equivalent form of the low-rank layer is timed too (all
    interleaved with dense, each between context convs, see
    :func:`~rank_search.latency._forms.in_context`) and ``low_rank`` is the fastest form.
    """
    dev = resolve_device(device)
    check_runtime(runtime, dev)
    ort = runtime == "onnxruntime"
    channels_last = channels_last and not ort
    with num_threads(threads):
        dense = build_layer(info, "dense", {}, dev, dtype, channels_last)
        low = build_layer(info, fmt, ranks, dev, dtype, channels_last)
    x = layer_input(info, batch_size, dev, dtype, channels_last)
    used = threads if threads is not None else torch.get_num_threads()
    names = ["factorized"]
    modules = [dense, low]
    if ort:
        from ..inference import FORMS, apply_form
        from ._forms import in_context

        assert isinstance(low, nn.Sequential)
        names = list(FORMS[fmt])
        modules = [in_context(dense, x)] + [in_context(apply_form(low, f), x) for f in names]
    with num_threads(threads):
        calls = [runner(m, x, runtime, used) for m in modules]
        with torch.inference_mode():
            d, *lows = time_interleaved(
                calls, dev, repeats=repeats, warmup=warmup, min_sample_ms=min_sample_ms
            )
    forms = {name: summarize(s) for name, s in zip(names, lows, strict=True)}
    fastest = min(forms, key=lambda k: forms[k].median)
    return LayerTiming(
        info.name,
        fmt,
        dict(ranks),
        batch_size,
        summarize(d),
        forms[fastest],
        info.dense_macs,
        info.macs(fmt, ranks),
        runtime,
        forms if ort else None,
    )


def ratio_ranks(info: LayerInfo, fmt: str, ratio: float) -> dict[str, int]:
    """Each of the layer's full ranks times ``ratio``, rounded, at least 1."""
    return {k: max(1, round(v * ratio)) for k, v in info.full_ranks[fmt].items()}


@dataclass
class LayerAdvice:
    """Whether any rank on the grid makes a layer faster than dense."""

    name: str
    format: str
    dense_ms: float
    timings: list[LayerTiming] = field(default_factory=list)
    min_speedup: float = 1.05

    @property
    def best(self) -> LayerTiming | None:
        return max(self.timings, key=lambda t: t.speedup, default=None)

    @property
    def pays(self) -> bool:
        """Some grid rank is at least ``min_speedup`` times faster than dense."""
        best = self.best
        return best is not None and best.speedup >= self.min_speedup

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "name": self.name,
            "format": self.format,
            "dense_ms": self.dense_ms,
            "pays": self.pays,
            "best_ranks": best.ranks if best else None,
            "best_speedup": best.speedup if best else None,
            "best_form": best.form if best else None,
            "grid": [
                {
                    "ranks": t.ranks,
                    "low_rank_ms": t.low_rank.median,
                    "form": t.form,
                    "forms_ms": {k: v.median for k, v in (t.forms or {}).items()},
                    "speedup": t.speedup,
                    "mac_ratio": t.dense_macs / max(1, t.low_rank_macs),
                }
                for t in self.timings
            ],
        }


def factorization_pays(
    model_name: str,
    input_size: Sequence[int],
    device: str | torch.device = "cpu",
    *,
    fmt: str = "tucker2",
    ratios: Sequence[float] = (0.25, 0.5, 0.75),
    batch_size: int = 1,
    num_classes: int = 10,
    names: Sequence[str] | None = None,
    min_speedup: float = 1.05,
    **timing: Any,
) -> list[LayerAdvice]:
    """For each factorizable layer (or those in ``names``), time dense against ``fmt`` at each rank
    ratio in ``ratios``; :attr:`LayerAdvice.pays` says whether any is ``min_speedup`` faster.

    Layers where it never pays are candidates for a "dense" choice in a search space. ``timing``
    goes to :func:`measure_layer_latency` (``repeats``, ``warmup``, ``threads``, ...).
    """
    infos = list(layer_infos(model_name, num_classes, tuple(input_size)).values())
    wanted = set(names) if names is not None else None
    by_shape: dict[tuple[Any, ...], list[LayerTiming]] = {}  # layers of equal shape are timed once
    advice = []
    for info in infos:
        if not info.allows(fmt) or (wanted is not None and info.name not in wanted):
            continue
        shape = (
            info.kind,
            info.in_channels,
            info.out_channels,
            info.kernel_size,
            info.stride,
            info.groups,
            info.input_size,
            info.output_size,
        )
        if shape not in by_shape:
            grid = sorted({tuple(sorted(ratio_ranks(info, fmt, r).items())) for r in ratios})
            by_shape[shape] = [
                measure_layer_latency(info, fmt, dict(ranks), batch_size, device, **timing) for ranks in grid
            ]
        timings = [replace(t, name=info.name) for t in by_shape[shape]]
        dense_ms = statistics.median(t.dense.median for t in timings)
        advice.append(LayerAdvice(info.name, fmt, dense_ms, timings, min_speedup))
    return advice

"""Measured speed of a rank config beside its dense counterpart: latency, throughput, speedup vs MACs.

Both models are exported for inference (BatchNorm folded, SVD scales merged, channels_last) and
timed in one run, interleaved (dense, low-rank, then low-rank, dense, ...) so drift hits both
alike, after warmup, over several repeats; the median and quartiles/min/max are reported. CPU
times come from ``time.perf_counter``; CUDA times from ``torch.cuda.Event`` with synchronization.
``speedup`` is ``dense_ms / low_rank_ms``; ``mac_ratio`` is ``dense MACs / low-rank MACs``
(conv + linear MACs, :mod:`rank_search.cost`). A speedup below the MAC ratio is the norm:
fewer MACs are not proportionally less time.

``runtime``: ``torch`` (eager, as above) or ``onnxruntime`` (CPU, float32): both models are
converted to ONNX and run in ONNX Runtime (``ORT_ENABLE_ALL``, ``threads`` intra-op threads); the
low-rank model ships as ``rank-search export-model`` writes it, each low-rank layer in its fastest
equivalent form, chosen by timing at each batch size (:func:`rank_search.onnx_export.fastest_form`).

``int8`` (onnxruntime only): the low-rank and the dense model are also statically quantized
(:mod:`rank_search.latency._quant`, calibrated on the timing input: ranges do not change the
kernels), the low-rank one with its forms chosen by INT8 timings, and all four (dense and
low-rank, float32 and INT8) are timed interleaved; each row then also has ``dense_int8_ms``,
``low_rank_int8_ms`` and the INT8 low-rank model's speedup over INT8 dense and over float32 dense.

The JSON has the first batch size's figures at the top level (``batch_size``, ``dense_ms``,
``lowrank_ms``, ``speedup``, with ``mac_ratio``, ``runtime`` and ``threads``) and every batch
size under ``results``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_write_json
from .config import RankConfig
from .cost import count_params
from .errors import RankSearchError
from .inference import export_for_inference
from .latency import (
    Spread,
    check_runtime,
    device_name,
    load_average,
    num_threads,
    resolve_device,
    resolve_dtype,
    summarize,
    time_interleaved,
    warn_if_busy,
)
from .latency._runtime import runner

__all__ = ["BenchOptions", "BenchResult", "BenchRow", "bench_config", "default_batch_sizes", "save_bench"]

FORMAT_ID = "rank-search/bench"
VERSION = 1


def default_batch_sizes(device: torch.device) -> tuple[int, ...]:
    """Latency batch 1 and a throughput batch: 32 on CPU, 1024 on CUDA."""
    return (1, 1024) if device.type == "cuda" else (1, 32)


@dataclass(frozen=True)
class BenchOptions:
    """How to bench. ``batch_sizes=None`` means :func:`default_batch_sizes`; ``threads=None`` keeps
    torch's current CPU thread count; ``compile`` is ``False``, ``True`` or a torch.compile mode."""

    device: str = "cpu"
    batch_sizes: Sequence[int] | None = None
    repeats: int = 10
    warmup: int = 3
    threads: int | None = None
    dtype: str = "float32"
    channels_last: bool = True
    compile: bool | str = False
    cuda_graph: bool = False
    min_sample_ms: float = 20.0
    runtime: str = "torch"
    int8: bool = False

    def check(self) -> None:
        """Raise :class:`RankSearchError` for values that cannot be benched."""
        sizes = self.batch_sizes
        if sizes is not None and (
            not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes)
        ):
            raise RankSearchError(f"batch sizes must be positive integers, got {list(sizes)}")
        if self.repeats < 1:
            raise RankSearchError(f"repeats must be >= 1, got {self.repeats}")
        if self.warmup < 0 or (self.compile and self.warmup < 1):
            raise RankSearchError(f"warmup must be >= 0 (>= 1 with compile), got {self.warmup}")
        if self.cuda_graph and self.device.split(":")[0] != "cuda":
            raise RankSearchError("cuda_graph needs a CUDA device")
        if self.compile and self.cuda_graph:
            raise RankSearchError("use either compile (mode reduce-overhead uses CUDA graphs) or cuda_graph")
        resolve_dtype(self.dtype)
        if self.int8 and self.runtime != "onnxruntime":
            raise RankSearchError("int8 needs runtime onnxruntime")
        if self.runtime != "torch":
            check_runtime(self.runtime, self.device.split(":")[0])
            if self.dtype != "float32" or self.compile or self.cuda_graph:
                raise RankSearchError(f"runtime {self.runtime} runs float32 without compile or CUDA graphs")


@dataclass(frozen=True)
class BenchRow:
    """Dense and low-rank per-batch latency at one batch size."""

    batch_size: int
    dense: Spread
    low_rank: Spread
    mac_ratio: float
    forms: dict[str, Any] | None = None  # onnxruntime: how the low-rank layers' forms were chosen
    dense_int8: Spread | None = None
    low_rank_int8: Spread | None = None
    int8_forms: dict[str, Any] | None = None  # how the INT8 low-rank forms were chosen

    @property
    def speedup(self) -> float:
        return self.dense.median / self.low_rank.median

    def _int8_dict(self) -> dict[str, Any]:
        if self.dense_int8 is None or self.low_rank_int8 is None:
            return {}
        low = self.low_rank_int8.median
        return {
            "dense_int8_ms": self.dense_int8.median,
            "low_rank_int8_ms": low,
            "dense_int8_spread": self.dense_int8.to_dict(),
            "low_rank_int8_spread": self.low_rank_int8.to_dict(),
            "speedup_int8_vs_dense_int8": self.dense_int8.median / low,
            "speedup_int8_vs_dense_fp32": self.dense.median / low,
            **({"int8_forms": self.int8_forms} if self.int8_forms is not None else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        ms_to_s = 1e-3
        return {
            "batch_size": self.batch_size,
            "dense_ms": self.dense.median,
            "low_rank_ms": self.low_rank.median,
            "dense_spread": self.dense.to_dict(),
            "low_rank_spread": self.low_rank.to_dict(),
            "speedup": self.speedup,
            "mac_ratio": self.mac_ratio,
            "speedup_of_mac_ratio": self.speedup / self.mac_ratio,
            "dense_images_per_s": self.batch_size / (self.dense.median * ms_to_s),
            "low_rank_images_per_s": self.batch_size / (self.low_rank.median * ms_to_s),
            **({"forms": self.forms} if self.forms is not None else {}),
            **self._int8_dict(),
        }


@dataclass(frozen=True)
class BenchResult:
    """Everything one bench run measured, with the setting it ran under."""

    model: str
    input_size: tuple[int, int, int]
    device: dict[str, Any]
    macs: dict[str, int]
    params: dict[str, int]
    options: BenchOptions
    rows: list[BenchRow] = field(default_factory=list)
    source: str | None = None

    @property
    def mac_ratio(self) -> float:
        return self.macs["dense"] / self.macs["low_rank"]

    def to_dict(self) -> dict[str, Any]:
        o = self.options
        first = self.rows[0] if self.rows else None
        return {
            "format": FORMAT_ID,
            "version": VERSION,
            "source": self.source,
            "runtime": o.runtime,
            "threads": self.device.get("threads"),
            "batch_size": first.batch_size if first else None,
            "dense_ms": first.dense.median if first else None,
            "lowrank_ms": first.low_rank.median if first else None,
            "speedup": first.speedup if first else None,
            "model": self.model,
            "input_size": list(self.input_size),
            "device": self.device,
            "settings": {
                "repeats": o.repeats,
                "warmup": o.warmup,
                "min_sample_ms": o.min_sample_ms,
                "dtype": o.dtype,
                "channels_last": o.channels_last,
                "compile": o.compile,
                "cuda_graph": o.cuda_graph,
                "interleaved": True,
                "int8": o.int8,
                "unit": "ms per batch",
            },
            "macs": dict(self.macs),
            "params": dict(self.params),
            "mac_ratio": self.mac_ratio,
            "results": [row.to_dict() for row in self.rows],
        }


@contextmanager
def _cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """Let cuDNN pick its fastest algorithms while timing on CUDA (restored afterwards)."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" or previous
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _export(model: nn.Module, config: RankConfig, options: BenchOptions, device: torch.device) -> nn.Module:
    return export_for_inference(
        model.to(device),
        channels_last=options.channels_last,
        compile=options.compile,
        cuda_graph=options.cuda_graph,
        input_size=config.input_size,
        dtype=resolve_dtype(options.dtype),
    )


def _input(batch_size: int, config: RankConfig, options: BenchOptions, device: torch.device) -> torch.Tensor:
    x = torch.randn(batch_size, *config.input_size, device=device, dtype=resolve_dtype(options.dtype))
    ort = options.runtime == "onnxruntime"
    return x.contiguous(memory_format=torch.channels_last) if options.channels_last and not ort else x


def _time_all(
    models: list[tuple[nn.Module, str]],
    x: torch.Tensor,
    options: BenchOptions,
    device: torch.device,
    threads: int,
) -> list[Spread]:
    """Interleaved per-batch milliseconds of each ``(model, precision)`` on ``x`` in the options'
    runtime."""
    calls = [runner(model, x, options.runtime, threads, precision) for model, precision in models]
    with torch.inference_mode():
        samples = time_interleaved(
            calls,
            device,
            repeats=options.repeats,
            warmup=options.warmup,
            min_sample_ms=options.min_sample_ms,
        )
    return [summarize(s) for s in samples]


def _ort_forms(
    low: nn.Module, x: torch.Tensor, options: BenchOptions, threads: int, precision: str
) -> tuple[nn.Module, dict[str, Any]]:
    """``low`` with each low-rank layer in its fastest ONNX Runtime form in ``precision``."""
    from .onnx_export import fastest_form

    model, report = fastest_form(
        low,
        x,
        threads=threads,
        precision=precision,
        repeats=options.repeats,
        warmup=options.warmup,
        min_sample_ms=min(options.min_sample_ms, 2.0),
    )
    return model, asdict(report)


def _bench_row(
    dense: nn.Module,
    low: nn.Module,
    x: torch.Tensor,
    options: BenchOptions,
    device: torch.device,
    threads: int,
    mac_ratio: float,
) -> BenchRow:
    """One batch size: dense and low-rank (and with ``int8`` both quantized), interleaved."""
    if options.runtime != "onnxruntime":
        d, lr = _time_all([(dense, "fp32"), (low, "fp32")], x, options, device, threads)
        return BenchRow(int(x.shape[0]), d, lr, mac_ratio)
    low_fp32, forms = _ort_forms(low, x, options, threads, "fp32")
    if not options.int8:
        d, lr = _time_all([(dense, "fp32"), (low_fp32, "fp32")], x, options, device, threads)
        return BenchRow(int(x.shape[0]), d, lr, mac_ratio, forms)
    low_int8, int8_forms = _ort_forms(low, x, options, threads, "int8")
    models = [(dense, "fp32"), (low_fp32, "fp32"), (dense, "int8"), (low_int8, "int8")]
    d, lr, d8, lr8 = _time_all(models, x, options, device, threads)
    return BenchRow(int(x.shape[0]), d, lr, mac_ratio, forms, d8, lr8, int8_forms)


def bench_config(
    config: RankConfig,
    options: BenchOptions | None = None,
    *,
    model: nn.Module | None = None,
    source: str | None = None,
) -> BenchResult:
    """Time ``config``'s low-rank model (``model`` if given, e.g. trained weights; else freshly built)
    against the dense model of the same name, interleaved, at each batch size."""
    from .models import create_model

    options = options or BenchOptions()
    options.check()
    device = resolve_device(options.device)
    warn_if_busy(device)
    sizes = tuple(options.batch_sizes or default_batch_sizes(device))
    threads = options.threads if device.type == "cpu" else None
    with num_threads(threads) as used_threads, _cudnn_benchmark(device):
        cost = config.compute_cost()
        low = model if model is not None else config.build(seed=0)
        dense = create_model(config.model.name, num_classes=config.model.num_classes, seed=0)
        params = {"dense": count_params(dense), "low_rank": count_params(low)}
        mac_ratio = cost.dense_macs / cost.macs
        if options.runtime == "onnxruntime":
            options = replace(options, channels_last=False)
        dense_x, low_x = _export(dense, config, options, device), _export(low, config, options, device)
        rows = [
            _bench_row(
                dense_x, low_x, _input(b, config, options, device), options, device, used_threads, mac_ratio
            )
            for b in sizes
        ]
    info = {
        "type": device.type,
        "name": device_name(device),
        "threads": used_threads,
        "torch": torch.__version__,
        "load_average": load_average(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    return BenchResult(
        config.model.name,
        config.input_size,
        info,
        {"dense": cost.dense_macs, "low_rank": cost.macs},
        params,
        options,
        rows,
        source,
    )


def save_bench(result: BenchResult, path: str | Path) -> Path:
    """Write ``result`` as JSON atomically."""
    return atomic_write_json(path, result.to_dict())

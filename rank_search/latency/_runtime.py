"""Runtimes a latency is measured in: PyTorch eager (``torch``) or ONNX Runtime (``onnxruntime``).

A model or layer is always first exported for inference (BatchNorm folded, SVD scales merged);
``torch`` then runs it eagerly, ``onnxruntime`` converts it to ONNX (fixed input shape) and runs it
in an ``InferenceSession`` on the CPU execution provider with ``ORT_ENABLE_ALL`` graph
optimizations, ``threads`` intra-op threads and one inter-op thread. ONNX Runtime is CPU only here.

The ONNX packages are optional (``pip install 'rank-search[onnx]'``): :func:`require` names the
one that is missing in a :class:`~rank_search.errors.RankSearchError`.
"""

from __future__ import annotations

import importlib
import io
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import RankSearchError

__all__ = [
    "RUNTIMES",
    "check_runtime",
    "onnx_bytes",
    "ort_session",
    "require",
    "run_session",
    "runner",
    "runtime_version",
]

RUNTIMES = ("torch", "onnxruntime")
EXTRA = "pip install 'rank-search[onnx]'"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def require(*packages: str) -> None:
    """Raise a one-line :class:`RankSearchError` naming the first of ``packages`` not installed."""
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError:
            raise RankSearchError(f"package {package!r} is not installed; install it with {EXTRA}") from None


def check_runtime(runtime: str, device: torch.device | str = "cpu") -> None:
    """Raise unless ``runtime`` is known, installed and usable on ``device``."""
    if runtime not in RUNTIMES:
        raise RankSearchError(f"unknown runtime {runtime!r}; expected one of {list(RUNTIMES)}")
    if runtime == "onnxruntime":
        if torch.device(device).type != "cpu":
            raise RankSearchError("runtime onnxruntime is timed on the CPU only; use --device cpu")
        require("onnxruntime", "onnx")


def runtime_version(runtime: str) -> str:
    """``torch2.14.1`` / ``ort1.32.0``: part of a latency table's key."""
    if runtime == "onnxruntime":
        import onnxruntime

        return f"ort{onnxruntime.__version__}"
    return f"torch{torch.__version__}"


def onnx_bytes(
    module: nn.Module, example: torch.Tensor, *, dynamic_batch: bool = False, dynamo: bool = False
) -> bytes:
    """``module`` (eval mode) as a serialized ONNX model with input ``input`` and output ``logits``.

    ``dynamo=False`` uses the TorchScript exporter (fast: used for the many small timing
    models); ``dynamo=True`` the torch.export-based one (needs ``onnxscript``; used for shipped
    models). Both emit the same Conv/Gemm nodes for the layers timed here.
    """
    require("onnx")
    module = module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            require("onnxscript")
            shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=shapes,
                verbose=False,
            )
            assert program is not None
            return bytes(program.model_proto.SerializeToString())
        buffer = io.BytesIO()
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=17,
        )
        return buffer.getvalue()


def ort_session(model: bytes | str, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session, ``ORT_ENABLE_ALL``, ``threads`` intra-op threads, sequential."""
    require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def runner(
    module: nn.Module, x: torch.Tensor, runtime: str, threads: int, precision: str = "fp32"
) -> Callable[[], object]:
    """A call running ``module`` on ``x`` in ``runtime`` (time it under ``torch.inference_mode``).

    ``precision="int8"`` (onnxruntime only) runs ``module`` statically quantized
    (:func:`~rank_search.latency._quant.quantize_onnx`), calibrated on ``x`` itself: the ranges
    do not change which kernels ONNX Runtime runs, so the timing holds for any calibration.
    """
    from ._quant import check_precision, quantize_onnx

    check_precision(precision)
    if runtime == "torch":
        if precision != "fp32":
            raise RankSearchError(f"precision {precision} needs runtime onnxruntime")
        return lambda: module(x)
    check_runtime(runtime, x.device)
    if x.dtype != torch.float32:
        raise RankSearchError(f"runtime onnxruntime is timed in float32 only, got {x.dtype}")
    example = x.contiguous()
    data = onnx_bytes(module, example)
    if precision == "int8":
        data = quantize_onnx(data, [example.numpy()])
    session = ort_session(data, threads)
    feed = {session.get_inputs()[0].name: example.numpy()}
    return lambda: session.run(None, feed)


def run_session(session: Any, x: torch.Tensor) -> torch.Tensor:
    """ONNX Runtime's output of ``session`` on ``x`` (CPU float32), as a tensor. A model with a
    fixed batch runs ``x`` in chunks of that batch (the last one padded with zeros, cut off again)."""
    x = x.detach().float().cpu().contiguous()
    name, dims = session.get_inputs()[0].name, session.get_inputs()[0].shape
    batch = dims[0] if dims and isinstance(dims[0], int) else len(x)
    outputs = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        short = batch - len(chunk)
        if short:
            chunk = torch.cat([chunk, chunk.new_zeros(short, *chunk.shape[1:])])
        out = torch.from_numpy(session.run(None, {name: chunk.numpy()})[0])
        outputs.append(out[: len(out) - short])
    return torch.cat(outputs)

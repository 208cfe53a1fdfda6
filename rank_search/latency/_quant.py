"""INT8 for ONNX Runtime: static quantization of an ONNX model (QDQ, per-channel weights).

:func:`quantize_onnx` takes a float32 ONNX model (bytes) and calibration inputs and returns the
quantized model: ``onnxruntime.quantization.quant_pre_process`` (ONNX Runtime's basic graph
optimizations: constant folding, Identity removal, so every conv bias is an initializer), then
``quantize_static`` in the QDQ format (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime
fuses into integer kernels when it builds the session), int8 weights per output channel, uint8
activations (the u8s8 kernels of x86), MinMax ranges over the calibration inputs. Layers named in
``keep_fp32`` (module names: every node whose weight initializer is ``<name>.<...>``) stay
float32. The precision is part of every timing and table key: what is fastest in INT8 can differ
from float32.

``onnxruntime.quantization`` ships with ``onnxruntime`` (needs ``onnx``); nothing else is needed.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RankSearchError

__all__ = ["PRECISIONS", "QuantSettings", "check_precision", "layer_nodes", "quantize_onnx"]

PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class QuantSettings:
    """How ONNX Runtime quantizes (recorded in an exported model's metadata)."""

    format: str = "QDQ"
    per_channel: bool = True
    weight_type: str = "int8"
    activation_type: str = "uint8"
    calibrate_method: str = "MinMax"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a :class:`RankSearchError`."""
    if precision not in PRECISIONS:
        raise RankSearchError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}")
    return precision


def layer_nodes(model: Any, layers: Iterable[str]) -> dict[str, list[str]]:
    """Per module name in ``layers``, the names of the ONNX nodes (of the ``onnx.ModelProto``
    ``model``) whose weight initializer belongs to it (``<name>.weight``, ``<name>.first.weight``...)."""
    inits = {init.name for init in model.graph.initializer}
    found: dict[str, list[str]] = {name: [] for name in layers}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight = node.input[1]
        if weight not in inits:
            continue
        for name in found:
            if weight.startswith(name + "."):
                found[name].append(node.name)
    return found


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over arrays, in chunks of ``batch``."""

    def __init__(self, input_name: str, arrays: Iterable[np.ndarray], batch: int | None) -> None:
        self._chunks = self._split(arrays, batch)
        self._input = input_name

    @staticmethod
    def _split(arrays: Iterable[np.ndarray], batch: int | None) -> Iterator[np.ndarray]:
        for array in arrays:
            step = batch or len(array)
            for start in range(0, len(array), step):
                chunk = np.ascontiguousarray(array[start : start + step], dtype=np.float32)
                if batch is None or len(chunk) == batch:
                    yield chunk

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self._chunks, None)
        return None if chunk is None else {self._input: chunk}

    def rewind(self) -> None:  # the calibrator reads once
        pass


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantization tools log advice at WARNING on the root logger: hush it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _fixed_batch(model: Any) -> int | None:
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") else None


def quantize_onnx(
    model: bytes,
    calibration: Iterable[np.ndarray],
    *,
    keep_fp32: Sequence[str] = (),
    settings: QuantSettings | None = None,
) -> bytes:
    """``model`` (float32 ONNX bytes) statically quantized (see the module docstring).

    ``calibration``: float32 input arrays ``(N, C, H, W)``, as the model sees them (normalized);
    a model with a fixed batch reads them in chunks of that batch. ``keep_fp32``: module names
    whose nodes stay float32.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    s = settings or QuantSettings()
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    with tempfile.TemporaryDirectory(prefix="rank-search-quant-") as tmp, _quiet():
        raw, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        raw.write_bytes(model)  # a private temporary folder: nobody reads it half-written
        quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
        proto = onnx.load(str(pre))
        nodes = layer_nodes(proto, keep_fp32)
        missing = [name for name, found in nodes.items() if not found]
        if missing:
            raise RankSearchError(f"keep_fp32: no ONNX nodes for layer(s) {missing}")
        reader = _Reader(proto.graph.input[0].name, calibration, _fixed_batch(proto))
        quantize_static(
            str(pre),
            str(out),
            reader,  # type: ignore[arg-type]
            quant_format=QuantFormat.QDQ if s.format == "QDQ" else QuantFormat.QOperator,
            per_channel=s.per_channel,
            weight_type=types[s.weight_type],
            activation_type=types[s.activation_type],
            calibrate_method=getattr(CalibrationMethod, s.calibrate_method),
            nodes_to_exclude=[n for found in nodes.values() for n in found],
        )
        return out.read_bytes()

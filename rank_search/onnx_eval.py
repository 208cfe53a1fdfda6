"""Test accuracy of a shipped ONNX file (float32 or INT8), so accuracy after export is measured.

``rank-search evaluate MODEL.onnx --data SPEC``: the file runs in ONNX Runtime (CPU, the
settings of every timing here) on a split of ``SPEC`` (default ``test``), normalized with the
``input_normalization`` the export recorded in the file's metadata (``--mean/--std`` override it;
with neither, the dataset's default), at the file's input size. A fixed-batch file runs in chunks
of its batch. Top-1 accuracy over every image of the split is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import RankSearchError

__all__ = ["EvalResult", "evaluate_onnx"]


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate_onnx` measured."""

    path: str
    data: str
    split: str
    images: int
    correct: int
    precision: str
    normalization: dict[str, list[float]]
    normalization_source: str  # "metadata", "given" or "dataset default"

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": self.accuracy}


def _file_metadata(path: Path) -> dict[str, Any]:
    import onnx

    from .onnx_export import METADATA_KEY

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common base class
        raise RankSearchError(f"{path}: not a readable ONNX model ({exc})") from None
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            import json

            data = json.loads(entry.value)
            return data if isinstance(data, dict) else {}
    return {}


def evaluate_onnx(
    path: str | Path,
    data: str,
    *,
    split: str = "test",
    batch_size: int = 256,
    threads: int = 1,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
) -> EvalResult:
    """Top-1 accuracy of the ONNX file ``path`` on ``split`` of the data spec ``data``."""
    from .data import load_data_at
    from .latency._runtime import check_runtime, ort_session, run_session

    check_runtime("onnxruntime")
    model = Path(path)
    if not model.is_file():
        raise RankSearchError(f"{model}: not found (expected an .onnx file)")
    meta = _file_metadata(model)
    source = "given"
    if normalization is None and "input_normalization" in meta:
        norm = meta["input_normalization"]
        normalization, source = (norm["mean"], norm["std"]), "metadata"
    elif normalization is None:
        source = "dataset default"
    session = ort_session(str(model), threads)
    dataset = load_data_at(data, session.get_inputs()[0].shape[1:], normalization)
    correct = seen = 0
    for x, y in dataset.batches(split, batch_size=batch_size):
        logits = run_session(session, x)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return EvalResult(
        str(model),
        data,
        split,
        seen,
        correct,
        str(meta.get("precision", "fp32")),
        {"mean": list(dataset.mean), "std": list(dataset.std)},
        source,
    )

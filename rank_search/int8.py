"""INT8 for a shipped model: calibration images, per-layer quantization error, fallback, agreement.

``rank-search export-model ... --int8 --calibration-data SPEC`` (:func:`rank_search.onnx_export.export_model`)
uses these steps after it has chosen each low-rank layer's form in INT8:

1. :func:`calibration_images`: ``count`` training images of ``SPEC`` (the ``train`` split only,
   never val or test), normalized as the model was trained, in a seeded order;
2. :func:`layer_errors`: each low-rank layer (in its shipped form) alone, quantized in ONNX
   Runtime with its own in-network inputs as calibration: the relative error
   ``||int8(x) - fp32(x)|| / ||fp32(x)||`` of its output on those inputs;
3. layers above :attr:`Int8Options.max_layer_error` stay float32 (their nodes are excluded from
   quantization), the rest of the model is quantized (:func:`~rank_search.latency._quant.quantize_onnx`);
4. :func:`top1_agreement`: the INT8 model in ONNX Runtime against the float32 PyTorch model on
   the calibration batch. An elementwise tolerance means nothing after INT8; the share of
   images whose top-1 class agrees does. Below :attr:`Int8Options.min_agreement` nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import RankSearchError
from .latency._quant import QuantSettings

__all__ = ["Int8Options", "calibration_images", "layer_errors", "run_normalization", "top1_agreement"]


@dataclass(frozen=True)
class Int8Options:
    """How an export is quantized and checked.

    ``calibration``: the data spec the calibration images come from (``train`` split);
    ``images``: how many; ``max_layer_error``: a low-rank layer whose own relative output error
    in INT8 is above this stays float32; ``min_agreement``: the least top-1 agreement with the
    float32 model (on the calibration batch) for the file to be written.
    """

    calibration: str
    images: int = 512
    max_layer_error: float = 0.1
    min_agreement: float = 0.9
    seed: int = 0
    settings: QuantSettings = field(default_factory=QuantSettings)

    def check(self) -> None:
        if self.images < 1:
            raise RankSearchError(f"calibration images must be positive, got {self.images}")
        if not self.max_layer_error > 0:
            raise RankSearchError(f"max layer error must be positive, got {self.max_layer_error}")
        if not 0 <= self.min_agreement <= 1:
            raise RankSearchError(f"min agreement must be in [0, 1], got {self.min_agreement}")


def run_normalization(source: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The input normalization a ``rank-search train`` run folder recorded in ``metrics.json``
    (``None`` for a rank-config file or a run without the record)."""
    import json

    path = Path(source) / "metrics.json"
    if not path.is_file():
        return None
    try:
        norm = json.loads(path.read_text(encoding="utf-8")).get("normalization")
        if norm is None:
            return None
        return tuple(map(float, norm["mean"])), tuple(map(float, norm["std"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RankSearchError(f"{path}: unreadable normalization record ({exc})") from None


def calibration_images(
    spec: str,
    count: int,
    normalization: tuple[Sequence[float], Sequence[float]] | None,
    input_size: Sequence[int],
    seed: int = 0,
) -> torch.Tensor:
    """``count`` images of the ``train`` split of ``spec`` (fewer if it has fewer), normalized with
    ``normalization`` (default: the dataset's), at ``input_size``, in a seeded order."""
    from .data import DataOptions, load_data
    from .trained import calibration_batches

    mean, std = normalization if normalization is not None else (None, None)
    options = DataOptions(
        mean=None if mean is None else tuple(mean),
        std=None if std is None else tuple(std),
        image_size=None,
    )
    data = load_data(spec, options)
    if tuple(data.input_size) != tuple(input_size):
        data = load_data(
            spec, DataOptions(mean=options.mean, std=options.std, image_size=int(input_size[-1]))
        )
    if tuple(data.input_size) != tuple(input_size):
        raise RankSearchError(f"{spec}: images are {data.input_size}, the model takes {tuple(input_size)}")
    batches = list(calibration_batches(data, count, min(count, 256), seed))
    if not batches:
        raise RankSearchError(f"{spec}: the train split is empty; no calibration images")
    return torch.cat(batches).float().cpu().contiguous()


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm().clamp_min(1e-12))


def layer_errors(
    model: nn.Module, names: Sequence[str], images: torch.Tensor, settings: QuantSettings | None = None
) -> dict[str, float]:
    """Per named layer of ``model`` (an inference export, forms applied): the relative error of its
    output when that layer alone is quantized, on the inputs it receives from ``images``."""
    from .latency._forms import layer_inputs
    from .latency._quant import quantize_onnx
    from .latency._runtime import onnx_bytes, ort_session, run_session

    inputs = layer_inputs(model, list(names), images)
    errors = {}
    for name in names:
        layer, x = model.get_submodule(name).eval(), inputs[name]
        data = quantize_onnx(onnx_bytes(layer, x), [x.numpy()], settings=settings)
        with torch.no_grad():
            want = layer(x)
        errors[name] = _relative_error(run_session(ort_session(data, 1), x), want)
    return errors


def top1_agreement(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """The share of rows whose largest logit is in the same column in both."""
    if logits.shape != reference.shape or logits.dim() != 2 or len(logits) == 0:
        raise ValueError(
            f"need two equal (N, classes) logit tables, got {tuple(logits.shape)} "
            f"and {tuple(reference.shape)}"
        )
    return float((logits.argmax(1) == reference.argmax(1)).float().mean())


def quantization_record(
    options: Int8Options, images: int, errors: dict[str, float], keep_fp32: list[str]
) -> dict[str, Any]:
    """The ``quantization`` entry of an INT8 export's metadata."""
    return {
        **options.settings.to_dict(),
        "calibration_data": options.calibration,
        "calibration_split": "train",
        "calibration_images": images,
        "max_layer_error": options.max_layer_error,
        "layer_errors": errors,
        "fp32_layers": keep_fp32,
    }

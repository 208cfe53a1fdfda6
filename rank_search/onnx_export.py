"""Export a rank config or a trained run to ONNX, each low-rank layer in its fastest equivalent form.

``rank-search export-model RUN_DIR_OR_CONFIG -o model.onnx``:

1. the model: a ``rank-search train`` run folder gives its trained weights (``config.json`` +
   ``model.pt``), a rank-config JSON random weights (seed 0);
2. :func:`~rank_search.inference.export_for_inference`: BatchNorm folded, SVD scales merged;
3. forms (``forms="auto"``): every low-rank layer is timed in ONNX Runtime in each equivalent form
   (factorized, one side merged, merged to dense; :mod:`rank_search.latency._forms`) at its
   in-network input shape and batch, and the fastest is kept. Then the whole model is timed
   with those forms, with every layer merged to dense, and with every layer factorized
   (interleaved), and the fastest of the three is exported, unless it beats all-dense by less
   than the timing noise (:func:`choose_model`): the export is never slower than its dense
   form beyond timing noise. ``forms="factorized"`` / ``"dense"`` skip the timing;
4. ``torch.onnx.export`` (torch.export-based exporter), input ``input`` (N, C, H, W),
   output ``logits``, a fixed batch or a dynamic batch axis; the choice per layer, its timings and
   the source are stored as JSON in the model's ``metadata_props`` (key ``rank_search``);
5. a check: ONNX Runtime's output against the PyTorch model's (eval mode) on a random batch;
   the largest absolute difference is reported. Only a model that passes is written (atomically);
   on a mismatch the output path is left as it was.

Needs the optional packages onnx, onnxscript and onnxruntime (``pip install 'rank-search[onnx]'``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._io import atomic_write
from ._version import __version__
from .errors import RankSearchError

if TYPE_CHECKING:
    from .int8 import Int8Options
    from .latency._timing import Spread

__all__ = [
    "FORM_POLICIES",
    "ExportResult",
    "FormReport",
    "export_model",
    "fastest_form",
    "load_source",
    "read_metadata",
]

FORM_POLICIES = ("auto", "factorized", "dense")
METADATA_KEY = "rank_search"
CHECK_ATOL = 1e-4
CHECK_RTOL = 1e-4


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured."""

    path: Path
    model: str
    source: str
    kind: str  # "run" (trained weights) or "config" (random weights)
    input_size: tuple[int, int, int]
    batch_size: int | None  # None: dynamic batch axis
    forms: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_ms: dict[str, float] = field(default_factory=dict)  # whole-model medians (auto forms)
    chosen: str = ""  # "per-layer", "all dense" or "all factorized"
    max_abs_diff: float = float("nan")
    max_abs_output: float = float("nan")
    check_ok: bool = False
    written: bool = False  # False when the check failed: ``path`` was left as it was
    precision: str = "fp32"
    normalization: dict[str, list[float]] | None = None  # the input normalization, when known
    quantization: dict[str, Any] | None = None  # int8: settings, calibration, per-layer errors
    agreement: float = float("nan")  # int8: top-1 agreement with the fp32 model (calibration batch)
    check_images: int = 0

    def metadata(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"precision": self.precision}
        if self.normalization is not None:
            extra["input_normalization"] = self.normalization
        if self.quantization is not None:
            extra["quantization"] = {**self.quantization, "top1_agreement": self.agreement}
        return {
            **extra,
            "rank_search_version": __version__,
            "source": self.source,
            "kind": self.kind,
            "model": self.model,
            "input_size": list(self.input_size),
            "batch_size": self.batch_size,
            "chosen": self.chosen,
            "model_ms": self.model_ms,
            "forms": self.forms,
        }


def load_source(path: str | Path) -> tuple[nn.Module, Any, str]:
    """``(model, rank config, kind)`` from a run folder (trained) or a rank-config JSON (seed 0)."""
    from .config import load_rank_config
    from .runs import load_run_model

    source = Path(path)
    if source.is_dir():
        model, _ = load_run_model(source)
        return model, load_rank_config(source / "config.json"), "run"
    if not source.is_file():
        raise RankSearchError(f"{source}: not found (expected a run folder or a rank-config .json)")
    config = load_rank_config(source)
    return config.build(seed=0), config, "config"


def _uniform(exported: nn.Module, form: str) -> nn.Module:
    from .inference import apply_forms, exported_low_rank_formats

    return apply_forms(copy.deepcopy(exported), dict.fromkeys(exported_low_rank_formats(exported), form))


@dataclass
class FormReport:
    """How :func:`fastest_form` chose: per layer its form and timings, and the whole-model timings."""

    chosen: str  # "per-layer", "all dense" or "all factorized"
    forms: dict[str, dict[str, Any]]
    model_ms: dict[str, float]


def fastest_form(
    exported: nn.Module, example: torch.Tensor, *, threads: int = 1, precision: str = "fp32", **timing: Any
) -> tuple[nn.Module, FormReport]:
    """``exported`` (an inference export, see :func:`~rank_search.inference.export_for_inference`)
    with each low-rank layer in its fastest form in ONNX Runtime on ``example``'s shape.

    Per-layer fastest forms are chosen (:func:`~rank_search.latency._forms.choose_forms`), then
    that model, all layers merged to dense and all factorized are timed whole, interleaved, and
    the fastest is returned (ties go to the per-layer choice). ``exported`` is not modified.
    ``precision="int8"``: every timing runs the statically quantized model (the choice is redone
    for INT8).
    """
    from .inference import apply_forms
    from .latency._forms import choose_forms

    choices = choose_forms(
        exported, example, runtime="onnxruntime", threads=threads, precision=precision, **timing
    )
    forms = {name: c.to_dict() for name, c in choices.items()}
    if not choices:
        return exported, FormReport("per-layer", forms, {})
    candidates = {
        "per-layer": apply_forms(copy.deepcopy(exported), {n: c.form for n, c in choices.items()}),
        "all dense": _uniform(exported, "dense"),
        "all factorized": exported,
    }
    spreads = _time_models(candidates, example, threads, timing, precision)
    model_ms = {name: spread.median for name, spread in spreads.items()}
    chosen = choose_model(spreads)
    if chosen != "per-layer":
        form = "dense" if chosen == "all dense" else "factorized"
        for record in forms.values():
            record["form"] = form
    return candidates[chosen], FormReport(chosen, forms, model_ms)


def choose_model(spreads: Mapping[str, Spread]) -> str:
    """The candidate to ship: the fastest median, unless it beats ``all dense`` by less than the
    timing noise (half the sum of both interquartile ranges), then ``all dense``: never slower
    than dense beyond noise. Ties go to the earlier candidate."""
    fastest = min(spreads, key=lambda k: spreads[k].median)
    dense = spreads.get("all dense")
    if dense is None or fastest == "all dense":
        return fastest
    gain = dense.median - spreads[fastest].median
    return fastest if gain > (dense.iqr + spreads[fastest].iqr) / 2 else "all dense"


def _time_models(
    models: dict[str, nn.Module],
    example: torch.Tensor,
    threads: int,
    timing: Mapping[str, Any],
    precision: str = "fp32",
) -> dict[str, Spread]:
    """Per-call ms (median and spread) of each model in ONNX Runtime in ``precision``, interleaved."""
    from .latency._runtime import runner
    from .latency._timing import summarize, time_interleaved

    calls = [runner(m, example, "onnxruntime", threads, precision) for m in models.values()]
    with torch.inference_mode():
        samples = time_interleaved(
            calls,
            example.device,
            repeats=max(5, int(timing.get("repeats", 7))),
            warmup=int(timing.get("warmup", 3)),
            min_sample_ms=max(10.0, float(timing.get("min_sample_ms", 2.0))),
        )
    return {name: summarize(s) for name, s in zip(models, samples, strict=True)}


def _with_metadata(data: bytes, metadata: dict[str, Any]) -> bytes:
    import onnx

    proto = onnx.load_from_string(data)
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(metadata, sort_keys=True)
    return bytes(proto.SerializeToString())


def export_model(
    source: str | Path,
    output: str | Path,
    *,
    batch_size: int = 1,
    dynamic_batch: bool = False,
    forms: str = "auto",
    threads: int = 1,
    check_batch: int = 2,
    seed: int = 0,
    int8: Int8Options | None = None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    **timing: Any,
) -> ExportResult:
    """Export ``source`` (run folder or rank-config JSON) to the ONNX file ``output``.

    ``batch_size``: the fixed batch of the ONNX input, and the batch the forms are timed at
    (with ``dynamic_batch`` the input's batch axis is dynamic and forms are timed at
    ``batch_size``). ``forms``: ``auto`` (timed, see the module docstring), ``factorized`` or
    ``dense``. ``threads``: ONNX Runtime intra-op threads for timing. ``timing`` goes to
    :func:`rank_search.latency._forms.time_forms`.

    ``int8``: statically quantize (:mod:`rank_search.int8`): forms are chosen by INT8 timings,
    layers that quantize badly stay float32, and the check is the top-1 agreement with the
    float32 model on the calibration images instead of an elementwise tolerance.
    ``normalization``: the input ``(mean, std)``; default: a run folder's ``metrics.json`` record.
    Both are stored in the metadata.
    """
    from .inference import export_for_inference
    from .int8 import run_normalization
    from .latency._device import num_threads
    from .latency._runtime import check_runtime, onnx_bytes, require

    if forms not in FORM_POLICIES:
        raise RankSearchError(f"unknown forms {forms!r}; expected one of {list(FORM_POLICIES)}")
    if isinstance(batch_size, bool) or batch_size < 1 or threads < 1:
        raise RankSearchError(f"batch size and threads must be positive, got {batch_size} and {threads}")
    check_runtime("onnxruntime")
    require("onnxscript")
    if int8 is not None:
        int8.check()
    model, config, kind = load_source(source)
    model = model.cpu().float().eval()
    size = tuple(config.input_size)
    result = ExportResult(
        Path(output), config.model.name, str(source), kind, size, None if dynamic_batch else batch_size
    )
    norm = (
        normalization if normalization is not None else run_normalization(source) if kind == "run" else None
    )
    if norm is not None:
        result.normalization = {"mean": list(map(float, norm[0])), "std": list(map(float, norm[1]))}
    result.precision = "int8" if int8 is not None else "fp32"
    with num_threads(threads):
        exported = export_for_inference(model, channels_last=False, input_size=size)
        example = torch.randn(batch_size, *size, generator=torch.Generator().manual_seed(seed))
        if forms == "auto":
            final, report = fastest_form(
                exported, example, threads=threads, precision=result.precision, **timing
            )
            result.chosen, result.forms, result.model_ms = report.chosen, report.forms, report.model_ms
        else:
            final = _uniform(exported, forms)
            result.chosen = f"all {forms}"
        data = onnx_bytes(final, example, dynamic_batch=dynamic_batch, dynamo=True)
        if int8 is None:
            data = _fp32_check(result, data, model, check_batch if dynamic_batch else batch_size, seed)
        else:
            data = _int8_check(result, data, model, final, config.layers, int8, norm)
    if result.check_ok:  # a model that disagrees with PyTorch never replaces the output file
        data = _with_metadata(data, result.metadata())
        atomic_write(output, lambda handle: handle.write(data))
        result.written = True
    return result


def _fp32_check(result: ExportResult, data: bytes, model: nn.Module, count: int, seed: int) -> bytes:
    """ONNX Runtime against PyTorch on ``count`` random inputs, elementwise (fills ``result``)."""
    from .latency._runtime import ort_session, run_session

    x = torch.randn(count, *result.input_size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        reference = model(x).float()
    got = run_session(ort_session(data, 1), x)
    diff = (got - reference).abs()
    result.max_abs_diff = float(diff.max())
    result.max_abs_output = float(reference.abs().max())
    result.check_ok = bool((diff <= CHECK_ATOL + CHECK_RTOL * reference.abs()).all())
    result.check_images = count
    return data


def _int8_check(
    result: ExportResult,
    data: bytes,
    model: nn.Module,
    final: nn.Module,
    layers: Mapping[str, Any],
    options: Int8Options,
    normalization: tuple[Sequence[float], Sequence[float]] | None,
) -> bytes:
    """Quantize ``data`` (the float32 export of ``final``) with calibration images; layers whose
    own INT8 error is above the limit stay float32; check top-1 agreement (fills ``result``)."""
    from .int8 import calibration_images, layer_errors, quantization_record, top1_agreement
    from .latency._quant import quantize_onnx
    from .latency._runtime import ort_session, run_session

    images = calibration_images(
        options.calibration, options.images, normalization, result.input_size, options.seed
    )
    names = [name for name, spec in layers.items() if spec.format != "dense"]
    errors = layer_errors(final, names, images, options.settings)
    keep = [name for name in names if errors[name] > options.max_layer_error]
    quantized = quantize_onnx(data, [images.numpy()], keep_fp32=keep, settings=options.settings)
    with torch.no_grad():
        reference = model(images).float()
    got = run_session(ort_session(quantized, 1), images)
    result.agreement = top1_agreement(got, reference)
    result.max_abs_diff = float((got - reference).abs().max())
    result.max_abs_output = float(reference.abs().max())
    result.check_ok = result.agreement >= options.min_agreement
    result.check_images = len(images)
    result.quantization = quantization_record(options, len(images), errors, keep)
    return quantized


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``rank_search`` metadata of an ONNX file written by :func:`export_model`."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            data = json.loads(entry.value)
            assert isinstance(data, dict)
            return data
    raise RankSearchError(f"{path}: no {METADATA_KEY!r} metadata (not written by rank-search export-model)")

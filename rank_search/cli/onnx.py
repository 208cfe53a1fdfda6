"""``rank-search export-model``: a run or a rank config as an ONNX model for ONNX Runtime."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from ..errors import RankSearchError


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "export-model",
        help="export a trained run folder or a rank config to ONNX (fastest form per layer)",
        description="Export trained weights (run folder) or random weights (rank-config JSON) to ONNX: "
        "BatchNorm folded, SVD scales merged, each low-rank layer in its fastest equivalent form in "
        "ONNX Runtime; input 'input', output 'logits'; checks ONNX Runtime against PyTorch.",
    )
    p.add_argument("source", metavar="RUN_DIR_OR_CONFIG", help="run folder or rank-config .json")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write (atomically)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch-size", type=int, default=None, help="fixed input batch (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="a dynamic batch axis")
    p.add_argument(
        "--forms",
        default="auto",
        choices=["auto", "factorized", "dense"],
        help="auto: time each layer's equivalent forms in ONNX Runtime and keep the fastest",
    )
    p.add_argument(
        "--form-batch", type=int, help="with --dynamic-batch: the batch the forms are timed at (default 1)"
    )
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for timing")
    p.add_argument("--repeats", type=int, default=7, help="timed samples per form (median)")
    q = p.add_argument_group("INT8 (ONNX Runtime static quantization, QDQ, per-channel weights)")
    q.add_argument("--int8", action="store_true", help="quantize; forms are chosen by INT8 timings")
    q.add_argument("--calibration-data", metavar="SPEC", help="data spec whose train images calibrate")
    q.add_argument("--calibration-images", type=int, default=512, help="calibration images (default 512)")
    q.add_argument(
        "--max-layer-error",
        type=float,
        default=0.1,
        help="a low-rank layer whose own relative INT8 output error is above this stays float32",
    )
    q.add_argument(
        "--min-agreement",
        type=float,
        default=0.9,
        help="least top-1 agreement with the float32 model on the calibration images to write the file",
    )
    _normalization_args(p)
    p.set_defaults(run=run_export_model)

    p = sub.add_parser(
        "evaluate",
        help="test accuracy of an exported ONNX model (float32 or INT8) in ONNX Runtime",
        description="Top-1 accuracy of an ONNX file written by export-model on a split of a dataset, "
        "normalized as its metadata records (--mean/--std override).",
    )
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--data", required=True, metavar="SPEC", help="data spec, e.g. imagefolder:PATH")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--batch-size", type=int, default=256, help="images per run (dynamic-batch files)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--json", action="store_true", help="print JSON")
    _normalization_args(p)
    p.set_defaults(run=run_evaluate)


def _normalization_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mean", type=float, nargs="+", help="input normalization mean per channel ([0, 1] pixels)"
    )
    p.add_argument("--std", type=float, nargs="+", help="input normalization std per channel")


def _normalization(args: argparse.Namespace) -> tuple[list[float], list[float]] | None:
    if (args.mean is None) != (args.std is None):
        raise RankSearchError("--mean and --std go together")
    if args.mean is None:
        return None
    if len(args.mean) != len(args.std) or min(args.std) <= 0:
        raise RankSearchError("--mean and --std need one value per channel and std > 0")
    return list(args.mean), list(args.std)


def _int8_options(args: argparse.Namespace) -> Any:
    from ..int8 import Int8Options

    if not args.int8:
        if args.calibration_data is not None:
            raise RankSearchError("--calibration-data needs --int8")
        return None
    if args.calibration_data is None:
        raise RankSearchError("--int8 needs --calibration-data SPEC (its train images calibrate)")
    options = Int8Options(
        args.calibration_data,
        images=args.calibration_images,
        max_layer_error=args.max_layer_error,
        min_agreement=args.min_agreement,
    )
    options.check()
    return options


def run_export_model(args: argparse.Namespace) -> int:
    from ..latency._device import load_check
    from ..latency._runtime import check_runtime
    from ..onnx_export import export_model

    batch = args.batch_size if args.batch_size is not None else 1
    if args.form_batch is not None and not args.dynamic_batch:
        raise RankSearchError(
            "--form-batch needs --dynamic-batch (a fixed batch times the forms at --batch-size)"
        )
    form_batch = args.form_batch if args.form_batch is not None else batch
    if batch < 1 or form_batch < 1 or args.threads < 1 or args.repeats < 1:
        raise RankSearchError("--batch-size, --form-batch, --threads and --repeats must be positive")
    check_runtime("onnxruntime")  # a missing package or file fails before any timing or load warning
    if not Path(args.source).exists():
        raise RankSearchError(f"{args.source}: not found (expected a run folder or a rank-config .json)")
    int8, normalization = _int8_options(args), _normalization(args)
    with load_check("cpu") if args.forms == "auto" else contextlib.nullcontext():
        result = export_model(
            args.source,
            args.output,
            batch_size=form_batch if args.dynamic_batch else batch,
            dynamic_batch=args.dynamic_batch,
            forms=args.forms,
            threads=args.threads,
            int8=int8,
            normalization=normalization,
            repeats=args.repeats,
        )
    n = "N" if result.batch_size is None else result.batch_size
    shape = ", ".join(map(str, (n, *result.input_size)))
    print(
        f"{'wrote' if result.written else 'NOT written (check failed)'} {result.path}: {result.model} "
        f"from {result.kind} {result.source}, input 'input' ({shape}), output 'logits'"
    )
    if result.model_ms:
        times = ", ".join(f"{k} {v:.3f} ms" for k, v in result.model_ms.items())
        counts: dict[str, int] = {}
        for record in result.forms.values():
            counts[record["form"]] = counts.get(record["form"], 0) + 1
        print(f"forms: {result.chosen} ({times}, ONNX Runtime, {args.threads} thread(s), batch {form_batch})")
        print("layers per form: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if result.quantization is not None:
        _print_int8(result, args.min_agreement)
        return 0 if result.check_ok else 1
    verdict = "ok" if result.check_ok else "MISMATCH"
    print(
        f"check: ONNX Runtime vs PyTorch, largest absolute difference {result.max_abs_diff:.3g} "
        f"(outputs up to {result.max_abs_output:.3g}): {verdict}"
    )
    return 0 if result.check_ok else 1


def _print_int8(result: Any, min_agreement: float) -> None:
    q = result.quantization
    errors = q["layer_errors"]
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    print(
        f"int8: {q['format']}, per-channel {q['weight_type']} weights, {q['activation_type']} "
        f"activations, {q['calibrate_method']} ranges from {q['calibration_images']} train images "
        f"of {q['calibration_data']}"
    )
    if errors:
        text = ", ".join(f"{name} {err:.3f}" for name, err in worst)
        print(
            f"per-layer INT8 error (relative, own): median {_median(list(errors.values())):.3f}, worst {text}"
        )
    kept = q["fp32_layers"]
    print(f"kept float32 (error > {q['max_layer_error']}): {', '.join(kept) if kept else 'none'}")
    verdict = "ok" if result.check_ok else f"BELOW {min_agreement:.2f}"
    print(
        f"check: INT8 in ONNX Runtime vs float32 PyTorch, top-1 agreement {100 * result.agreement:.1f}% "
        f"on {result.check_images} calibration images: {verdict}"
    )


def _median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def run_evaluate(args: argparse.Namespace) -> int:
    import json

    from ..onnx_eval import evaluate_onnx

    if args.batch_size < 1 or args.threads < 1:
        raise RankSearchError("--batch-size and --threads must be positive")
    result = evaluate_onnx(
        args.model,
        args.data,
        split=args.split,
        batch_size=args.batch_size,
        threads=args.threads,
        normalization=_normalization(args),
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(
        f"{result.path} ({result.precision}) on {result.data} {result.split}: "
        f"top-1 {100 * result.accuracy:.2f}% ({result.correct}/{result.images}); "
        f"normalization from {result.normalization_source}"
    )
    return 0

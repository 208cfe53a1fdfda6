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
    p.set_defaults(run=run_export_model)


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
    with load_check("cpu") if args.forms == "auto" else contextlib.nullcontext():
        result = export_model(
            args.source,
            args.output,
            batch_size=form_batch if args.dynamic_batch else batch,
            dynamic_batch=args.dynamic_batch,
            forms=args.forms,
            threads=args.threads,
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
    verdict = "ok" if result.check_ok else "MISMATCH"
    print(
        f"check: ONNX Runtime vs PyTorch, largest absolute difference {result.max_abs_diff:.3g} "
        f"(outputs up to {result.max_abs_output:.3g}): {verdict}"
    )
    return 0 if result.check_ok else 1

"""``rank-search bench | latency-table | layer-speed``: measured latency beside MACs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import RankSearchError
from ._table import format_table, human


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("bench", help="measured latency/throughput of a rank config vs its dense model")
    p.add_argument("config", help="rank-config .json file")
    _device_args(p)
    p.add_argument("--repeats", type=int, default=10, help="timed samples per model and batch size (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per model first")
    p.add_argument("--min-sample-ms", type=float, default=20.0, help="a sample loops calls for at least this")
    p.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=False,
        metavar="MODE",
        help="torch.compile both models (optionally a mode such as max-autotune)",
    )
    p.add_argument("--cuda-graph", action="store_true", help="replay CUDA graphs (CUDA only)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="with --runtime onnxruntime: also time both models statically quantized (INT8)",
    )
    p.add_argument("-o", "--output", help="write the results as JSON here (atomically)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run_bench)

    p = sub.add_parser("latency-table", help="fill the cached per-layer latency table; predict a config")
    p.add_argument("target", help="model name (measure its rank grids) or rank-config .json (predict it)")
    _device_args(p)
    p.add_argument("--formats", nargs="+", default=["tucker2"], choices=["tucker2", "svd"])
    p.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"))
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument(
        "--verify", action="store_true", help="also run the config and report the prediction error"
    )
    p.add_argument(
        "--int8", action="store_true", help="with --runtime onnxruntime: time everything statically quantized"
    )
    p.add_argument("--cache-dir", help="table folder (default $RANK_SEARCH_CACHE/latency)")
    p.add_argument("--repeats", type=int, default=5, help="timed samples per entry (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per entry first")
    p.add_argument("--min-sample-ms", type=float, default=2.0, help="a sample loops calls for at least this")
    p.set_defaults(run=run_latency_table)

    p = sub.add_parser("layer-speed", help='per layer: is any factorized rank faster than dense? ("pays")')
    p.add_argument("model", help="model name")
    _device_args(p)
    p.add_argument("--format", default="tucker2", choices=["tucker2", "svd"])
    p.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75], help="rank / full rank")
    p.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"))
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--min-sample-ms", type=float, default=2.0, help="a sample loops calls for at least this")
    p.add_argument("--min-speedup", type=float, default=1.05, help="speedup that counts as paying")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_layer_speed)


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        dest="batch_sizes",
        help="batch sizes (default 1 and 32 on CPU, 1 and 1024 on CUDA)",
    )
    p.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's default)")
    p.add_argument(
        "--runtime",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="torch (eager) or onnxruntime (CPU; needs pip install 'rank-search[onnx]')",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")


def _batch_sizes(args: argparse.Namespace) -> tuple[int, ...]:
    from ..bench import default_batch_sizes
    from ..latency import resolve_device

    if args.batch_sizes is not None:
        if any(b < 1 for b in args.batch_sizes):
            raise RankSearchError(f"--batch-size must be positive, got {args.batch_sizes}")
        return tuple(args.batch_sizes)
    return default_batch_sizes(resolve_device(args.device))


# --------------------------------------------------------------------------- bench


def run_bench(args: argparse.Namespace) -> int:
    from ..bench import BenchOptions, bench_config, save_bench
    from ..config import load_rank_config
    from ..latency._device import load_check

    config = load_rank_config(args.config)
    options = BenchOptions(
        device=args.device,
        batch_sizes=_batch_sizes(args),
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        dtype=args.dtype,
        channels_last=args.channels_last,
        compile=args.compile,
        cuda_graph=args.cuda_graph,
        min_sample_ms=args.min_sample_ms,
        runtime=args.runtime,
        int8=args.int8,
    )
    options.check()  # bad options and a missing runtime fail before any timing or load warning
    with load_check(args.device):
        result = bench_config(config, options, source=str(args.config))
    if args.output:
        save_bench(result, args.output)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_bench(result.to_dict()))
        if args.output:
            print(f"\nwrote {args.output}")
    return 0


def format_bench(data: dict[str, Any]) -> str:
    """The bench JSON as a header and one table row per batch size."""
    dev, macs = data["device"], data["macs"]
    head = (
        f"{data['model']} in {data['runtime']} on {dev['type']} ({dev['name']}, {dev['threads']} threads, "
        f"torch {dev['torch']}, "
        f"{data['settings']['dtype']}); MACs dense {human(macs['dense'])}, "
        f"low-rank {human(macs['low_rank'])} (mac_ratio {data['mac_ratio']:.2f}x)"
    )
    rows = []
    for r in data["results"]:
        d, lr = r["dense_spread"], r["low_rank_spread"]
        rows.append(
            (
                r["batch_size"],
                f"{r['dense_ms']:.3f} [{d['q1']:.3f}-{d['q3']:.3f}]",
                f"{r['low_rank_ms']:.3f} [{lr['q1']:.3f}-{lr['q3']:.3f}]",
                round(r["speedup"], 3),
                round(r["mac_ratio"], 3),
                f"{100 * r['speedup_of_mac_ratio']:.0f}%",
                round(r["dense_images_per_s"]),
                round(r["low_rank_images_per_s"]),
            )
        )
    headers = [
        "batch",
        "dense ms [IQR]",
        "low-rank ms [IQR]",
        "speedup",
        "mac_ratio",
        "speedup/mac_ratio",
        "dense img/s",
        "low-rank img/s",
    ]
    table = head + "\n\n" + format_table(headers, rows)
    int8 = [r for r in data["results"] if "low_rank_int8_ms" in r]
    return table + ("\n\n" + format_int8(int8) if int8 else "")


def format_int8(results: list[dict[str, Any]]) -> str:
    """The INT8 columns of bench rows: both models quantized, beside float32 dense."""
    rows = []
    for r in results:
        d, lr = r["dense_int8_spread"], r["low_rank_int8_spread"]
        rows.append(
            (
                r["batch_size"],
                f"{r['dense_ms']:.3f}",
                f"{r['dense_int8_ms']:.3f} [{d['q1']:.3f}-{d['q3']:.3f}]",
                f"{r['low_rank_int8_ms']:.3f} [{lr['q1']:.3f}-{lr['q3']:.3f}]",
                round(r["speedup_int8_vs_dense_int8"], 3),
                round(r["speedup_int8_vs_dense_fp32"], 3),
                r["int8_forms"]["chosen"] if "int8_forms" in r else "-",
            )
        )
    headers = [
        "batch",
        "fp32 dense ms",
        "int8 dense ms [IQR]",
        "int8 low-rank ms [IQR]",
        "vs int8 dense",
        "vs fp32 dense",
        "int8 forms",
    ]
    return "INT8 (ONNX Runtime static quantization, timed in the same interleaved run):\n\n" + format_table(
        headers, rows
    )


# --------------------------------------------------------------------------- latency table


def _input_size(args: argparse.Namespace, model: str) -> tuple[int, int, int]:
    from ..models import default_input_size

    if args.input_size:
        if min(args.input_size) < 1:
            raise RankSearchError(f"--input-size must be positive, got {args.input_size}")
        return (args.input_size[0], args.input_size[1], args.input_size[2])
    return default_input_size(model)


def run_latency_table(args: argparse.Namespace) -> int:
    from ..latency import LatencyTable, TimingSettings, resolve_dtype
    from ..latency._device import load_check

    if args.repeats < 1 or args.warmup < 0:
        raise RankSearchError(f"need --repeats >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    table = LatencyTable.load_or_create(
        args.device,
        threads=args.threads,
        dtype=resolve_dtype(args.dtype),
        channels_last=args.channels_last,
        cache_dir=args.cache_dir,
        settings=TimingSettings(args.repeats, args.warmup, args.min_sample_ms),
        runtime=args.runtime,
        precision="int8" if args.int8 else "fp32",
    )
    sizes = _batch_sizes(args)
    if args.target.endswith(".json") or Path(args.target).is_file():
        with load_check(args.device):
            return _predict_config(table, args, sizes)
    from ..models import create_model

    create_model(args.target)  # a clear error for unknown names
    size = _input_size(args, args.target)
    with load_check(args.device):
        for batch_size in sizes:
            count = table.prefill(args.target, size, batch_size, args.formats, args.num_classes)
            print(f"batch {batch_size}: measured {count} new entries")
    print(f"table {table.path}: {len(table.layers)} layer entries, {len(table.rest)} models")
    return 0


def _predict_config(table: Any, args: argparse.Namespace, sizes: tuple[int, ...]) -> int:
    from ..config import load_rank_config

    config = load_rank_config(args.target)
    rows = []
    for batch_size in sizes:
        predicted = table.predict(config, batch_size)
        row: list[object] = [batch_size, round(predicted, 3)]
        if args.verify:
            measured = table.measure_model(config.build(seed=0), config.input_size, batch_size).median
            row += [round(measured, 3), f"{100 * (predicted - measured) / measured:+.1f}%"]
        rows.append(row)
    headers = ["batch", "predicted ms"] + (["measured ms", "error"] if args.verify else [])
    print(f"{config.model.name} on key {table.key}\n\n" + format_table(headers, rows))
    return 0


# --------------------------------------------------------------------------- layer speed


def run_layer_speed(args: argparse.Namespace) -> int:
    from ..latency._device import load_check

    size = _input_size(args, args.model)
    sizes = _batch_sizes(args)
    with load_check(args.device):
        report = _layer_speed(args, size, sizes)
    _print_layer_speed(args, report)
    return 0


def _layer_speed(
    args: argparse.Namespace, size: tuple[int, int, int], sizes: tuple[int, ...]
) -> dict[int, Any]:
    from ..latency import factorization_pays, resolve_dtype

    report = {}
    for batch_size in sizes:
        advice = factorization_pays(
            args.model,
            size,
            args.device,
            fmt=args.format,
            ratios=args.ratios,
            batch_size=batch_size,
            num_classes=args.num_classes,
            min_speedup=args.min_speedup,
            repeats=args.repeats,
            min_sample_ms=args.min_sample_ms,
            threads=args.threads,
            dtype=resolve_dtype(args.dtype),
            channels_last=args.channels_last,
            runtime=args.runtime,
        )
        report[batch_size] = advice
    return report


def _print_layer_speed(args: argparse.Namespace, report: dict[int, Any]) -> None:
    if args.json:
        print(json.dumps({str(b): [a.to_dict() for a in adv] for b, adv in report.items()}, indent=2))
        return
    ort = args.runtime == "onnxruntime"
    for batch_size, advice in report.items():
        rows = []
        for a in advice:
            row: list[object] = [
                a.name,
                round(a.dense_ms, 4),
                _ranks_text(a),
                round(a.best.speedup, 2) if a.best else "-",
            ]
            if ort:
                row += [a.best.form if a.best else "-", _forms_text(a)]
            rows.append([*row, "yes" if a.pays else "NO"])
        print(f"\nbatch {batch_size}, {args.runtime}, {args.format}, rank ratios {args.ratios}:\n")
        headers = ["layer", "dense ms", "fastest ranks", "best speedup"]
        headers += ["export form", "form ms (fastest ranks)"] if ort else []
        print(format_table([*headers, "pays"], rows))
        if ort:
            print(
                "\nexport form: what `rank-search export-model` would ship for the fastest ranks "
                "(factorized, merge_first/merge_last: one 1x1 factor merged into the kxk core, "
                "dense: merged back; all exact), the fastest in ONNX Runtime between context convs"
            )
        never = [a.name for a in advice if not a.pays]
        if never:
            print(
                f"\nadvice: factorizing never paid (>= {args.min_speedup}x) on {len(never)} layer(s): "
                f"{', '.join(never)}; offer 'dense' for them in the search space"
            )


def _forms_text(advice: Any) -> str:
    best = advice.best
    forms = best.forms if best is not None and best.forms else {}
    return " ".join(f"{k}={v.median:.4f}" for k, v in forms.items()) or "-"


def _ranks_text(advice: Any) -> str:
    best = advice.best
    return ",".join(f"{k}={v}" for k, v in best.ranks.items()) if best else "-"

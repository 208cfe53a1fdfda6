"""INT8 after low-rank (issue 22): accuracy of the shipped files and their speed, side by side.

For the dense and the low-rank trained ResNet-20 runs of the compress evidence (CIFAR-10 JPEG,
32x32), each run is exported twice as ``rank-search export-model`` ships it, float32 and
``--int8`` (static quantization calibrated on ``--calibration-images`` train images; forms chosen
by timing in each precision), and each file's top-1 accuracy is measured on the full test split
(``rank-search evaluate``). The uniform Tucker-2 config at ranks 0.5 x C (block convs; random
weights: speed only) is exported the same way. Then every file is loaded into one ONNX Runtime
session (CPU, 1 thread, ``ORT_ENABLE_ALL``) in this one process and all are timed interleaved at
batch 1 (medians and quartiles over ``--repeats`` samples of at least 20 ms each), with the load
average before and after.

Goals: INT8 low-rank top-1 within 0.5 points of its float32 twin; INT8 low-rank at 0.5 x C
>= 1.3x faster than INT8 dense and >= 2x faster than float32 dense at batch 1.

    python benchmarks/int8.py --data imagefolder:/work/data/cifar10 \\
        --runs /work/main/runs/compress-evidence -o runs/int8-bench

Writes ``OUT/*.onnx``, ``OUT/int8.json`` and prints Markdown tables. ``--reuse`` keeps files
already exported (re-times and re-evaluates them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rank_search._io import atomic_write_json
from rank_search.config import save_rank_config
from rank_search.convert import list_factorizable
from rank_search.int8 import Int8Options
from rank_search.latency import load_average, summarize, time_interleaved
from rank_search.latency._runtime import ort_session
from rank_search.models import create_model
from rank_search.onnx_eval import evaluate_onnx
from rank_search.onnx_export import export_model, read_metadata
from rank_search.uniform import uniform_config

RUNS = (
    "dense/seed0",
    "b0.50/uniform/seed0",
    "b0.50/energy/seed0",
    "b0.50/sensitivity/seed0",
    "b0.28/uniform/seed0",
    "b0.28/energy/seed0",
    "b0.28/sensitivity/seed0",
)
SPEED_CONFIG = "r20-tucker2-0.5xC"  # also exported with every layer factorized ("-factorized")


def _speed_config(out: Path) -> Path:
    """Uniform Tucker-2 at ranks 0.5 x C on both 3x3 convs of every block (random weights)."""
    infos = list_factorizable(create_model("resnet20"), (3, 32, 32))
    names = [i.name for i in infos if i.name.startswith("layer") and i.kernel_size == (3, 3)]
    path = out / f"{SPEED_CONFIG}.json"
    save_rank_config(uniform_config("resnet20", 10, (3, 32, 32), 0.5, names, "tucker2"), path)
    return path


def _export(
    source: Path, out: Path, label: str, args: argparse.Namespace, reuse: bool, forms: str = "auto"
) -> dict[str, Any]:
    """Export ``source`` float32 and INT8 (or reuse the files); their metadata summaries."""
    files: dict[str, Any] = {}
    for precision in ("fp32", "int8"):
        path = out / f"{label}.{precision}.onnx"
        if not (reuse and path.is_file()):
            int8 = None
            if precision == "int8":
                agree = 0.0 if label.startswith(SPEED_CONFIG) else 0.9  # random weights: speed only
                int8 = Int8Options(args.data, images=args.calibration_images, min_agreement=agree)
            start = time.perf_counter()
            result = export_model(source, path, threads=1, int8=int8, forms=forms, repeats=7)
            if not result.written:
                raise SystemExit(f"{label} {precision}: export check failed")
            print(
                f"exported {path.name} in {time.perf_counter() - start:.0f} s ({result.chosen})", flush=True
            )
        meta = read_metadata(path)
        q = meta.get("quantization") or {}
        files[precision] = {
            "path": str(path),
            "chosen": meta["chosen"],
            "model_ms_at_export": meta["model_ms"],
            "top1_agreement": q.get("top1_agreement"),
            "fp32_layers": q.get("fp32_layers"),
            "layer_error_max": max(q["layer_errors"].values()) if q.get("layer_errors") else None,
        }
    return files


def _time_files(paths: dict[str, str], repeats: int) -> dict[str, dict[str, float]]:
    """Every file in one ONNX Runtime session each (1 thread), timed interleaved at batch 1."""
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    sessions = {name: ort_session(path, 1) for name, path in paths.items()}
    calls = [lambda s=s: s.run(None, {"input": x}) for s in sessions.values()]
    torch.set_num_threads(1)
    samples = time_interleaved(calls, torch.device("cpu"), repeats=repeats, warmup=3, min_sample_ms=20.0)
    return {name: summarize(s).to_dict() for name, s in zip(sessions, samples, strict=True)}


def _print(report: dict[str, Any]) -> None:
    print(
        "\n| run | fp32 top-1 | INT8 top-1 | INT8 - fp32 (points) | INT8 agreement (calib.) | fp32 layers |"
    )
    print("|---|---|---|---|---|---|")
    for label, row in report["runs"].items():
        if "accuracy" not in row:
            continue
        acc = row["accuracy"]
        diff = 100 * (acc["int8"] - acc["fp32"])
        print(
            f"| {label} | {100 * acc['fp32']:.2f} | {100 * acc['int8']:.2f} | {diff:+.2f} | "
            f"{100 * row['files']['int8']['top1_agreement']:.1f}% | {row['files']['int8']['fp32_layers']} |"
        )
    times = report["timing"]["ms"]
    if "dense/seed0.int8" not in times:
        return
    dense8, dense32 = times["dense/seed0.int8"]["median"], times["dense/seed0.fp32"]["median"]
    print(
        "\n| file | forms | median ms [IQR] | min ms | vs INT8 dense | vs fp32 dense | min: vs INT8, fp32 |"
    )
    print("|---|---|---|---|---|---|---|")
    min8, min32 = times["dense/seed0.int8"]["min"], times["dense/seed0.fp32"]["min"]
    for name, spread in times.items():
        label, precision = name.rsplit(".", 1)
        chosen = report["runs"][label]["files"][precision]["chosen"]
        print(
            f"| {name} | {chosen} | {spread['median']:.3f} [{spread['q1']:.3f}-{spread['q3']:.3f}] | "
            f"{spread['min']:.3f} | {dense8 / spread['median']:.2f}x | {dense32 / spread['median']:.2f}x | "
            f"{min8 / spread['min']:.2f}x / {min32 / spread['min']:.2f}x |"
        )
    t = report["timing"]
    print(f"\nload average before {t['load_before']}, after {t['load_after']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="data spec: calibration (train) and test images")
    parser.add_argument("--runs", required=True, type=Path, help="the compress-evidence folder")
    parser.add_argument("--only", nargs="+", default=list(RUNS), help="run folders under --runs")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--reuse", action="store_true", help="keep files already exported")
    parser.add_argument("-o", "--output", required=True, type=Path)
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"data": args.data, "runs": {}, "argv": sys.argv, "pid": os.getpid()}
    sources = {label: args.runs / label for label in args.only}
    sources[SPEED_CONFIG] = sources[f"{SPEED_CONFIG}-factorized"] = _speed_config(args.output)
    for label, source in sources.items():
        safe = label.replace("/", "_")
        forms = "factorized" if label.endswith("-factorized") else "auto"
        files = _export(source, args.output, safe, args, args.reuse, forms)
        row: dict[str, Any] = {"source": str(source), "files": files}
        if not label.startswith(SPEED_CONFIG):
            row["accuracy"] = {
                precision: evaluate_onnx(f["path"], args.data).accuracy for precision, f in files.items()
            }
            print(f"{label}: test top-1 {row['accuracy']}", flush=True)
        report["runs"][label] = row
    paths = {
        f"{label}.{p}": f["path"] for label, row in report["runs"].items() for p, f in row["files"].items()
    }
    before = load_average()
    report["timing"] = {
        "ms": _time_files(paths, args.repeats),
        "load_before": before,
        "load_after": load_average(),
    }
    atomic_write_json(args.output / "int8.json", report)
    _print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One short GPU check (issue 13): everything GPU-specific, checked and measured in one run.

Parts, each in its own process under its own time limit (seconds, GPU / dry run); a part that
runs out is stopped and what it recorded so far is kept. ``gpu_check.json`` and
``gpu_check.md`` are rewritten in ``--out`` after every part, so a failed or stopped run still
leaves them.

=========== ======== ==================================================================
part        limit    what
=========== ======== ==================================================================
tests       60 / 25  the CUDA-marked tests (``pytest -m gpu``)
data        30 / 15  load + upload the dataset twice in one process (per-process cache)
steps       95 / 35  ``fit`` 2 epochs, eager / CUDA graph / compiled, dense and Tucker-2
                     ResNet-20: loss curves against eager (bf16 tolerance)
epoch_time  50 / 35  s/epoch at batch 512, dense and Tucker-2 + DSO, against the plain
                     ImageFolder + DataLoader recipe (goal: dense <= 0.5 s, >= 7x plain,
                     Tucker-2 no slower than dense)
throughput 115 / 95  search trials/hour at 1 and 4 trials per GPU (goal >= 2.5x, overhead
                     under 5%)
bench       30 / 20  exported ResNet-20/56 at 50% MACs, batch 1024 (goal: >= dense speed)
share       90 / 70  a 90-second search at 4 trials per GPU: processes on the GPU at once
=========== ======== ==================================================================

The GPU limits add up to 470 s (plus process start-up: under 8 minutes), the dry run's to
295 s. On the GPU machine::

    source .gpu/setup.sh   # Ray, Optuna from wheels; CIFAR-10 JPEG to /tmp/cifar10-jpeg
    python benchmarks/gpu_check.py --data /tmp/cifar10-jpeg --out "$OUT"

``--cpu-dry-run`` runs the same parts on CPU at toy sizes (a generated 32x32 JPEG folder
unless ``--data`` is given; 2 trials at once instead of 4) in under 5 minutes: it proves the
script works, its figures are no evidence.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

# (name, GPU limit s, dry-run limit s)
PARTS: list[tuple[str, int, int]] = [
    ("tests", 60, 25),
    ("data", 30, 15),
    ("steps", 95, 35),
    ("epoch_time", 50, 35),
    ("throughput", 115, 95),
    ("bench", 30, 20),
    ("share", 90, 70),
]
BLOCK_CONVS = [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(3) for c in (1, 2)]


# --------------------------------------------------------------------------- part plumbing


class Part:
    """What a part records: a JSON file rewritten (atomically) at every :meth:`put`."""

    def __init__(self, name: str, work: Path, args: argparse.Namespace) -> None:
        self.name, self.args, self.work = name, args, work
        self.limit = next(dry if args.cpu_dry_run else gpu for part, gpu, dry in PARTS if part == name)
        self.path = work / "parts" / f"{name}.json"
        self.data: dict[str, Any] = {}

    @property
    def dry(self) -> bool:
        return bool(self.args.cpu_dry_run)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)

    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    def data_root(self) -> Path:
        return Path(self.args.data) if self.args.data else self.work / "toy-data"

    def batch_size(self) -> int:
        return 64 if self.dry else 512


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _load(part: Part, val_fraction: float) -> Any:
    from rank_search.data import DataOptions, load_data

    options = DataOptions(val_fraction=val_fraction, workers=2 if part.dry else 8)
    return load_data(f"imagefolder:{part.data_root()}", options)


def _configs(num_classes: int, size: tuple[int, int, int]) -> dict[str, Any]:
    from rank_search.config import RankConfig
    from rank_search.uniform import uniform_config

    dense = RankConfig(uniform_config("resnet20", num_classes, size, 1.0, []).model, size)
    tucker = uniform_config("resnet20", num_classes, size, 0.5, BLOCK_CONVS)
    return {"dense": dense, "tucker2": tucker}


# --------------------------------------------------------------------------- parts


def part_tests(part: Part) -> None:
    files = sorted(
        str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in f.read_text()
    )
    part.put("files", files)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", *files, "-q", "-p", "no:cacheprovider", "-rs"]
    log = part.work / "pytest-gpu.log"
    with log.open("w") as out:  # a file, so that a stopped run still shows how far it got
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            rc: int | None = proc.wait(timeout=max(5, part.limit - 8))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = None
    lines = log.read_text().strip().splitlines()
    part.put("returncode", rc)
    part.put("summary", (lines[-1] if lines else "") + ("" if rc is not None else " (stopped at the limit)"))
    part.put("tail", lines[-40:])
    part.put("ok", rc == 0)


def part_data(part: Part) -> None:
    """Issue item 6: what a second trial in the same worker process pays for its data."""
    import torch

    from rank_search.search.trainable import TrialSetup, cached_data

    setup = TrialSetup(  # what a search's trials share; only the data fields matter here
        out_dir=str(part.work),
        model="resnet20",
        num_classes=10,
        input_size=(3, 32, 32),
        data=f"imagefolder:{part.data_root()}",
        data_options={"val_fraction": 0.1, "workers": 2 if part.dry else 8},
        train={},
        dense_macs=0,
    )
    rows = []
    tensors: list[Any] = []
    for attempt in (1, 2):  # two trials in one worker process: the search's per-process cache
        start = time.perf_counter()
        data: Any = cached_data(setup)  # a resident dataset (.tensors)
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        x, _ = data.tensors("train", part.device())
        _sync()
        uploaded = time.perf_counter() - start
        tensors.append(x)
        rows.append({"attempt": attempt, "load_s": round(loaded, 3), "upload_s": round(uploaded, 3)})
        part.put("rows", rows)
    part.put("images", int(tensors[0].shape[0]))
    same = tensors[0].data_ptr() == tensors[1].data_ptr()
    part.put("same_device_tensor", same)
    first, second = rows
    part.put(
        "summary",
        f"2nd load {second['load_s']} s + upload {second['upload_s']} s (1st {first['load_s']} + "
        f"{first['upload_s']} s); same device tensor: {same}",
    )
    if torch.cuda.is_available():
        part.put("cuda_memory_allocated_mib", round(torch.cuda.memory_allocated() / 2**20, 1))
    part.put(
        "note",
        "attempt 1 decodes (cold disk cache); attempt 2 is what a later trial of the same worker "
        "pays: near 0 and same_device_tensor true once the per-process cache is in",
    )


def part_steps(part: Part) -> None:
    from torch._dynamo.utils import counters

    from rank_search.train import TrainConfig, fit

    data = _load(part, 0.1)
    configs = _configs(data.num_classes, tuple(data.input_size))
    rows: list[dict[str, Any]] = []
    eager: dict[str, list[float]] = {}
    tolerance = 0.05
    for speedup in ("none", "cudagraphs", "compile"):
        for label, config in configs.items():
            train = TrainConfig(
                epochs=2,
                batch_size=part.batch_size(),
                lr=0.1,
                warmup_epochs=0.5,
                device=part.device(),
                speedup=speedup,
            )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                start = time.perf_counter()
                result = fit(config, data, train)
                wall = time.perf_counter() - start
            losses = [s.train_loss for s in result.history]
            if speedup == "none":
                eager[label] = losses
            ref = eager.get(label)
            rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref)) if ref and losses else None
            rows.append(
                {
                    "model": label,
                    "speedup": speedup,
                    "effective": speedup if part.device() == "cuda" else "none (CPU)",
                    "status": result.status,
                    "train_loss": losses,
                    "epoch_time_s": [round(s.epoch_time_s, 3) for s in result.history],
                    "val_accuracy": result.val_accuracy,
                    "wall_s": round(wall, 1),
                    "max_rel_loss_diff_vs_eager": rel,
                    "agrees": rel is not None and rel <= tolerance,
                    "warnings": sorted(
                        {str(w.message)[:160] for w in caught if w.category is RuntimeWarning}
                    ),
                    "inductor_counters": {k: dict(v) for k, v in counters.items() if k == "inductor"},
                }
            )
            part.put("rows", rows)
    part.put("tolerance", tolerance)
    checked = [r for r in rows if r["speedup"] != "none"]
    part.put(
        "summary",
        f"{sum(r['agrees'] for r in checked)}/{len(checked)} graph/compiled runs within "
        f"{tolerance:.0%} of the eager loss" + (" (CPU: all run eagerly)" if part.dry else ""),
    )
    part.put("ok", all(r["agrees"] for r in rows if r["speedup"] != "none"))


def part_epoch_time(part: Part) -> None:
    import epoch_time as et

    data = _load(part, 0.0)
    configs = _configs(data.num_classes, tuple(data.input_size))
    base = argparse.Namespace(
        epochs=1 if part.dry else 2,
        warmup_epochs=1,
        max_batches=None,
        batch_size=part.batch_size(),
        baseline_batch_size=128 if not part.dry else 32,
        workers=2 if part.dry else 8,
        device=part.device(),
    )
    rows: list[dict[str, Any]] = []
    labelled = {}
    for label, config in configs.items():
        labelled[label] = config.with_cost()
        labelled[label].provenance["label"] = label
    plan = [("cudagraphs", "dense"), ("cudagraphs", "tucker2"), ("plain", "dense")]
    plan += [("none", "dense"), ("none", "tucker2")]  # the most important rows first
    for speedup, label in plan:
        if speedup == "plain":
            row = et.time_torchvision(labelled[label], part.data_root(), base)
        else:
            row = et.time_harness(labelled[label], data, argparse.Namespace(**vars(base), speedup=speedup))
        rows.append({**row, "speedup": speedup})
        part.put("rows", rows)
    harness = {(r["model"], r["speedup"]): r["s_per_epoch"] for r in rows if r["pipeline"] == "harness"}
    best_dense = min(v for (m, _), v in harness.items() if m == "dense")
    best_tucker = min(v for (m, _), v in harness.items() if m == "tucker2")
    plain = next(r["s_per_epoch"] for r in rows if r["speedup"] == "plain")
    part.put(
        "goals",
        {
            "dense_s_per_epoch": best_dense,
            "dense_at_most_0.5s": best_dense <= 0.5,
            "plain_over_dense": plain / best_dense,
            "at_least_7x_plain": plain / best_dense >= 7,
            "tucker_over_dense": best_tucker / best_dense,
            "tucker_no_slower": best_tucker <= best_dense,
        },
    )


def _study_sets(part: Part) -> list[str]:
    sets = [f"data=imagefolder:{part.data_root()}", "data_options.val_fraction=0.1", "asha.grace_period=1"]
    if part.dry:
        sets += ["train.batch_size=64"]
    return sets


def _search(part: Part, k: int, trials: int, epochs: int, tag: str) -> dict[str, Any]:
    """One search of ``trials`` trials at ``k`` at once (1/k GPU each; 1 CPU each on the dry run),
    timed by ``search_throughput.timed_search`` (Ray start-up included)."""
    import search_throughput as st

    sets = [*_study_sets(part), "asha.enabled=false", f"trials={trials}", f"epochs_per_trial={epochs}"]
    sets += [f"resources.concurrency={k}", "resources.cpu=1"]
    sets += ["resources.gpu=0", "train.device=cpu"] if part.dry else [f"resources.gpu={1 / k:g}"]
    run = st.timed_search(str(ROOT / "studies" / "resnet20-cifar10.yaml"), sets, part.work / f"search-{tag}")
    wall, training = run["wall_s"], run["training_s"]
    return {
        "concurrency": k,
        "per_trial": "1 CPU" if part.dry else f"1/{k} GPU",
        "trials": run["trials"],
        "completed": run["completed"],
        "status": run["status"],
        "wall_s": round(wall, 1),
        "trials_per_hour": round(run["trials"] * 3600 / wall, 1),
        "training_s": round(training, 1),
        "startup_s": round(run["startup_s"], 1),
        "overhead_share": round(1 - training / (k * wall), 3),
    }


def part_throughput(part: Part) -> None:
    high = 2 if part.dry else 4
    rows = []
    for k, trials in ((1, 2 if part.dry else 4), (high, 2 * high)):
        rows.append(_search(part, k, trials, 1 if part.dry else 2, f"k{k}"))
        part.put("rows", rows)
    low, top = rows
    part.put(
        "goals",
        {
            "trials_per_hour_ratio": top["trials_per_hour"] / low["trials_per_hour"],
            "at_least_2.5x": top["trials_per_hour"] / low["trials_per_hour"] >= 2.5,
            "overhead_share": [r["overhead_share"] for r in rows],
            "overhead_under_5pct": all(r["overhead_share"] < 0.05 for r in rows),
        },
    )


def part_bench(part: Part) -> None:
    from rank_search.bench import BenchOptions, bench_config
    from rank_search.convert import list_factorizable
    from rank_search.models import create_model
    from rank_search.uniform import uniform_config, uniform_ratio_bounds

    size = (3, 32, 32)
    options = BenchOptions(
        device=part.device(),
        batch_sizes=(32,) if part.dry else (1024,),
        repeats=3 if part.dry else 7,
        warmup=1 if part.dry else 3,
        dtype="float32" if part.dry else "bfloat16",
        min_sample_ms=5.0 if part.dry else 20.0,
    )
    rows = []
    for name in ("resnet20", "resnet56"):
        infos = list_factorizable(create_model(name, num_classes=10), size)
        names = [i.name for i in infos if i.name.startswith("layer")]
        dense_macs = sum(i.dense_macs for i in infos)
        lo, _ = uniform_ratio_bounds(
            {i.name: i for i in infos}, dict.fromkeys(names, "tucker2"), 0.5 * dense_macs
        )
        config = uniform_config(name, 10, size, lo, names)
        result = bench_config(config, options).to_dict()
        for row in result["results"]:
            rows.append(
                {
                    "model": name,
                    "ratio": round(lo, 4),
                    **{k: row[k] for k in ("batch_size", "dense_ms", "low_rank_ms", "speedup", "mac_ratio")},
                }
            )
        part.put("rows", rows)
    part.put("settings", {"dtype": options.dtype, "channels_last": options.channels_last})
    part.put("at_least_dense_speed", all(r["speedup"] >= 1.0 for r in rows))
    part.put(
        "summary", "; ".join(f"{r['model']} x{r['speedup']:.2f} at batch {r['batch_size']}" for r in rows)
    )


def _gpu_processes() -> list[tuple[int, float]]:
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        try:
            pid, mem = line.split(",")
            rows.append((int(pid), float(mem)))
        except ValueError:
            continue
    return rows


def part_share(part: Part) -> None:
    k = 2 if part.dry else 4
    samples: list[dict[str, Any]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(2.0):
            procs = _gpu_processes()
            samples.append(
                {
                    "t": round(time.perf_counter() - start, 1),
                    "processes": len(procs),
                    "mib": [m for _, m in procs],
                }
            )
            part.put("samples", samples[-60:])
            part.put("max_processes", max(s["processes"] for s in samples))

    start = time.perf_counter()
    thread = threading.Thread(target=sample, daemon=True)
    if shutil.which("nvidia-smi"):
        thread.start()
    try:
        row = _search(part, k, k if part.dry else 3 * k, 1 if part.dry else 3, "share")
        part.put("search", row)
    finally:
        stop.set()
    peak = max((s["processes"] for s in samples), default=0)
    part.put("shares_gpu", peak >= 2 if not part.dry else None)
    part.put(
        "summary",
        f"{row['completed']}/{row['trials']} trials in {row['wall_s']} s; at most {peak} processes on "
        f"the GPU at once" + (" (CPU: no GPU to share)" if part.dry else ""),
    )


PART_FUNCS: dict[str, Callable[[Part], None]] = {
    "tests": part_tests,
    "data": part_data,
    "steps": part_steps,
    "epoch_time": part_epoch_time,
    "throughput": part_throughput,
    "bench": part_bench,
    "share": part_share,
}


# --------------------------------------------------------------------------- driver


def make_toy_folder(root: Path, classes: int = 10, train: int = 20, test: int = 10, size: int = 32) -> None:
    """A small JPEG image folder (ROOT/train, ROOT/test) with class-dependent colours."""
    if (root / "test").is_dir():
        return
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = np.array([25 * c, 255 - 25 * c, (80 * c) % 256], dtype=np.float64)
                img = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)


def run_child(name: str, args: argparse.Namespace) -> int:
    part = Part(name, Path(args.work), args)
    part.put("started", time.strftime("%Y-%m-%d %H:%M:%S"))
    rc = 0
    try:
        PART_FUNCS[name](part)
        part.put("status", "done")
    except Exception as exc:
        part.put("status", "failed")
        part.put("error", f"{type(exc).__name__}: {exc}")
        part.put("traceback", traceback.format_exc()[-3000:])
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # no interpreter teardown: Ray or DataLoader exit hooks must not eat the time limit


def run_part(name: str, limit: int, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """Run one part in its own process group, stopped at ``limit`` seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--work", args.work]
    cmd += ["--data", args.data] if args.data else []
    cmd += ["--cpu-dry-run"] if args.cpu_dry_run else []
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n===== part {name} (limit {limit} s) =====\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            rc = None
            _stop_group(proc)
    seconds = round(time.perf_counter() - start, 1)
    path = Path(args.work) / "parts" / f"{name}.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    if rc is None and data.get("status") != "done":
        data["status"] = "stopped at its time limit"
    elif "status" not in data:
        data["status"] = f"exited {rc}"
    return {"part": name, "limit_s": limit, "seconds": seconds, **data}


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("gpu_check.json", json.dumps(report, indent=1, default=str)),
        ("gpu_check.md", markdown(report)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def markdown(report: dict[str, Any]) -> str:
    mode = "CPU dry run (toy sizes: proves the script works, no evidence)" if report["dry_run"] else "GPU run"
    lines = [f"# GPU check ({mode})", "", f"Environment: `{json.dumps(report['environment'])}`", ""]
    lines += ["| part | status | seconds / limit | key result |", "| --- | --- | --- | --- |"]
    for p in report["parts"]:
        lines.append(
            f"| {p['part']} | {p.get('status')} | {p['seconds']} / {p['limit_s']} | {_key_result(p)} |"
        )
    for p in report["parts"]:
        rows = p.get("rows")
        if not rows:
            continue
        lines += ["", f"## {p['part']}", ""]
        keys = [
            k
            for k in rows[0]
            if not isinstance(rows[0][k], dict | list) or k in ("train_loss", "epoch_time_s")
        ]
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + " --- |" * len(keys))
        for row in rows:
            lines.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def _key_result(p: dict[str, Any]) -> str:
    keys = ("error", "summary", "goals", "ok") if p.get("status") == "failed" else ("summary", "goals", "ok")
    for key in keys:
        if key in p:
            text = json.dumps(p[key], default=str) if not isinstance(p[key], str) else p[key]
            return text.replace("|", "/").replace("\n", " ")[:300]
    return ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="folder for gpu_check.json, gpu_check.md and gpu_check.log")
    p.add_argument("--data", help="image folder ROOT (ROOT/train, ROOT/test); GPU default /tmp/cifar10-jpeg")
    p.add_argument("--cpu-dry-run", action="store_true", help="the same parts on CPU at toy sizes")
    p.add_argument("--parts", nargs="+", choices=[name for name, _, _ in PARTS], help="run only these")
    p.add_argument("--work", help="scratch folder (searches, caches); default a fresh temporary one")
    p.add_argument("--part", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part:
        return run_child(args.part, args)
    if not args.out:
        p.error("--out is required")
    if not args.cpu_dry_run and not args.data:
        args.data = "/tmp/cifar10-jpeg"
    args.work = args.work or str(Path("/tmp") / f"gpu-check-{os.getpid()}")
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["RANK_SEARCH_CACHE"] = str(work / "cache")  # decoded once, shared by parts and trials
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")  # parts, pytest, Ray workers
    shutil.rmtree(work / "parts", ignore_errors=True)
    if args.cpu_dry_run and not args.data:
        make_toy_folder(work / "toy-data")
    log = out / "gpu_check.log"
    log.write_text("")
    report: dict[str, Any] = {"dry_run": args.cpu_dry_run, "environment": environment(), "parts": []}
    write_report(out, report)
    started = time.perf_counter()
    for name, gpu_limit, dry_limit in PARTS:
        if args.parts and name not in args.parts:
            continue
        result = run_part(name, dry_limit if args.cpu_dry_run else gpu_limit, args, log)
        report["parts"].append(result)
        report["total_s"] = round(time.perf_counter() - started, 1)
        write_report(out, report)
        print(f"{name}: {result.get('status')} in {result['seconds']} s  {_key_result(result)}", flush=True)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} ({report['total_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

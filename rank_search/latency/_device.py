"""Devices, their names and the key that identifies a latency measurement setting."""

from __future__ import annotations

import contextvars
import os
import platform
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import RankSearchError

CACHE_ENV = "RANK_SEARCH_CACHE"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a ``torch.device``; a clear error if it is unusable."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RankSearchError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise RankSearchError(f"device {str(dev)!r} is not supported for timing; use 'cpu' or 'cuda'")
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise RankSearchError(
            f"--device {dev} requested but no CUDA device is available (torch "
            f"{torch.__version__} {built}); use --device cpu"
        )
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise RankSearchError(f"device cuda:{index} does not exist; {torch.cuda.device_count()} visible")
    return torch.device("cuda", index)


def resolve_dtype(name: str) -> torch.dtype:
    """``"float32" | "bfloat16" | "float16"`` as a ``torch.dtype``."""
    if name not in DTYPES:
        raise RankSearchError(f"unknown dtype {name!r}; expected one of {list(DTYPES)}")
    return DTYPES[name]


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def device_name(device: torch.device) -> str:
    """A human-readable name: the GPU's name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def device_key(
    device: torch.device,
    threads: int,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    runtime: str = "torch",
    precision: str = "fp32",
) -> str:
    """A file-name-safe key for one timing setting: device name, CPU threads, runtime and its
    version (torch or ONNX Runtime), dtype, memory format and (``int8`` only, so float32 keys
    stay as they were) the precision. Latencies measured under one key are never reused under
    another."""
    from ._runtime import runtime_version

    parts = [device.type, device_name(device)]
    if device.type == "cpu":
        parts.append(f"{threads}t")
    parts += [
        runtime_version(runtime),
        str(dtype).removeprefix("torch."),
        "cl" if channels_last and runtime == "torch" else "nchw",
    ]
    if precision != "fp32":
        parts.append(precision)
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", "-".join(parts)).strip("_")


def default_cache_dir() -> Path:
    """``$RANK_SEARCH_CACHE/latency``, else ``~/.cache/rank-search/latency``."""
    env = os.environ.get(CACHE_ENV)
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "rank-search"
    return root / "latency"


def check_threads(threads: int | None) -> None:
    """Raise unless ``threads`` is ``None`` or a positive integer."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise RankSearchError(f"threads must be a positive integer, got {threads!r}")


@contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` intra-op CPU threads (restored afterwards); yields the count."""
    check_threads(threads)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def warn_if_busy(device: torch.device, stacklevel: int = 3) -> None:
    """Warn when other processes keep the CPUs busy: CPU timings (and GPU launch latency) suffer.

    With more runnable threads than cores, OpenMP threads that spin-wait at barriers get
    descheduled and multi-threaded CPU timings can grow tenfold; ``OMP_WAIT_POLICY=PASSIVE``
    (set before Python starts) avoids the worst of it.
    """
    if _LOAD_CHECKED.get():  # inside load_check, which has warned already (once per command)
        return
    load, cores = load_average(), os.cpu_count() or 1
    if load is not None and load > 0.75 * cores:
        warnings.warn(
            f"load average {load:.1f} on {cores} CPUs: other processes are running, {device.type} "
            "timings will be noisy (on CPU consider OMP_WAIT_POLICY=PASSIVE)",
            stacklevel=stacklevel,
        )


_LOAD_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "rank_search_load_checked", default=False
)

SPIN_SLOWDOWN = 1.25  # a calibration spin this much slower after timing than before: warn


def spin_ms(repeats: int = 5) -> float:
    """Median ms of a fixed single-threaded Python loop: a probe of how much CPU this process gets."""
    import statistics
    import time

    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sum(range(100_000))
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


@contextmanager
def load_check(device: torch.device | str = "cpu", stacklevel: int = 3) -> Iterator[None]:
    """Around a timing run: warn when the machine is loaded before it (:func:`warn_if_busy`), and
    when a calibration spin (:func:`spin_ms`) ran :data:`SPIN_SLOWDOWN` times slower after it than
    before (other processes took CPU time while timing: the figures are suspect)."""
    dev = resolve_device(device)  # an unusable device is one clear error, before any timing
    warn_if_busy(dev, stacklevel=stacklevel + 2)
    token = _LOAD_CHECKED.set(True)  # the timing code inside does not warn about the load again
    try:
        before = spin_ms()
        yield
        after = spin_ms()
    finally:
        _LOAD_CHECKED.reset(token)
    if after > SPIN_SLOWDOWN * before:
        warnings.warn(
            f"a calibration spin ran {after / before:.2f}x slower after timing than before "
            f"({before:.2f} -> {after:.2f} ms): the machine got busier, timings are suspect; "
            "rerun on a quiet machine",
            stacklevel=stacklevel + 2,
        )

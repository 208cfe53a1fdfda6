"""Timing loops: warmup, calibrated inner loops, interleaved repeats, median and spread.

CPU samples use ``time.perf_counter``; CUDA samples use ``torch.cuda.Event`` pairs recorded on
the timed device's current stream (made the current device while timing), and the device is
synchronized before each sample starts and after it ends, so a sample covers exactly the
kernels its calls launched.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

Fn = Callable[[], object]
MAX_NUMBER = 100_000


@dataclass(frozen=True)
class Spread:
    """Median and spread (quartiles, min, max) of per-call times in milliseconds."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    samples: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(samples: Sequence[float]) -> Spread:
    """Median, quartiles (inclusive method), min and max of ``samples``."""
    if not samples:
        raise ValueError("no timing samples")
    values = sorted(samples)
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(statistics.median(values), q1, q3, values[0], values[-1], len(values))


def time_calls(fn: Fn, number: int, device: torch.device) -> float:
    """Milliseconds per call of ``fn`` averaged over ``number`` back-to-back calls."""
    if device.type == "cuda":
        with torch.cuda.device(device):  # events and launches on the timed device, not the current one
            stream = torch.cuda.current_stream(device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record(stream)
            for _ in range(number):
                fn()
            end.record(stream)
            end.synchronize()
        return float(start.elapsed_time(end)) / number
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) * 1e3 / number


def calibrate(fn: Fn, device: torch.device, min_sample_ms: float) -> int:
    """How many calls make one sample last at least ``min_sample_ms`` (at least 1)."""
    if min_sample_ms <= 0:
        return 1
    once = max(time_calls(fn, 1, device), 1e-6)
    number = max(1, math.ceil(min_sample_ms / once))
    if number > 1:  # the first single call is noisy: refine with a short loop
        per_call = max(time_calls(fn, min(number, 10), device), 1e-6)
        number = max(1, math.ceil(min_sample_ms / per_call))
    return min(number, MAX_NUMBER)


@contextmanager
def _quiet_gc() -> Iterator[None]:
    """Keep the garbage collector off while timing (a full collection first would cost ~0.1 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def time_interleaved(
    fns: Sequence[Fn], device: torch.device, *, repeats: int, warmup: int, min_sample_ms: float = 0.0
) -> list[list[float]]:
    """Per-call milliseconds of each of ``fns``, ``repeats`` samples each, interleaved.

    Every function is first called ``warmup`` times. Then each repeat takes one sample of each
    function, alternating the order (A B, B A, ...) so slow drift (thermal, frequency, other
    processes) hits all functions alike. A sample is the mean over a calibrated number of calls
    lasting at least ``min_sample_ms``. Call it under ``torch.inference_mode()``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for fn in fns:
        for _ in range(warmup):
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    numbers = [calibrate(fn, device, min_sample_ms) for fn in fns]
    samples: list[list[float]] = [[] for _ in fns]
    with _quiet_gc():
        for repeat in range(repeats):
            order = range(len(fns)) if repeat % 2 == 0 else reversed(range(len(fns)))
            for index in order:
                samples[index].append(time_calls(fns[index], numbers[index], device))
    return samples

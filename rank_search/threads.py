"""The thread policy of every process rank-search starts: one place for it.

* **OpenMP wait policy.** libgomp's default lets idle OpenMP threads spin at barriers; on a busy
  machine a spinning thread and a descheduled one fight over the same core and a multi-threaded
  CPU step can run ten times slower. ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep.
  libgomp reads it once, when it is loaded (with torch), so it must be in the environment before
  torch is imported in that process: :func:`prepare_process` runs first thing in the CLI entry
  point, and :func:`worker_env` goes into the Ray runtime environment of the search's workers
  (local workers also inherit the driver's environment). A value the user set is kept.
* **Intra-op threads.** A trial, and ``rank-search train``, use as many torch threads as CPUs
  they were given (:func:`use_threads`): a trial's ``resources.cpu``; ``train --threads``, by
  default the CPUs this process may use (affinity and cgroup quota, :func:`available_cpus`) less
  its share of those other processes keep busy when it starts (:func:`auto_threads`).
* **The driver's core.** On a local cluster of 4 or more CPUs one CPU is kept out of Ray for the
  driver (Tune's event loop, sampling, records); on 2-3 CPUs trials get them all, as holding one
  back would halve or third the search's throughput to serve a driver that needs milliseconds a
  trial (:func:`ray_cpus`).

Never imports torch at module level.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "DRIVER_RESERVE_MIN_CPUS",
    "WAIT_POLICY",
    "auto_threads",
    "available_cpus",
    "busy_cpus",
    "cgroup_cpu_limit",
    "prepare_process",
    "ray_cpus",
    "thread_report",
    "use_threads",
    "worker_env",
]

WAIT_POLICY = "PASSIVE"
DRIVER_RESERVE_MIN_CPUS = 4
"""A local cluster keeps one CPU for the driver from this many CPUs on."""


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``quota / period``), or None without one.

    Reads cgroup v2's ``cpu.max`` ("max 100000" or "200000 100000"), else cgroup v1's
    ``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us`` (quota -1: none). A container limited
    to 2 CPUs on a 64-core host has affinity for all 64 and a quota of 2.
    """
    try:
        fields = (root / "cpu.max").read_text(encoding="ascii").split()
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1]) if len(fields) > 1 else int(fields[0]) / 100_000
        if fields:
            return None
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text(encoding="ascii"))
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its affinity mask (``os.cpu_count()`` where there is none),
    capped by its cgroup's CPU quota rounded up (:func:`cgroup_cpu_limit`)."""
    try:
        cpus = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cpus = max(1, os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit - 1e-9)))
    return cpus


def busy_cpus(read: Callable[[], str] | None = None, samples: int = 5, interval_s: float = 0.02) -> int:
    """CPUs other work keeps busy right now: runnable tasks less this process's own thread.

    Read from the 4th field of ``/proc/loadavg`` ("running/total", an instant count, unlike the
    load averages, which lag by a minute); the median of ``samples`` reads. 0 where it cannot be read.
    """
    import statistics
    import time

    read = read or (lambda: Path("/proc/loadavg").read_text(encoding="ascii"))
    counts = []
    for index in range(samples):
        try:
            counts.append(int(read().split()[3].split("/")[0]))
        except (OSError, IndexError, ValueError):
            return 0
        if index + 1 < samples:
            time.sleep(interval_s)
    return max(0, round(statistics.median(counts)) - 1)


def auto_threads(cpus: int | None = None, busy: int | None = None) -> int:
    """Threads for a process that was given no count: the CPUs it may use less those other work
    keeps busy now (:func:`busy_cpus`), at least 1. Two OpenMP threads on a core that a third
    process also wants wait for each other at every barrier; one thread per free core does not."""
    cpus = available_cpus() if cpus is None else cpus
    if busy is None:  # the runnable count is host-wide: scale it to this process's share of the host
        busy = round(busy_cpus() * min(1.0, cpus / max(1, os.cpu_count() or 1)))
    return max(1, min(cpus, cpus - busy))


def prepare_process() -> None:
    """Put the OpenMP wait policy into this process's environment (call before importing torch)."""
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def worker_env() -> dict[str, str]:
    """Environment variables for Ray workers (``runtime_env={"env_vars": ...}``)."""
    return {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", WAIT_POLICY)}


def ray_cpus(total: int | None = None) -> int:
    """CPUs to give a local Ray cluster: all of them, less one for the driver from 4 CPUs on."""
    total = available_cpus() if total is None else total
    return total - 1 if total >= DRIVER_RESERVE_MIN_CPUS else total


def use_threads(threads: float | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (default: :func:`available_cpus`); returns it."""
    import torch

    count = available_cpus() if threads is None else max(1, int(threads))
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def thread_report() -> dict[str, object]:
    """What this process runs with: torch threads and the OpenMP wait policy in its environment."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}

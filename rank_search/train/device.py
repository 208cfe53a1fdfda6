"""Training-side device helpers: the device a run trains on, its share of a GPU, and the
non-finite check that never stalls the GPU.

* :func:`training_device`: ``TrainConfig.device`` as a ``torch.device`` (``"auto"`` picks CUDA).
  (Latency timing has its own, stricter :func:`rank_search.latency.resolve_device`.)
* :func:`memory_fraction` / :func:`apply_gpu_share`: trials sharing a GPU (Ray ``gpu: 0.25``)
  each cap their caching allocator at their share of the GPU's memory, less a reserve for
  the CUDA context that lives outside the allocator; cuDNN autotuning stays off while
  neighbours load the GPU (its timings would be skewed and its workspaces could break the cap).
* :class:`FiniteWatch`: is the running loss sum finite? On CUDA every ``window`` steps the
  flag is copied to pinned host memory asynchronously and read a window later, once its
  event has completed, so the check never blocks the host; one blocking read ends the epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = [
    "CONTEXT_RESERVE_BYTES",
    "FiniteWatch",
    "apply_gpu_share",
    "blocking_read",
    "cudnn_autotune",
    "memory_fraction",
    "training_device",
]

CONTEXT_RESERVE_BYTES = 1 << 30
"""Memory per process outside the caching allocator (CUDA context, cuBLAS/cuDNN handles)."""

MIN_FRACTION = 0.05
"""The smallest allocator cap :func:`memory_fraction` gives (a tiny share still trains)."""

_gpu_share: float | None = None  # set by apply_gpu_share for this process


def training_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a CUDA request without CUDA is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"'{name}' requested but CUDA is not available", key="device")
    return device


def memory_fraction(
    share: float, total_bytes: int, reserve_bytes: int = CONTEXT_RESERVE_BYTES
) -> float | None:
    """The allocator cap (fraction of ``total_bytes``) for a process given ``share`` of a GPU.

    ``None`` for a whole GPU or more (no cap). Otherwise ``share`` of the memory less
    ``reserve_bytes`` for the context outside the allocator, so that ``1/share`` such processes
    fit together, and never below :data:`MIN_FRACTION`.
    """
    if not share > 0:
        raise ValueError(f"a GPU share must be > 0, got {share!r}")
    if total_bytes <= 0:
        raise ValueError(f"total memory must be > 0, got {total_bytes!r}")
    if share >= 1.0:
        return None
    return max(MIN_FRACTION, (share * total_bytes - reserve_bytes) / total_bytes)


def apply_gpu_share(share: float | None, device: torch.device | None = None) -> float | None:
    """Cap this process's CUDA allocator at its ``share`` of ``device``; returns the fraction set.

    Also sets ``cudnn.benchmark`` to autotune only with a whole GPU. No-op (``None``) without
    CUDA or without a share (``None`` or 0: not a GPU trial).
    """
    global _gpu_share
    if not share or not torch.cuda.is_available():
        return None
    _gpu_share = share
    device = device if device is not None else torch.device("cuda", torch.cuda.current_device())
    fraction = memory_fraction(share, torch.cuda.get_device_properties(device).total_memory)
    torch.backends.cudnn.benchmark = cudnn_autotune()
    if fraction is not None:
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def cudnn_autotune() -> bool:
    """Whether cuDNN may autotune here: unless :func:`apply_gpu_share` gave this process part of a GPU."""
    return _gpu_share is None or _gpu_share >= 1.0


def blocking_read(flag: Tensor) -> bool:
    """The one place the non-finite check waits for the device (counted by tests)."""
    return bool(flag.item())


class FiniteWatch:
    """Watches a device tensor of running sums for non-finite values without per-step syncs.

    Call :meth:`update` after every step: every ``window`` steps it queues an asynchronous
    device-to-host copy of ``isfinite(sums).all()`` and returns ``False`` as soon as an earlier
    queued flag has arrived false (a non-finite value is then found at most about two windows
    late). :meth:`final` makes the one blocking read, at the end of the epoch.
    ``asynchronous=False`` (CPU, nothing to wait for) reads the flag at once.
    """

    def __init__(self, device: torch.device, window: int, *, asynchronous: bool | None = None) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.device = device
        self.window = window
        self.asynchronous = device.type == "cuda" if asynchronous is None else asynchronous
        self._steps = 0
        self._pending: list[tuple[Tensor, torch.cuda.Event | None]] = []

    def update(self, sums: Tensor) -> bool:
        """Queue a check every ``window`` steps; ``False`` once a finished check saw a non-finite value."""
        self._steps += 1
        if self._steps % self.window == 0:
            flag = torch.isfinite(sums).all()
            if not self.asynchronous:
                return bool(flag)  # CPU: the value is already there, nothing to wait for
            self._pending.append(self._queue(flag))
        return self._drain()

    def final(self, sums: Tensor) -> bool:
        """One blocking read of the current flag (end of the epoch); clears the queue."""
        self._pending.clear()
        self._steps = 0
        return blocking_read(torch.isfinite(sums).all())

    def _queue(self, flag: Tensor) -> tuple[Tensor, torch.cuda.Event | None]:
        if flag.device.type != "cuda":
            return flag.to("cpu"), None
        host = torch.empty((), dtype=torch.bool, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def _drain(self) -> bool:
        """Read every queued flag whose copy has finished (oldest first), never waiting."""
        while self._pending:
            host, event = self._pending[0]
            if event is not None and not event.query():
                break
            self._pending.pop(0)
            if not bool(host):
                self._pending.clear()
                return False
        return True

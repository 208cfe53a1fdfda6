"""Latency budgets for a search: ``budget: {latency_ms: X, device: ..., batch_size: ...}``."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BudgetError, ConfigError
from ._device import DTYPES
from ._quant import PRECISIONS
from ._runtime import RUNTIMES

if TYPE_CHECKING:
    from ..config import RankConfig
    from ._table import LatencyTable

__all__ = ["LATENCY_KEYS", "LatencyBudget", "latency_of_config", "parse_latency_budget"]

LATENCY_KEYS = (
    "latency_ms",
    "device",
    "batch_size",
    "threads",
    "dtype",
    "channels_last",
    "runtime",
    "precision",
)


@dataclass(frozen=True)
class LatencyBudget:
    """At most ``latency_ms`` per batch of ``batch_size`` on ``device`` (inference export) in
    ``runtime``: ``torch`` (eager) or ``onnxruntime`` (CPU, float32, fastest form per layer);
    ``precision``: ``fp32``, or ``int8`` (onnxruntime only: the model as ``export-model --int8``
    ships it, statically quantized, its forms chosen by INT8 timings)."""

    latency_ms: float
    device: str = "cpu"
    batch_size: int = 1
    threads: int | None = None
    dtype: str = "float32"
    channels_last: bool = True
    runtime: str = "torch"
    precision: str = "fp32"

    def table(self, cache_dir: str | Path | None = None) -> LatencyTable:
        """The cached latency table for this budget's device setting."""
        from ._device import resolve_dtype
        from ._table import LatencyTable

        return LatencyTable.load_or_create(
            self.device,
            threads=self.threads,
            dtype=resolve_dtype(self.dtype),
            channels_last=self.channels_last,
            cache_dir=cache_dir,
            runtime=self.runtime,
            precision=self.precision,
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "latency_ms": self.latency_ms,
            "device": self.device,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "channels_last": self.channels_last,
        }
        if self.threads is not None:
            data["threads"] = self.threads
        if self.runtime != "torch":
            data["runtime"] = self.runtime
        if self.precision != "fp32":
            data["precision"] = self.precision
        return data


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"expected a positive integer, got {value!r}", key=key)
    return value


def _device(value: Any, key: str) -> str:
    ok = isinstance(value, str) and (
        value in ("cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
    )
    if not ok:
        raise ConfigError(f"expected 'cpu', 'cuda' or 'cuda:N', got {value!r}", key=key)
    return str(value)


def parse_latency_budget(
    data: Mapping[str, Any], *, key: str = "budget", other_keys: Collection[str] = ()
) -> LatencyBudget | None:
    """The latency part of a budget mapping, or ``None`` when it has no ``latency_ms``.

    Keys: ``latency_ms`` (> 0, required), ``device`` ('cpu' | 'cuda' | 'cuda:N', default 'cpu'),
    ``batch_size`` (default 1), ``threads`` (CPU threads; default: torch's current count),
    ``dtype`` (float32 | bfloat16 | float16), ``channels_last`` (default true), ``runtime``
    (``torch`` | ``onnxruntime``; onnxruntime needs device cpu and float32), ``precision``
    (``fp32`` | ``int8``; int8 needs runtime onnxruntime). ``other_keys`` are
    keys the caller handles itself (e.g. ``macs``); any other key is a :class:`ConfigError`.
    The device is not checked for availability here (that happens when the table is made).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected an object, got {data!r}", key=key)
    unknown = sorted(set(data) - set(LATENCY_KEYS) - set(other_keys))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; allowed: {[*LATENCY_KEYS, *other_keys]}", key=key)
    if "latency_ms" not in data:
        extra = sorted(set(data) & set(LATENCY_KEYS))
        if extra:
            raise ConfigError(f"{extra} given without latency_ms", key=f"{key}.latency_ms")
        return None
    ms = data["latency_ms"]
    if isinstance(ms, bool) or not isinstance(ms, int | float) or not ms > 0 or ms == float("inf"):
        raise ConfigError(f"expected a positive number of milliseconds, got {ms!r}", key=f"{key}.latency_ms")
    threads = data.get("threads")
    dtype = data.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ConfigError(f"expected one of {list(DTYPES)}, got {dtype!r}", key=f"{key}.dtype")
    channels_last = data.get("channels_last", True)
    if not isinstance(channels_last, bool):
        raise ConfigError(f"expected true or false, got {channels_last!r}", key=f"{key}.channels_last")
    runtime = data.get("runtime", "torch")
    if runtime not in RUNTIMES:
        raise ConfigError(f"expected one of {list(RUNTIMES)}, got {runtime!r}", key=f"{key}.runtime")
    device = _device(data.get("device", "cpu"), f"{key}.device")
    if runtime == "onnxruntime" and (device != "cpu" or dtype != "float32"):
        raise ConfigError("runtime onnxruntime needs device cpu and dtype float32", key=f"{key}.runtime")
    precision = data.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ConfigError(f"expected one of {list(PRECISIONS)}, got {precision!r}", key=f"{key}.precision")
    if precision != "fp32" and runtime != "onnxruntime":
        raise ConfigError(f"precision {precision} needs runtime onnxruntime", key=f"{key}.precision")
    return LatencyBudget(
        latency_ms=float(ms),
        device=device,
        batch_size=_positive_int(data.get("batch_size", 1), f"{key}.batch_size"),
        threads=None if threads is None else _positive_int(threads, f"{key}.threads"),
        dtype=dtype,
        channels_last=channels_last,
        runtime=runtime,
        precision=precision,
    )


def latency_of_config(
    table: LatencyTable, config: RankConfig, batch_size: int, *, measure: bool = True
) -> float:
    """Predicted latency in ms of ``config`` at ``batch_size`` from ``table`` (no model is run).

    With ``measure=False`` it is a pure lookup + interpolation and raises :class:`BudgetError` if
    the table lacks an entry (call :meth:`LatencyTable.prefill` first); with ``measure=True``
    missing entries are timed once and cached.
    """
    try:
        return table.predict(config, batch_size, measure=measure)
    except KeyError as exc:
        hint = "run LatencyTable.prefill(...) or `rank-search latency-table` first"
        raise BudgetError(f"latency table {table.path} has no entry {exc.args[0]!r}; {hint}") from None

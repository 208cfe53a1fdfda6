"""Latency measurement: per-layer timings, "does factorizing pay here?", and a cached latency table.

* :func:`measure_layer_latency` times one layer dense vs low-rank at its in-network input shape;
  :func:`factorization_pays` does it for every layer of a model over a grid of rank ratios.
* :class:`LatencyTable` caches per-layer latencies per device key and predicts a rank config's
  latency (sum of layer latencies + a measured rest-of-network term) without running it.
* :func:`latency_of_config` / :func:`parse_latency_budget` let a search use a latency budget.

Timing: warmup, interleaved repeats, median and quartiles; ``time.perf_counter`` on CPU and
``torch.cuda.Event`` with synchronization on CUDA (see ``_timing``).
"""

from __future__ import annotations

from ._budget import LATENCY_KEYS, LatencyBudget, latency_of_config, parse_latency_budget
from ._device import (
    cpu_model,
    default_cache_dir,
    device_key,
    device_name,
    load_average,
    num_threads,
    resolve_device,
    resolve_dtype,
    warn_if_busy,
)
from ._isa import default_round_to
from ._layers import (
    LayerAdvice,
    LayerTiming,
    build_dense_layer,
    build_layer,
    factorization_pays,
    measure_layer_latency,
    ratio_ranks,
)
from ._runtime import RUNTIMES, check_runtime
from ._table import LatencyTable, TimingSettings, entry_key, rank_grid
from ._timing import Spread, summarize, time_calls, time_interleaved

__all__ = [
    "default_round_to",
    "LATENCY_KEYS",
    "LatencyBudget",
    "LatencyTable",
    "LayerAdvice",
    "LayerTiming",
    "RUNTIMES",
    "Spread",
    "TimingSettings",
    "build_dense_layer",
    "build_layer",
    "check_runtime",
    "cpu_model",
    "default_cache_dir",
    "device_key",
    "device_name",
    "entry_key",
    "factorization_pays",
    "latency_of_config",
    "load_average",
    "measure_layer_latency",
    "num_threads",
    "parse_latency_budget",
    "rank_grid",
    "ratio_ranks",
    "resolve_device",
    "resolve_dtype",
    "summarize",
    "time_calls",
    "time_interleaved",
    "warn_if_busy",
]

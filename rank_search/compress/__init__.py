"""Compress a trained model: allocation baselines (uniform, spectral energy, measured
sensitivity) under the search's budget and rounding, and the ``rank-search compress`` workflow.

Above :mod:`rank_search.trained` (weights, decomposition, BatchNorm recalibration), beside the
search and training layers it drives.
"""

from .allocate import ALLOCATIONS, Option, energy_scores, knapsack, retained_energy, unit_options
from .sensitivity import SensitivityTable, measure_sensitivity
from .workflow import AllocationResult, CompressJob, allocate, resolve_target, run_compress

__all__ = [
    "ALLOCATIONS",
    "AllocationResult",
    "CompressJob",
    "Option",
    "SensitivityTable",
    "allocate",
    "energy_scores",
    "knapsack",
    "measure_sensitivity",
    "resolve_target",
    "retained_energy",
    "run_compress",
    "unit_options",
]

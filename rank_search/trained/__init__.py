"""Start from a trained model: load its weights, decompose its layers, recalibrate BatchNorm.

This layer sits beside :mod:`rank_search.convert` (it imports the schema, the models and the
low-rank layers, never training, search or analysis), so the training loop and the search's
trials can build a warm-started model through it.
"""

from .decompose import (
    Decomposition,
    calibration_batches,
    decompose_model,
    recalibrate_bn,
    relative_errors,
    warm_model,
)
from .weights import WeightsError, load_weights, parse_rename, read_state_dict

__all__ = [
    "Decomposition",
    "WeightsError",
    "calibration_batches",
    "decompose_model",
    "load_weights",
    "parse_rename",
    "read_state_dict",
    "recalibrate_bn",
    "relative_errors",
    "warm_model",
]

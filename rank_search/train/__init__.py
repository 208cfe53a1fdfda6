"""Training: :func:`fit` trains a rank config from scratch; :class:`TrainConfig` holds the settings.

``rank_search.train`` never imports Ray; the search wraps :func:`fit` in a thin adapter.
Modules: ``config`` (settings), ``loop`` (:func:`fit`, results), ``step`` (objective, optimizer,
eager/compiled/CUDA-graph steps), ``schedule`` (learning rate and regularizer weight),
``checkpoint`` (:class:`TrainState`),
``device`` (device, GPU share, non-finite watch), ``dprp`` (dynamic rank pruning), ``run`` (the CLI job).
"""

from __future__ import annotations

from .checkpoint import TrainState, read_checkpoint
from .config import DPRPConfig, TrainConfig, train_config_from_dict
from .device import apply_gpu_share, training_device
from .dprp import export_ranks, svd_everywhere
from .loop import (
    EpochStats,
    Evaluation,
    StopTraining,
    TrainResult,
    evaluate,
    evaluate_split,
    fit,
    match_dataset,
    round_ranks,
)

__all__ = [
    "DPRPConfig",
    "EpochStats",
    "Evaluation",
    "StopTraining",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "apply_gpu_share",
    "evaluate",
    "evaluate_split",
    "export_ranks",
    "fit",
    "match_dataset",
    "read_checkpoint",
    "round_ranks",
    "svd_everywhere",
    "train_config_from_dict",
    "training_device",
]

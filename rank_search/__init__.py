"""rank-search: per-layer ranks for low-rank CNNs trained from scratch.

``import rank_search`` stays light: it never imports ray, optuna or matplotlib, and the
names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

_EXPORTS = {
    "Tucker2Conv2d": "layers",
    "SVDConv2d": "layers",
    "SVDLinear": "layers",
    "LowRankLayer": "layers",
    "create_model": "models",
    "list_models": "models",
    "count_cost": "cost",
    "list_factorizable": "convert",
    "apply_rank_config": "convert",
    "RankConfig": "config",
    "LayerSpec": "config",
    "load_rank_config": "config",
    "save_rank_config": "config",
    "RankSearchError": "errors",
    "ConfigError": "errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'rank_search' has no attribute '{name}'")

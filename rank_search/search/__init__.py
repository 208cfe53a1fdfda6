"""Rank search: spaces, budgets, studies and the Ray Tune + Optuna + ASHA runner.

Modules: ``space`` (space files, resolving against a model, define-by-run sampling), ``budget``
(MACs budgets, projection, uniform starting point), ``study`` (study files, ``--set``),
``searcher`` (the Optuna space function and samplers), ``optuna_search`` (the ``OptunaSearch``
subclass), ``trainable`` (the thin Ray adapter around ``rank_search.train.fit``), ``callbacks``
(driver-side record finalization), ``records`` (trial records), ``runner`` (the search).

``import rank_search.search`` stays light: ray and optuna are imported only where a search runs;
the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Budget": "budget",
    "ResolvedSpace": "space",
    "SearchSpace": "space",
    "Study": "study",
    "TrialRecord": "records",
    "load_space": "space",
    "load_study": "study",
    "parse_budget": "budget",
    "prepare": "runner",
    "read_records": "records",
    "resolve_space": "space",
    "run_search": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'rank_search.search' has no attribute '{name}'")

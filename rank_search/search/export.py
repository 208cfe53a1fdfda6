"""Export the best fully-trained config(s) under a MACs or latency budget as rank-config JSON files.

The files are plain rank-config JSON (:func:`rank_search.config.save_rank_config`), accepted
as-is by ``rank-search train`` and :func:`rank_search.config.load_rank_config`. Each carries
its origin in ``provenance``: ``source``, ``study``, ``mode``, ``trial_id``, ``optuna_trial_number``,
``val_accuracy``, ``epochs``, ``search_dir``, plus ``macs``, ``budget_macs`` and ``place``
(1 = best); the first file also ``selection`` (which rule chose and why, one line) and
``selection_detail`` (the paired test, the tied trials and their p-values); under a latency
budget (``axis="latency"``) ``budget_macs`` is null and
``latency_ms`` and ``budget_latency_ms`` are added.

File names: with ``top=1`` the output path as given; with ``top=K>1`` the best goes to the
output path and the k-th best to ``<stem>-k<suffix>`` beside it (``best.json``,
``best-2.json``, ``best-3.json``, ...). If the output path is an existing directory, the
files are ``best.json``, ``best-2.json``, ... inside it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import RankConfig, rank_config_from_dict, save_rank_config
from ..errors import ConfigError
from .results import SearchResults
from .selection import ALPHA, select_at_budget, selection_note, selection_summary


def output_paths(output: str | Path, count: int) -> list[Path]:
    """The file for each place 1..count (see the module docstring)."""
    path = Path(output)
    if path.is_dir():
        path = path / "best.json"
    return [path] + [path.with_name(f"{path.stem}-{k}{path.suffix}") for k in range(2, count + 1)]


def _json_number(value: Any) -> Any:
    if value is None or pd.isna(value):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value.item() if hasattr(value, "item") else value


def provenance(
    results: SearchResults, row: pd.Series, place: int, budget: float, axis: str = "macs"
) -> dict[str, Any]:
    """Where an exported config came from; ``budget`` is in the unit of ``axis`` (MACs, or ms for
    ``axis="latency"``) and is written as ``budget_macs`` or ``budget_latency_ms``."""
    number = row["optuna_trial_number"]
    out = {
        "source": "rank-search search",
        "study": results.manifest.study_name,
        "mode": results.manifest.mode,
        "trial_id": str(row["trial_id"]),
        "optuna_trial_number": None if pd.isna(number) else int(number),
        "val_accuracy": _json_number(float(row["val_accuracy"])),
        "epochs": int(row["epochs"]),
        "search_dir": str(results.directory.resolve()),
        "macs": int(row["macs"]),
        "budget_macs": int(budget) if axis == "macs" else None,
        "place": place,
        "tags": list(row["tags"]),
    }
    if axis == "latency":
        out.update(latency_ms=_json_number(float(row["latency_ms"])), budget_latency_ms=float(budget))
    return out


def trial_rank_config(results: SearchResults, trial_id: str) -> RankConfig:
    """The validated rank config a trial trained (its ``provenance`` dropped)."""
    data = dict(results.records[trial_id]["rank_config"])
    data.pop("provenance", None)
    try:
        return rank_config_from_dict(data)
    except ConfigError as exc:
        raise exc.with_source(f"{results.directory / 'trials' / trial_id}.json (rank_config)") from None


def export_best(
    results: SearchResults,
    budget: float,
    output: str | Path,
    *,
    top: int = 1,
    metric: str = "val_accuracy",
    axis: str = "macs",
    alpha: float = ALPHA,
) -> list[Path]:
    """Write the ``top`` best fully-trained configs with cost ``<= budget``; return the paths.

    The order is :func:`~rank_search.search.selection.select_at_budget`'s (the cheapest trial the
    best one does not beat by a paired test at level ``alpha``; the first file's
    ``provenance.selection`` says which rule chose and why).

    The cost (and ``budget``) is MACs, or the predicted ``latency_ms`` for ``axis="latency"`` (ms).

    Raises :class:`~rank_search.errors.BudgetError` (naming the cheapest fully-trained trial)
    when no fully-trained trial meets the budget. Fewer than ``top`` files are written when
    fewer trials fit.
    """
    chosen = select_at_budget(results.trials, budget, top=top, metric=metric, axis=axis, alpha=alpha)
    return export_rows(results, chosen, budget, output, axis=axis)


def export_rows(
    results: SearchResults,
    chosen: pd.DataFrame,
    budget: float,
    output: str | Path,
    *,
    axis: str = "macs",
) -> list[Path]:
    """Write the trials ``chosen`` (rows of ``results.trials``, best first, as
    :func:`~rank_search.search.selection.select_at_budget` returns them); return the paths."""
    written = []
    for place, (path, (_, row)) in enumerate(zip(output_paths(output, len(chosen)), chosen.iterrows()), 1):
        config = trial_rank_config(results, str(row["trial_id"]))
        config.provenance = provenance(results, row, place, budget, axis)
        if place == 1 and (note := selection_note(chosen)):
            config.provenance["selection"] = note
            config.provenance["selection_detail"] = selection_summary(chosen)
        written.append(save_rank_config(config, path))
    return written

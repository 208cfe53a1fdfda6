"""Load a search directory into one pandas DataFrame, one row per trial.

The input is the directory written by ``rank-search search`` (see ``docs/interfaces.md``):
``search.json`` (the manifest) and ``trials/<trial_id>.json`` (one record per trial). Reading
never needs Ray or Optuna, and works while the search is still running (records with status
``running``) or after it was interrupted.

Columns of :attr:`SearchResults.trials`, in this order:

* ``trial_id``, ``optuna_trial_number`` (nullable int), ``status``, ``epochs``, ``epochs_planned``,
  ``fully_trained`` (status ``completed`` and ``epochs >= epochs_planned`` and a finite
  ``val_accuracy``), ``tags`` (list of str);
* ``macs``, ``dense_macs``, ``macs_fraction`` (= macs / dense_macs), ``params``, ``latency_ms``
  (predicted ms per batch under a latency budget; NaN for MACs searches);
* ``val_accuracy`` (last epoch, fraction), ``val_size`` (validation images; NaN in records
  written before it was recorded), ``val_loss`` (last epoch's mean cross-entropy),
  ``val_outcomes`` (the last validation's per-image right/wrong as a bool array, None in records
  without them; :mod:`rank_search.outcomes`), ``best_val_accuracy``, ``wall_time_s``, ``node_id``,
  ``error``;
* ``regularizer``, ``regularizer_weight``;
* per layer, in network (execution) order: ``format:<layer>`` (dense/tucker2/svd) and
  ``rank:<layer>``, the rank as a fraction of the layer's full rank (tucker2: the mean of
  ``rank_in/C_in`` and ``rank_out/C_out``; dense: 1.0), and the raw ranks ``rank_in:<layer>``,
  ``rank_out:<layer>`` (tucker2) and ``svd_rank:<layer>`` (svd), missing where they don't apply;
* ``param:<name>`` for every sampled search-space value;
* ``val_accuracy@1`` .. ``val_accuracy@E``, the validation accuracy after each epoch
  (E = the largest ``epochs_planned``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import RankSearchError
from ..outcomes import decode_outcomes
from .records import INVALID_DIR, AshaSettings
from .records import STATUSES as TRIAL_STATUSES

if TYPE_CHECKING:
    from ..convert import LayerInfo

SEARCH_FORMAT = "rank-search/search"
SEARCH_VERSION = 1
REQUIRED_TRIAL_KEYS = ("trial_id", "status", "epochs", "epochs_planned", "rank_config")
RAW_RANK_COLUMNS = {"rank_in": "rank_in", "rank_out": "rank_out", "rank": "svd_rank"}


class SearchDirError(RankSearchError):
    """A search directory or one of its files is missing or malformed."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class SearchManifest:
    """The parsed ``search.json``; ``raw`` keeps every field as written."""

    path: Path
    study_name: str
    storage: str | None
    model: str | None
    mode: str | None
    status: str
    budget_macs: int | None
    dense_macs: int | None
    epochs_per_trial: int | None
    asha: AshaSettings
    metric: str
    raw: dict[str, Any] = field(default_factory=dict)
    budget_latency_ms: float | None = None  # latency budgets only (else None)
    latency_device: str | None = None
    latency_batch_size: int | None = None


@dataclass
class SearchResults:
    """A loaded search directory: manifest, the trials frame and the raw trial records."""

    directory: Path
    manifest: SearchManifest
    trials: pd.DataFrame
    records: dict[str, dict[str, Any]]
    layers: list[str]
    layer_infos: dict[str, LayerInfo]

    @property
    def dense_macs(self) -> int | None:
        """Dense model MACs: from the manifest, else from the trial records."""
        if self.manifest.dense_macs:
            return self.manifest.dense_macs
        values = self.trials["dense_macs"].dropna()
        return int(values.iloc[0]) if len(values) else None

    def fully_trained(self) -> pd.DataFrame:
        """The rows of trials that ran every planned epoch and completed."""
        return self.trials[self.trials["fully_trained"]]


# --- reading files ------------------------------------------------------------------------------


def read_json(path: Path, what: str) -> Any:
    """Parse ``path`` as JSON, or raise :class:`SearchDirError` naming the file and reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SearchDirError(path, f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SearchDirError(path, f"cannot read {what}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SearchDirError(
            path, f"malformed JSON in {what} at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


def _opt_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _opt_float(value: Any) -> float | None:
    number = _num(value)
    return number if math.isfinite(number) else None


def _parse_asha(data: Any) -> AshaSettings:
    if not isinstance(data, Mapping):
        return AshaSettings(enabled=False)
    return AshaSettings(
        enabled=bool(data.get("enabled", False)),
        grace_period=_opt_int(data.get("grace_period")) or 1,
        reduction_factor=_opt_float(data.get("reduction_factor")) or 3.0,
    )


def load_manifest(directory: str | Path) -> SearchManifest:
    """Read and check ``DIR/search.json`` (format id and version)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SearchDirError(directory, "not a directory (expected a search directory with search.json)")
    path = directory / "search.json"
    if not path.exists():
        raise SearchDirError(path, "search.json not found; is this a `rank-search search` directory?")
    data = read_json(path, "search manifest")
    if not isinstance(data, dict):
        raise SearchDirError(path, f"expected a JSON object, got {type(data).__name__}")
    if data.get("format") != SEARCH_FORMAT:
        raise SearchDirError(path, f"key 'format': expected {SEARCH_FORMAT!r}, got {data.get('format')!r}")
    if data.get("version") != SEARCH_VERSION:
        raise SearchDirError(
            path, f"key 'version': unsupported version {data.get('version')!r}; this reads {SEARCH_VERSION}"
        )
    model = data.get("model")
    return SearchManifest(
        path=path,
        study_name=str(data.get("study_name") or directory.name),
        storage=data.get("storage") if isinstance(data.get("storage"), str) else None,
        model=model if isinstance(model, str) else None,
        mode=data.get("mode"),
        status=str(data.get("status") or "unknown"),
        budget_macs=_opt_int(data.get("budget_macs")),
        dense_macs=_opt_int(data.get("dense_macs")),
        epochs_per_trial=_opt_int(data.get("epochs_per_trial")),
        asha=_parse_asha(data.get("asha")),
        metric=str(data.get("metric") or "val_accuracy"),
        raw=data,
        budget_latency_ms=_opt_float(data.get("budget_latency_ms")),
        latency_device=data.get("latency_device") if isinstance(data.get("latency_device"), str) else None,
        latency_batch_size=_opt_int(data.get("latency_batch_size")),
    )


def _check_record(path: Path, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SearchDirError(path, f"expected a JSON object, got {type(data).__name__}")
    for key in REQUIRED_TRIAL_KEYS:
        if key not in data:
            raise SearchDirError(path, f"key '{key}': missing required field")
    if data["status"] not in TRIAL_STATUSES:
        raise SearchDirError(
            path, f"key 'status': unknown status {data['status']!r}; expected one of {list(TRIAL_STATUSES)}"
        )
    config = data["rank_config"]
    if not isinstance(config, dict) or not isinstance(config.get("layers", {}), dict):
        raise SearchDirError(path, "key 'rank_config': expected a rank-config object with a 'layers' object")
    for name, spec in config.get("layers", {}).items():
        if not isinstance(spec, dict):
            raise SearchDirError(path, f"key 'rank_config.layers.{name}': expected an object, got {spec!r}")
    for key in ("epochs", "epochs_planned"):
        if _opt_int(data[key]) is None:
            raise SearchDirError(path, f"key '{key}': expected an integer, got {data[key]!r}")
    return data


def load_trial_records(directory: str | Path) -> dict[str, dict[str, Any]]:
    """Every ``DIR/trials/*.json`` record, keyed by trial id (hidden temporary files skipped)."""
    trials_dir = Path(directory) / "trials"
    if not trials_dir.is_dir():
        raise SearchDirError(trials_dir, "no trials directory; the search has not recorded any trial yet")
    paths = sorted(p for p in trials_dir.glob("*.json") if not p.name.startswith("."))
    if not paths:
        raise SearchDirError(trials_dir, "no trial records (trials/*.json); nothing to analyze yet")
    records: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            data = read_json(path, "trial record")
        except SearchDirError as exc:  # cut off or damaged: never counted, never skipped silently
            hint = "`rank-search search ... --resume` sets it aside"
            raise SearchDirError(path, f"{exc.reason}; {hint}") from None
        record = _check_record(path, data)
        trial_id = str(record["trial_id"])
        if trial_id in records:
            raise SearchDirError(path, f"duplicate trial_id {trial_id!r}")
        records[trial_id] = record
    for path in sorted((trials_dir / INVALID_DIR).glob("*.json")):
        if path.name.split(".")[0] in records:  # set aside, then rerun by --resume
            continue
        warnings.warn(
            f"{path}: an unreadable trial record set aside by `search --resume`; "
            f"trial {path.name.split('.')[0]} is not in these results",
            stacklevel=2,
        )
    return records


# --- layers -------------------------------------------------------------------------------------


def _layer_infos(directory: Path, records: Mapping[str, Mapping[str, Any]]) -> dict[str, LayerInfo]:
    """Factorizable layers of the searched model, in execution order, from the first rank config."""
    from ..convert import layer_infos

    trial_id, record = next(iter(records.items()))
    config = record["rank_config"]
    try:
        model_name = str(config["model"]["name"])
        num_classes = int(config["model"].get("num_classes", 10))
        input_size = tuple(int(v) for v in config["input_size"])
        return layer_infos(model_name, num_classes, input_size)
    except (KeyError, TypeError, ValueError, AttributeError, RankSearchError) as exc:
        path = directory / "trials" / f"{trial_id}.json"
        raise SearchDirError(path, f"key 'rank_config': no usable model/input_size ({exc})") from None


def layer_order(records: Mapping[str, Mapping[str, Any]], infos: Mapping[str, LayerInfo]) -> list[str]:
    """Layers named in any trial's rank config, in network order (unknown names last)."""
    named: set[str] = set()
    for record in records.values():
        named.update(record["rank_config"].get("layers", {}))
    order = [name for name in infos if name in named]
    return order + sorted(named - set(order))


def rank_ratio(info: LayerInfo | None, spec: Mapping[str, Any]) -> float:
    """A layer's rank as a fraction of its full rank (tucker2: mean over in/out; dense: 1)."""
    fmt = spec.get("format", "dense")
    if fmt == "dense":
        return 1.0
    if info is None or fmt not in info.full_ranks:
        return math.nan
    full = info.full_ranks[fmt]
    ratios = [float(spec[key]) / full[key] for key in full if key in spec]
    return float(np.mean(ratios)) if ratios else math.nan


def _layer_columns(spec: Mapping[str, Any], name: str, info: LayerInfo | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        f"format:{name}": spec.get("format", "dense"),
        f"rank:{name}": rank_ratio(info, spec),
    }
    for key, column in RAW_RANK_COLUMNS.items():
        row[f"{column}:{name}"] = spec.get(key, math.nan)
    return row


# --- the frame ----------------------------------------------------------------------------------


def _num(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _base_row(record: Mapping[str, Any]) -> dict[str, Any]:
    epochs, planned = int(record["epochs"]), int(record["epochs_planned"])
    accuracy = _num(record.get("val_accuracy"))
    macs, dense = _num(record.get("macs")), _num(record.get("dense_macs"))
    regularizer = record["rank_config"].get("regularizer", {}) or {}
    return {
        "trial_id": str(record["trial_id"]),
        "optuna_trial_number": _opt_int(record.get("optuna_trial_number")),
        "status": record["status"],
        "epochs": epochs,
        "epochs_planned": planned,
        "fully_trained": record["status"] == "completed"
        and epochs >= planned
        and math.isfinite(accuracy)
        and math.isfinite(macs),
        "tags": [str(t) for t in record.get("tags") or []],
        "macs": macs,
        "dense_macs": dense,
        "macs_fraction": macs / dense if dense and math.isfinite(dense) else math.nan,
        "params": _num(record.get("params")),
        "latency_ms": _num(record.get("latency_ms")),
        "val_accuracy": accuracy,
        "val_size": _num(record.get("val_size")),
        "val_loss": _last_val_loss(record),
        "val_outcomes": decode_outcomes(record.get("val_outcomes")),
        "best_val_accuracy": _num(record.get("best_val_accuracy")),
        "wall_time_s": _num(record.get("wall_time_s")),
        "node_id": record.get("node_id"),
        "error": record.get("error"),
        "regularizer": regularizer.get("name", "dso"),
        "regularizer_weight": _num(regularizer.get("weight", 1e-3)),
    }


def _last_val_loss(record: Mapping[str, Any]) -> float:
    history = record.get("history") or []
    last = history[-1] if history and isinstance(history[-1], Mapping) else {}
    return _num(last.get("val_loss"))


def _history_columns(record: Mapping[str, Any], max_epochs: int) -> dict[str, float]:
    row = {f"val_accuracy@{e}": math.nan for e in range(1, max_epochs + 1)}
    for entry in record.get("history") or []:
        epoch = _opt_int(entry.get("epoch")) if isinstance(entry, Mapping) else None
        if epoch is not None and 1 <= epoch <= max_epochs:
            row[f"val_accuracy@{epoch}"] = _num(entry.get("val_accuracy"))
    return row


def trials_frame(
    records: Mapping[str, Mapping[str, Any]], layers: list[str], infos: Mapping[str, LayerInfo]
) -> pd.DataFrame:
    """One row per trial (see the module docstring for the columns), in trial order."""
    max_epochs = max(
        [int(r["epochs_planned"]) for r in records.values()]
        + [len(r.get("history") or []) for r in records.values()]
    )
    rows = []
    for record in records.values():
        row = _base_row(record)
        specs = record["rank_config"].get("layers", {}) or {}
        for name in layers:
            row.update(_layer_columns(specs.get(name, {"format": "dense"}), name, infos.get(name)))
        sampled = record.get("sampled") or {}
        row.update({f"param:{k}": v for k, v in sampled.items()})
        row.update(_history_columns(record, max_epochs))
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["optuna_trial_number"] = frame["optuna_trial_number"].astype("Float64").astype("Int64")
    frame = frame.sort_values(["optuna_trial_number", "trial_id"], na_position="last", kind="stable")
    return frame.reset_index(drop=True)


def load_search(directory: str | Path) -> SearchResults:
    """Read a search directory (finished, running or interrupted) into :class:`SearchResults`."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    records = load_trial_records(directory)
    infos = _layer_infos(directory, records)
    layers = layer_order(records, infos)
    frame = trials_frame(records, layers, infos)
    return SearchResults(directory, manifest, frame, records, layers, infos)


# --- helpers on the frame -----------------------------------------------------------------------


def has_tag(trials: pd.DataFrame, tag: str) -> pd.Series:
    """Boolean mask of the rows carrying ``tag``."""
    return trials["tags"].apply(lambda tags: tag in tags)


def ratio_columns(trials: pd.DataFrame) -> list[str]:
    """The ``rank:<layer>`` columns, in network order."""
    return [c for c in trials.columns if c.startswith("rank:")]


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    """Trials per status (every known status, zeros included) plus ``fully_trained``."""
    counts = {status: int((trials["status"] == status).sum()) for status in TRIAL_STATUSES}
    counts["fully_trained"] = int(trials["fully_trained"].sum())
    counts["total"] = len(trials)
    return counts


INT_COLUMNS = ("macs", "dense_macs", "params")


def flat_for_csv(trials: pd.DataFrame) -> pd.DataFrame:
    """A copy for CSV: ``tags`` joined by ``;``, the MACs/params columns as (nullable) integers and
    ``val_outcomes`` left out (the records keep them)."""
    out = trials.drop(columns=["val_outcomes"], errors="ignore")
    out["tags"] = out["tags"].apply(lambda tags: ";".join(tags))
    for column in INT_COLUMNS:
        if column in out:
            out[column] = out[column].astype("Float64").round().astype("Int64")
    return out


def learning_curves(trials: pd.DataFrame) -> pd.DataFrame:
    """Long table ``trial_id, status, fully_trained, epoch, val_accuracy`` (epochs with a value)."""
    columns = [c for c in trials.columns if c.startswith("val_accuracy@")]
    ids = ["trial_id", "status", "fully_trained"]
    wide = trials[ids + columns]
    long = wide.melt(id_vars=ids, value_vars=columns, var_name="epoch", value_name="val_accuracy")
    long["epoch"] = long["epoch"].str.removeprefix("val_accuracy@").astype(int)
    long = long.dropna(subset=["val_accuracy"])
    return long.sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True)

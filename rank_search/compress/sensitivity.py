"""Measured per-unit sensitivity of a trained model (AIMET-style), cached.

For every option of every unit (:func:`rank_search.compress.allocate.unit_options`): copy the
trained dense model, decompose only that unit's layers at the option's ranks, recalibrate
BatchNorm on ``bn_images`` training images and measure accuracy on the first ``val_images``
validation images. The table is written to a JSON cache keyed by everything it depends on
(weights checksum, model, data, options, image counts, seed) and read back when the key matches.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._io import atomic_write_json
from ..search.space import ResolvedSpace
from ..trained import calibration_batches, decompose_model, recalibrate_bn
from .allocate import Option

if TYPE_CHECKING:
    from ..data import Dataset

__all__ = ["SensitivityTable", "file_digest", "measure_sensitivity", "subset_accuracy"]

CACHE_FORMAT = "rank-search/sensitivity-1"


@dataclass
class SensitivityTable:
    """Accuracy with one unit truncated, per option; the dense model's accuracy on the same images."""

    dense_accuracy: float
    accuracy: dict[Option, float]
    seconds: float
    key: dict[str, Any] = field(default_factory=dict)
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        rows = [{**asdict(option), "accuracy": acc} for option, acc in self.accuracy.items()]
        return {
            "format": CACHE_FORMAT,
            "key": self.key,
            "dense_accuracy": self.dense_accuracy,
            "seconds": self.seconds,
            "rows": rows,
        }


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's ``model.pt`` (a run folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.pt"
    return hashlib.sha256(p.read_bytes()).hexdigest()


def subset_accuracy(model: nn.Module, data: Dataset, images: int, batch_size: int = 500) -> float:
    """Top-1 accuracy on the first ``images`` validation images (all of them if fewer)."""
    was_training = model.training
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in data.batches("val", batch_size=batch_size):
            take = min(len(y), images - seen)
            correct += int((model(x[:take]).argmax(1) == y[:take]).sum())
            seen += take
            if seen >= images:
                break
    model.train(was_training)
    if seen == 0:
        raise ValueError("the dataset has no validation images (set val_fraction > 0)")
    return correct / seen


def _read_cache(path: Path, key: Mapping[str, Any], options: Sequence[Option]) -> SensitivityTable | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("key") != dict(key):
        return None
    by_option = {
        Option(r["unit"], r["format"], float(r["value"]), int(r["macs_delta"])): r for r in data["rows"]
    }
    if any(o not in by_option for o in options):
        return None
    accuracy = {o: float(by_option[o]["accuracy"]) for o in options}
    return SensitivityTable(float(data["dense_accuracy"]), accuracy, float(data["seconds"]), dict(key), True)


def measure_sensitivity(
    space: ResolvedSpace,
    options: Mapping[str, Sequence[Option]],
    dense: nn.Module,
    data: Dataset,
    *,
    val_images: int = 1000,
    bn_images: int = 512,
    batch_size: int = 256,
    seed: int = 0,
    cache: Path | None = None,
    key: Mapping[str, Any] | None = None,
) -> SensitivityTable:
    """The sensitivity table of the trained ``dense`` model (see the module docstring)."""
    flat = [o for opts in options.values() for o in opts]
    full_key = {**dict(key or {}), "val_images": val_images, "bn_images": bn_images, "seed": seed}
    full_key["options"] = hashlib.sha256(json.dumps([asdict(o) for o in flat]).encode()).hexdigest()[:16]
    if cache is not None:
        hit = _read_cache(cache, full_key, flat)
        if hit is not None:
            return hit
    start = time.perf_counter()
    dense_accuracy = subset_accuracy(dense, data, val_images)
    accuracy = {}
    for option in flat:
        if option.format == "dense":
            accuracy[option] = dense_accuracy
            continue
        model = copy.deepcopy(dense)
        decompose_model(model, space.unit(option.unit).layer_specs(option.format, option.value))
        recalibrate_bn(model, calibration_batches(data, bn_images, batch_size, seed))
        accuracy[option] = subset_accuracy(model, data, val_images)
    table = SensitivityTable(dense_accuracy, accuracy, time.perf_counter() - start, full_key)
    if cache is not None:
        atomic_write_json(cache, table.to_dict())
    return table

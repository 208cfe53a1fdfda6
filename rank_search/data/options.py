"""Options for :func:`rank_search.data.load_data`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rank_search.errors import DataError

__all__ = ["CACHE_ENV", "DataOptions"]

CACHE_ENV = "RANK_SEARCH_CACHE"


@dataclass(frozen=True)
class DataOptions:
    """How to split, cache, augment and feed a dataset.

    Attributes:
        val_fraction: fraction of each class of the source train set held out as the
            validation split (stratified, seeded by ``split_seed``); 0 gives an empty split.
        split_seed: seed of the validation split (and of the ``max_train_samples`` subset).
        cache_dir: where decoded datasets are cached; default ``$RANK_SEARCH_CACHE`` or
            ``~/.cache/rank-search`` (files go to its ``data/`` folder).
        image_size: imagefolder only: decode by resizing the shorter side to this and
            center-cropping a square (resident path, and eval on the streaming path); the
            streaming path trains on ``RandomResizedCrop(image_size)``. ``None``: native size.
        pad: zero padding of the random crop; default ``max(1, size // 8)`` (4 at 32 px, 2 at 16 px).
        flip: random horizontal flip; default True, False for the ``builtin`` digits.
        workers: DataLoader workers on the streaming path (also decoding threads).
        resident_max_bytes: imagefolder only: above this estimated decoded uint8 size
            (train + val + test) the streaming path is used.
        max_train_samples: cap the source train pool to a stratified subset of this many
            images before the validation split (train + val <= this); test is untouched.
        mean, std: per-channel input normalization on [0, 1] pixels, overriding the dataset's
            default (a trained checkpoint needs the normalization it was trained with); both or
            neither, one value per channel.
    """

    val_fraction: float = 0.1
    split_seed: int = 0
    cache_dir: Path | None = None
    image_size: int | None = None
    pad: int | None = None
    flip: bool | None = None
    workers: int = 4
    resident_max_bytes: int = 4 * 2**30
    max_train_samples: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise DataError("mean and std must be given together")
        if self.mean is not None and self.std is not None:
            mean, std = _floats("mean", self.mean), _floats("std", self.std)
            if len(mean) != len(std) or any(v <= 0 for v in std):
                raise DataError(f"mean and std need one value per channel and std > 0, got {mean} and {std}")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        _check_min("image_size", self.image_size, 1)
        _check_min("pad", self.pad, 0)
        _check_min("workers", self.workers, 0)
        _check_min("resident_max_bytes", self.resident_max_bytes, 0)
        _check_min("max_train_samples", self.max_train_samples, 1)
        if self.cache_dir is not None and not isinstance(self.cache_dir, Path):
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    def resolved_cache_dir(self) -> Path:
        """The cache folder: ``cache_dir``, else ``$RANK_SEARCH_CACHE``, else ``~/.cache/rank-search``."""
        if self.cache_dir is not None:
            return self.cache_dir.expanduser()
        env = os.environ.get(CACHE_ENV)
        return Path(env).expanduser() if env else Path.home() / ".cache" / "rank-search"

    def normalization(
        self, default: tuple[tuple[float, ...], tuple[float, ...]]
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)``: the stated ones, else ``default``."""
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        return default

    def resolved_pad(self, height: int, width: int) -> int:
        """The crop padding for images of this size."""
        return self.pad if self.pad is not None else max(1, min(height, width) // 8)

    def resolved_flip(self, default: bool) -> bool:
        """The flip setting, ``default`` when unset."""
        return default if self.flip is None else self.flip


def _check_min(name: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise DataError(f"{name} must be >= {minimum}, got {value}")


def _floats(name: str, values: object) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a list of numbers, got {values!r}") from None
    if not out:
        raise DataError(f"{name} must not be empty")
    return out

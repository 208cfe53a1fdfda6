"""``load_data``: from a spec to a :class:`Dataset` (resident or streaming)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import imagefolder
from .cache import cache_file, cached_source, fingerprint_files
from .dataset import Dataset, ResidentDataset, StreamingDataset
from .options import DataOptions
from .sources import SourceArrays, cifar_files, find_cifar_folder, read_builtin, read_cifar
from .spec import DataSpec, parse_data_spec
from .split import make_split_indices

__all__ = ["NORMALIZATION", "load_data", "load_data_at"]

log = logging.getLogger(__name__)

NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": (imagefolder.IMAGENET_MEAN, imagefolder.IMAGENET_STD),
}


def load_data(spec: DataSpec | str, options: DataOptions | None = None) -> Dataset:
    """Load the dataset named by ``spec`` (a :class:`DataSpec` or a string like ``'cifar10:ROOT'``).

    ``builtin`` and CIFAR are always resident; an image folder is resident when its
    estimated decoded size fits ``options.resident_max_bytes``, else streamed.
    Raises DataError for missing or malformed data, ConfigError for a bad spec string.
    """
    parsed = parse_data_spec(spec) if isinstance(spec, str) else spec
    opts = options if options is not None else DataOptions()
    if parsed.kind == "builtin":
        return _load_builtin(opts)
    assert parsed.root is not None
    root = parsed.root.expanduser()
    if parsed.kind == "imagefolder":
        return _load_image_folder(root, opts)
    return _load_cifar(parsed.kind, root, opts)


def load_data_at(
    spec: str, input_size: Sequence[object], normalization: tuple[Sequence[float], Sequence[float]] | None
) -> Dataset:
    """The dataset ``spec`` as a model taking ``input_size`` ``(C, H, W)`` sees it: normalized with
    ``normalization`` (default: the dataset's), at its native size when that fits, else (an image
    folder) decoded at ``H`` (resize + center crop). A size that cannot fit is a DataError."""
    mean, std = (tuple(normalization[0]), tuple(normalization[1])) if normalization else (None, None)
    data = load_data(spec, DataOptions(mean=mean, std=std))
    want = tuple(input_size)
    if tuple(data.input_size) != want and spec.startswith("imagefolder:") and isinstance(want[-1], int):
        data = load_data(spec, DataOptions(mean=mean, std=std, image_size=int(want[-1])))
    if tuple(data.input_size) != want:
        raise DataError(f"{spec}: images are {tuple(data.input_size)}, the model takes {want}")
    return data


def _indices(labels: np.ndarray, num_test: int, opts: DataOptions) -> dict[str, np.ndarray]:
    return make_split_indices(
        labels,
        num_test,
        val_fraction=opts.val_fraction,
        split_seed=opts.split_seed,
        max_train_samples=opts.max_train_samples,
    )


def _checked_normalization(
    norm: tuple[tuple[float, ...], tuple[float, ...]], channels: int, name: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = norm
    if len(mean) != channels:
        raise DataError(f"{name}: mean/std give {len(mean)} values, the images have {channels} channels")
    return mean, std


def _resident(
    source: SourceArrays,
    name: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    opts: DataOptions,
    flip: bool,
) -> ResidentDataset:
    channels, height, width = source.image_shape
    mean, std = _checked_normalization(opts.normalization((mean, std)), channels, name)
    return ResidentDataset(
        source,
        name=name,
        mean=mean,
        std=std,
        indices=_indices(source.train_y, len(source.test_y), opts),
        pad=opts.resolved_pad(height, width),
        flip=opts.resolved_flip(flip),
    )


def _builtin_cache(opts: DataOptions) -> Path:
    """The decoded built-in digits in the data cache: no scikit-learn import (seconds) in every
    process that loads them (the search's driver and each worker). Keyed by scikit-learn's version
    and the built-in data's settings."""
    from importlib.metadata import PackageNotFoundError, version

    from .sources import BUILTIN_SIZE, BUILTIN_TEST_FRACTION, BUILTIN_TEST_SEED

    try:
        sklearn = version("scikit-learn")
    except PackageNotFoundError:
        sklearn = "unknown"
    key = f"sklearn-{sklearn}-{BUILTIN_SIZE}-{BUILTIN_TEST_FRACTION}-{BUILTIN_TEST_SEED}"
    return cache_file(opts.resolved_cache_dir(), "builtin", Path("/builtin"), None, key)


def _load_builtin(opts: DataOptions) -> ResidentDataset:
    source = cached_source(_builtin_cache(opts), read_builtin)
    channels = source.image_shape[0]
    mean = float(source.train_x.mean()) / 255.0
    std = float(source.train_x.std()) / 255.0
    return _resident(source, "builtin", (mean,) * channels, (std,) * channels, opts, flip=False)


def _load_cifar(kind: str, root: Path, opts: DataOptions) -> ResidentDataset:
    folder = find_cifar_folder(kind, root)
    files = cifar_files(kind, folder)
    path = cache_file(opts.resolved_cache_dir(), kind, folder, None, fingerprint_files(files, folder))
    source = cached_source(path, lambda: read_cifar(kind, folder))
    mean, std = NORMALIZATION[kind]
    return _resident(source, kind, mean, std, opts, flip=True)


def _load_image_folder(root: Path, opts: DataOptions) -> Dataset:
    scan = imagefolder.scan_image_folder(root)
    if opts.image_size is not None:
        size = (opts.image_size, opts.image_size)
    else:
        size = imagefolder.probe_size(scan.paths("train")[0])
    count = len(scan.train) + len(scan.test)
    estimate = count * 3 * size[0] * size[1]
    mean, std = opts.normalization(NORMALIZATION["imagefolder"])
    name = root.resolve().name
    if estimate > opts.resident_max_bytes:
        log.info("%s: ~%.2f GB decoded > resident_max_bytes: streaming with DataLoader", root, estimate / 1e9)
        return StreamingDataset(
            scan,
            name=name,
            size=size,
            mean=mean,
            std=std,
            indices=_indices(scan.labels("train"), len(scan.test), opts),
            flip=opts.resolved_flip(True),
            workers=opts.workers,
        )
    files = scan.paths("train") + scan.paths("test")
    path = cache_file(
        opts.resolved_cache_dir(), "imagefolder", root, opts.image_size, fingerprint_files(files, root)
    )
    source = cached_source(path, lambda: imagefolder.decode_scan(scan, opts.image_size, opts.workers))
    return _resident(source, name, mean, std, opts, flip=True)

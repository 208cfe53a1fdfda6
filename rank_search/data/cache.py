"""Disk cache of decoded sources.

A cache file is an uncompressed ``.npz`` of uint8 images, int64 labels and class names,
written atomically and loaded with ``allow_pickle=False`` (loading never runs code). Its
name carries a hash of the source kind, absolute root, image size and a fingerprint of
the source files (relative path, size and mtime of each), so any changed file gives a
new key and a fresh decode; older files of the same root and size are then removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import numpy as np

from rank_search._io import atomic_write

from .sources import SourceArrays

__all__ = ["cache_file", "cached_source", "fingerprint_files", "load_source", "save_source"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y", "classes")


def fingerprint_files(files: Iterable[str | Path], base: Path) -> str:
    """A hash of each file's path relative to ``base``, size and modification time (ns)."""
    digest = hashlib.sha256()
    for name in files:
        stat = os.stat(name)
        relative = Path(os.path.relpath(name, base)).as_posix()
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_file(cache_dir: Path, kind: str, root: Path, image_size: int | None, fingerprint: str) -> Path:
    """The cache path: ``<cache_dir>/data/<kind>-<root hash>-<size>-<key hash>.npz``."""
    root_text = str(root.resolve())
    root_hash = hashlib.sha256(root_text.encode()).hexdigest()[:10]
    key_text = json.dumps([CACHE_FORMAT, kind, root_text, image_size, fingerprint])
    key_hash = hashlib.sha256(key_text.encode()).hexdigest()[:20]
    size_tag = "native" if image_size is None else f"{image_size}px"
    return cache_dir / "data" / f"{kind}-{root_hash}-{size_tag}-{key_hash}.npz"


def load_source(path: Path) -> SourceArrays | None:
    """The cached source at ``path``, or None when missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in _ARRAY_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("ignoring unreadable data cache %s (%s)", path, exc)
        return None
    if not _valid(arrays):
        log.warning("ignoring malformed data cache %s", path)
        return None
    classes = tuple(str(name) for name in arrays.pop("classes"))
    return SourceArrays(classes=classes, **arrays)


def _valid(arrays: dict[str, np.ndarray]) -> bool:
    images_ok = all(arrays[k].dtype == np.uint8 and arrays[k].ndim == 4 for k in ("train_x", "test_x"))
    labels_ok = all(arrays[k].dtype == np.int64 and arrays[k].ndim == 1 for k in ("train_y", "test_y"))
    sizes_ok = len(arrays["train_x"]) == len(arrays["train_y"]) and len(arrays["test_x"]) == len(
        arrays["test_y"]
    )
    return images_ok and labels_ok and sizes_ok and arrays["train_x"].shape[1:] == arrays["test_x"].shape[1:]


def save_source(path: Path, source: SourceArrays) -> None:
    """Atomically write ``source`` to ``path``; remove older caches of the same root and size."""

    def write(handle: IO[bytes]) -> None:
        np.savez(
            handle,
            train_x=source.train_x,
            train_y=source.train_y,
            test_x=source.test_x,
            test_y=source.test_y,
            classes=np.array(source.classes, dtype=str),
        )

    atomic_write(path, write)
    prefix = path.name.rsplit("-", 1)[0] + "-"
    for old in path.parent.glob(f"{prefix}*.npz"):
        if old != path:
            old.unlink(missing_ok=True)


def cached_source(path: Path, decode: Callable[[], SourceArrays]) -> SourceArrays:
    """Load the source cached at ``path``; on a miss, ``decode`` it and cache the result.

    Nothing is written when ``decode`` fails. A cache that cannot be written (read-only
    folder) is logged and skipped.
    """
    source = load_source(path)
    if source is not None:
        log.info("data cache hit: %s", path)
        return source
    source = decode()
    try:
        save_source(path, source)
        log.info("data cache written: %s", path)
    except OSError as exc:
        log.warning("could not write data cache %s (%s)", path, exc)
    return source

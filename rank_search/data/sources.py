"""Readers of in-memory sources: scikit-learn's digits (``builtin``) and CIFAR pickles.

Every reader returns :class:`SourceArrays`: uint8 images ``(N, C, H, W)`` and int64
labels for the source's own train and test sets. Nothing is ever downloaded.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rank_search.errors import DataError

from .split import stratified_split

__all__ = [
    "BUILTIN_TEST_SEED",
    "CIFAR_LAYOUTS",
    "CifarLayout",
    "SourceArrays",
    "cifar_files",
    "find_cifar_folder",
    "read_builtin",
    "read_cifar",
]

BUILTIN_TEST_FRACTION = 0.2
BUILTIN_TEST_SEED = 20240601  # fixed: the builtin test split never depends on split_seed
BUILTIN_SIZE = 16


@dataclass(frozen=True)
class SourceArrays:
    """A decoded source: uint8 images ``(N, C, H, W)``, int64 labels, and class names."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        c, h, w = self.train_x.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded images."""
        return int(self.train_x.nbytes + self.test_x.nbytes)


# ----------------------------------------------------------------------------- builtin


def read_builtin() -> SourceArrays:
    """scikit-learn's 8x8 digits as uint8 (0..16 -> 0..255), bilinearly upsampled to 16x16, 3 channels.

    The test set is a fixed stratified 20% (seed :data:`BUILTIN_TEST_SEED`).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = _upsample(np.asarray(digits.images, dtype=np.float32) * (255.0 / 16.0), BUILTIN_SIZE)
    labels = np.asarray(digits.target, dtype=np.int64)
    train_pos, test_pos = stratified_split(labels, BUILTIN_TEST_FRACTION, BUILTIN_TEST_SEED)
    classes = tuple(str(int(name)) for name in digits.target_names)
    return SourceArrays(images[train_pos], labels[train_pos], images[test_pos], labels[test_pos], classes)


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (align_corners=False) upsampling of ``(N, H, W)`` floats to uint8 ``(N, 3, size, size)``."""
    import torch

    tensor = torch.from_numpy(images).unsqueeze(1)
    resized = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    as_uint8 = resized.round().clamp(0, 255).to(torch.uint8)
    return as_uint8.expand(-1, 3, -1, -1).contiguous().numpy()


# ------------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class CifarLayout:
    """File names of torchvision's python-format CIFAR download."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    meta_file: str
    names_key: str
    num_classes: int
    torchvision_class: str


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        "batches.meta",
        "label_names",
        10,
        "CIFAR10",
    ),
    "cifar100": CifarLayout(
        "cifar-100-python", ("train",), ("test",), "fine_labels", "meta", "fine_label_names", 100, "CIFAR100"
    ),
}

# The globals a numpy-array pickle may name; anything else is refused (no code runs).
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    *(
        (mod, name)
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    ),
    *((mod, "_frombuffer") for mod in ("numpy.core.numeric", "numpy._core.numeric")),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays, lists, dicts, strings and numbers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def find_cifar_folder(kind: str, root: Path) -> Path:
    """The folder holding the batch files: ``ROOT/<folder>`` or ``ROOT`` itself."""
    layout = CIFAR_LAYOUTS[kind]
    hint = (
        f"expected {root / layout.folder}/ with {', '.join(layout.train_files + layout.test_files)} "
        f"(torchvision's {layout.torchvision_class}(root, download=True) creates it)"
    )
    if not root.is_dir():
        raise DataError(f"{root}: {kind} root folder does not exist; {hint}")
    if (root / layout.folder).is_dir():
        return root / layout.folder
    if (root / layout.train_files[0]).is_file():
        return root
    raise DataError(f"{root}: no {kind} data found; {hint}")


def cifar_files(kind: str, folder: Path) -> list[Path]:
    """The data files (and the meta file, when present) that make up the source."""
    layout = CIFAR_LAYOUTS[kind]
    files = [folder / name for name in layout.train_files + layout.test_files]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise DataError(f"{folder}: {kind} files missing: {', '.join(missing)}")
    meta = folder / layout.meta_file
    return [*files, meta] if meta.is_file() else files


def read_cifar(kind: str, folder: Path) -> SourceArrays:
    """Read ``cifar10``/``cifar100`` python pickles from ``folder`` (see :func:`find_cifar_folder`)."""
    layout = CIFAR_LAYOUTS[kind]
    cifar_files(kind, folder)
    train = [_read_batch(folder / name, layout) for name in layout.train_files]
    test = [_read_batch(folder / name, layout) for name in layout.test_files]
    return SourceArrays(
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        np.concatenate([x for x, _ in test]),
        np.concatenate([y for _, y in test]),
        _read_class_names(folder / layout.meta_file, layout),
    )


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            obj = _ArrayUnpickler(handle, encoding="latin1").load()
    except OSError as exc:
        raise DataError(f"{path}: cannot read CIFAR file ({exc})") from exc
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DataError(f"{path}: unreadable or corrupt CIFAR pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in obj.items()}


def _read_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 (rows are stored channel-major) and int64 labels."""
    batch = _load_pickle(path)
    if "data" not in batch or layout.label_key not in batch:
        raise DataError(f"{path}: CIFAR pickle lacks 'data' or '{layout.label_key}' (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[layout.label_key], dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' should be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DataError(f"{path}: labels outside 0..{layout.num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _read_class_names(path: Path, layout: CifarLayout) -> tuple[str, ...]:
    default = tuple(str(i) for i in range(layout.num_classes))
    if not path.is_file():
        return default
    names = _load_pickle(path).get(layout.names_key)
    if not isinstance(names, list) or len(names) != layout.num_classes:
        return default
    return tuple(name.decode("latin1") if isinstance(name, bytes) else str(name) for name in names)

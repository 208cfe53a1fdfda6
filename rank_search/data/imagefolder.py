"""``imagefolder:ROOT``: ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (else ``ROOT/val/``).

Scanning uses torchvision's ``ImageFolder`` (classes are the sorted train folder names;
the eval folder must have the same ones). Decoding for the resident path uses PIL
(RGB; with ``image_size``: resize the shorter side, then center-crop a square, exactly
like the streaming path's eval transform). PIL and torchvision load lazily.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rank_search.errors import DataError

from .sources import SourceArrays

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FolderScan",
    "decode_images",
    "decode_scan",
    "eval_folder_name",
    "probe_size",
    "scan_image_folder",
    "stream_transforms",
    "with_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_FOLDERS = ("test", "val")  # the first that exists is the source test set


@dataclass(frozen=True)
class FolderScan:
    """The scanned train and eval folders (torchvision ``ImageFolder`` objects, no transforms)."""

    root: Path
    train: Any
    test: Any

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, sorted."""
        return tuple(self.train.classes)

    def paths(self, split: str) -> list[str]:
        """Image paths of ``'train'`` or ``'test'`` in scan order."""
        return [path for path, _ in getattr(self, split).samples]

    def labels(self, split: str) -> np.ndarray:
        """Labels of ``'train'`` or ``'test'`` in scan order."""
        return np.asarray(getattr(self, split).targets, dtype=np.int64)


def eval_folder_name(root: Path) -> str:
    """``test`` if ``ROOT/test`` exists, else ``val``; DataError when neither does."""
    for name in EVAL_FOLDERS:
        if (root / name).is_dir():
            return name
    raise DataError(
        f"{root}: no test/ or val/ folder; expected ROOT/train/<class>/<images> and "
        "ROOT/test/<class>/<images> (or ROOT/val/<class>/<images>)"
    )


def scan_image_folder(root: Path) -> FolderScan:
    """Scan ``root``; DataError when a folder is missing, empty or the class names differ."""
    if not root.is_dir():
        raise DataError(f"{root}: imagefolder root does not exist")
    if not (root / "train").is_dir():
        raise DataError(f"{root}: no train/ folder; expected ROOT/train/<class>/<images>")
    train = _image_folder(root / "train")
    test = _image_folder(root / eval_folder_name(root))
    if test.classes != train.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise DataError(
            f"{test.root}: class folders differ from {train.root}: "
            f"only in train: {only_train or 'none'}; only in {Path(test.root).name}: {only_test or 'none'}"
        )
    return FolderScan(root, train, test)


def _image_folder(folder: Path) -> Any:
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(folder))
    except FileNotFoundError as exc:
        raise DataError(f"{folder}: {exc}") from exc


def probe_size(path: str) -> tuple[int, int]:
    """``(H, W)`` of one image, read from its header."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc
    return (height, width)


def decode_images(paths: Sequence[str], image_size: int | None, workers: int = 4) -> np.ndarray:
    """Decode ``paths`` to uint8 ``(N, 3, H, W)`` with ``workers`` threads.

    Without ``image_size`` every image must have the first one's size (DataError otherwise).
    """
    if not paths:
        return np.zeros((0, 3, image_size or 1, image_size or 1), dtype=np.uint8)
    first = _decode_one(paths[0], image_size)
    out = np.empty((len(paths), *first.shape), dtype=np.uint8)

    def fill(index: int) -> None:
        image = first if index == 0 else _decode_one(paths[index], image_size)
        if image.shape != first.shape:
            raise DataError(
                f"{paths[index]}: image is {image.shape[1]}x{image.shape[2]} but {paths[0]} is "
                f"{first.shape[1]}x{first.shape[2]}; set image_size to decode images of mixed sizes"
            )
        out[index] = image

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(fill, range(len(paths))))
    return out


def _decode_one(path: str, image_size: int | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except OSError as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from exc
    if image_size is not None:
        from torchvision.transforms import functional as F

        rgb = F.center_crop(F.resize(rgb, image_size), [image_size, image_size])
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def decode_scan(scan: FolderScan, image_size: int | None, workers: int) -> SourceArrays:
    """Decode every train and test image of ``scan`` (see :func:`decode_images`)."""
    train_x = decode_images(scan.paths("train"), image_size, workers)
    test_x = decode_images(scan.paths("test"), image_size, workers)
    if len(test_x) and train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{scan.root}: test images are {test_x.shape[2]}x{test_x.shape[3]} but train images are "
            f"{train_x.shape[2]}x{train_x.shape[3]}; set image_size"
        )
    return SourceArrays(train_x, scan.labels("train"), test_x, scan.labels("test"), scan.classes)


def stream_transforms(size: tuple[int, int], flip: bool) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """PIL transforms of the streaming path, both ending in a uint8 ``(3, H, W)`` tensor.

    Train: ``RandomResizedCrop(size)`` and (if ``flip``) ``RandomHorizontalFlip``.
    Eval: ``Resize(min(size))`` (shorter side) then ``CenterCrop(size)``.
    """
    from torchvision import transforms as T

    train_steps: list[Any] = [T.RandomResizedCrop(list(size))]
    if flip:
        train_steps.append(T.RandomHorizontalFlip())
    train = T.Compose([*train_steps, T.PILToTensor()])
    evaluate = T.Compose([T.Resize(min(size)), T.CenterCrop(list(size)), T.PILToTensor()])
    return train, evaluate


def with_transform(folder: Any, transform: Callable[[Any], Any]) -> Any:
    """A shallow copy of an ``ImageFolder`` (sharing its sample list) with ``transform``."""
    clone = copy.copy(folder)
    clone.transform = transform
    return clone

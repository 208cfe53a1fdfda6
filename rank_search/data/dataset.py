"""The :class:`Dataset` that :func:`load_data` returns, and its two implementations.

* :class:`ResidentDataset`: every split is a uint8 tensor moved once to the requested
  device; batches are sliced, augmented (:func:`random_crop_flip`) and normalized there.
  No DataLoader, no workers.
* :class:`StreamingDataset`: torchvision ``ImageFolder`` + ``DataLoader`` with PIL
  transforms, for image folders too large to hold decoded; batches arrive as uint8 and
  are normalized on the device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .augment import normalize, random_crop_flip
from .sources import SourceArrays

__all__ = ["SPLITS", "Dataset", "ResidentDataset", "StreamingDataset"]

SPLITS = ("train", "val", "test")
Batch = tuple[Tensor, Tensor]


def _device(device: torch.device | str) -> torch.device:
    """``device`` with the current CUDA index filled in, so equal devices compare equal."""
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return resolved


class Dataset(ABC):
    """A dataset split into ``train``, ``val`` and ``test``, fed as normalized batches.

    Attributes:
        name: short name (``builtin``, ``cifar10``, ``cifar100`` or the image folder's name).
        num_classes: number of classes.
        classes: class names.
        input_size: ``(C, H, W)`` as the model sees it.
        mean, std: per-channel normalization.
        resident: True when the decoded data lives in memory (or on the device).
    """

    resident: bool = False

    def __init__(
        self,
        *,
        name: str,
        classes: Sequence[str],
        input_size: tuple[int, int, int],
        mean: Sequence[float],
        std: Sequence[float],
        indices: dict[str, np.ndarray],
    ) -> None:
        self.name = name
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        self.input_size = input_size
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self._indices = {split: np.asarray(indices[split], dtype=np.int64) for split in SPLITS}
        self._stats: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split}={self.split_size(split)}" for split in SPLITS)
        kind = "resident" if self.resident else "streaming"
        return f"{type(self).__name__}({self.name!r}, {kind}, input_size={self.input_size}, {sizes})"

    def split_size(self, split: str) -> int:
        """Number of samples in ``split``."""
        return len(self._indices[_check_split(split)])

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        """Number of batches :meth:`batches` yields for ``split``."""
        size = self.split_size(split)
        _check_batch_size(batch_size)
        return size // batch_size if drop_last else math.ceil(size / batch_size)

    def source_indices(self, split: str) -> np.ndarray:
        """Indices of ``split`` into the original source split (train and val: source train)."""
        return self._indices[_check_split(split)].copy()

    def batches(
        self,
        split: str,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        train: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> Iterator[Batch]:
        """Yield normalized ``dtype`` images ``(N, C, H, W)`` and int64 labels, both on ``device``.

        ``train=True`` shuffles (``torch.randperm`` on ``generator``) and augments (random
        crop with padding and horizontal flip); otherwise the split is read in order as is.
        """
        _check_split(split)
        _check_batch_size(batch_size)
        target = _device(device)
        return self._iterate(split, batch_size, target, train, generator, drop_last, channels_last, dtype)

    @abstractmethod
    def _uint8_batches(
        self,
        split: str,
        batch_size: int,
        device: torch.device,
        train: bool,
        generator: torch.Generator | None,
        drop_last: bool,
    ) -> Iterator[Batch]:
        """Yield uint8 image batches and int64 labels on ``device``, augmented when ``train``."""

    def _iterate(
        self,
        split: str,
        batch_size: int,
        device: torch.device,
        train: bool,
        generator: torch.Generator | None,
        drop_last: bool,
        channels_last: bool,
        dtype: torch.dtype,
    ) -> Iterator[Batch]:
        if self.split_size(split) == 0:
            return
        mean, std = self._stats_on(device)
        for images, labels in self._uint8_batches(split, batch_size, device, train, generator, drop_last):
            yield normalize(images, mean, std, dtype=dtype, channels_last=channels_last), labels

    def _stats_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._stats:
            self._stats[device] = (
                torch.tensor(self.mean, dtype=torch.float32, device=device),
                torch.tensor(self.std, dtype=torch.float32, device=device),
            )
        return self._stats[device]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


class ResidentDataset(Dataset):
    """Decoded uint8 splits kept in memory; each moves once to a device and stays there."""

    resident = True

    def __init__(
        self,
        source: SourceArrays,
        *,
        name: str,
        mean: Sequence[float],
        std: Sequence[float],
        indices: dict[str, np.ndarray],
        pad: int,
        flip: bool,
    ) -> None:
        super().__init__(
            name=name,
            classes=source.classes,
            input_size=source.image_shape,
            mean=mean,
            std=std,
            indices=indices,
        )
        self.pad = pad
        self.flip = flip
        self._cpu = {
            "train": _tensors(source.train_x, source.train_y, self._indices["train"]),
            "val": _tensors(source.train_x, source.train_y, self._indices["val"]),
            "test": _tensors(source.test_x, source.test_y, None),
        }
        self._placed: dict[tuple[str, torch.device], Batch] = {}

    def tensors(self, split: str, device: torch.device | str = "cpu") -> Batch:
        """The whole split as uint8 images ``(N, C, H, W)`` and int64 labels on ``device`` (cached)."""
        key = (_check_split(split), _device(device))
        if key not in self._placed:
            images, labels = self._cpu[split]
            self._placed[key] = (images.to(key[1]), labels.to(key[1]))
        return self._placed[key]

    def _uint8_batches(
        self,
        split: str,
        batch_size: int,
        device: torch.device,
        train: bool,
        generator: torch.Generator | None,
        drop_last: bool,
    ) -> Iterator[Batch]:
        images, labels = self.tensors(split, device)
        count = len(labels)
        order = _permutation(count, generator, device) if train else None
        stop = count - count % batch_size if drop_last else count
        for start in range(0, stop, batch_size):
            if order is None:
                batch_x, batch_y = images[start : start + batch_size], labels[start : start + batch_size]
            else:
                picked = order[start : start + batch_size]
                batch_x, batch_y = images[picked], labels[picked]
            if train:
                batch_x = random_crop_flip(batch_x, self.pad, self.flip, generator)
            yield batch_x, batch_y


def _tensors(images: np.ndarray, labels: np.ndarray, picked: np.ndarray | None) -> Batch:
    if picked is not None:
        images, labels = images[picked], labels[picked]
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))


def _permutation(count: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    draw_device = generator.device if generator is not None else device
    return torch.randperm(count, generator=generator, device=draw_device).to(device)


class StreamingDataset(Dataset):
    """Image folders read through ``DataLoader`` workers with PIL transforms.

    Train batches use ``RandomResizedCrop`` + flip, eval batches resize the shorter side
    and center-crop. ``generator`` seeds the shuffle and (with ``workers > 0``) the
    workers' augmentation; with ``workers == 0`` augmentation draws from torch's global RNG.
    """

    resident = False

    def __init__(
        self,
        scan: Any,
        *,
        name: str,
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        indices: dict[str, np.ndarray],
        flip: bool,
        workers: int,
    ) -> None:
        super().__init__(
            name=name, classes=scan.classes, input_size=(3, *size), mean=mean, std=std, indices=indices
        )
        self.scan = scan
        self.size = size
        self.flip = flip
        self.workers = workers

    def loader(
        self,
        split: str,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        train: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> torch.utils.data.DataLoader[Any]:
        """The ``DataLoader`` of uint8 batches behind :meth:`batches`."""
        from .imagefolder import stream_transforms, with_transform

        train_tf, eval_tf = stream_transforms(self.size, self.flip)
        folder = self.scan.test if split == "test" else self.scan.train
        subset = torch.utils.data.Subset(
            with_transform(folder, train_tf if train else eval_tf), self._indices[split].tolist()
        )
        return torch.utils.data.DataLoader(
            subset,
            batch_size=batch_size,
            shuffle=train,
            generator=_cpu_generator(generator),
            num_workers=self.workers,
            pin_memory=_device(device).type == "cuda",
            drop_last=drop_last,
        )

    def _uint8_batches(
        self,
        split: str,
        batch_size: int,
        device: torch.device,
        train: bool,
        generator: torch.Generator | None,
        drop_last: bool,
    ) -> Iterator[Batch]:
        loader = self.loader(
            split, batch_size=batch_size, device=device, train=train, generator=generator, drop_last=drop_last
        )
        for images, labels in loader:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def _cpu_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """``generator`` if it is a CPU one, else a CPU generator seeded from it."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator().manual_seed(seed)

"""Datasets for training and rank search: specs, splits, caching, augmentation, batches.

``load_data('cifar10:ROOT', DataOptions(...))`` returns a :class:`Dataset` with
``train``/``val``/``test`` splits (val carved, stratified and seeded, from the source
train set). Small datasets are resident: decoded once into a disk cache, held as uint8
on the device, augmented there with whole-batch tensor ops. Large image folders stream
through a ``DataLoader``. scikit-learn, PIL and torchvision are imported only when used.
"""

from __future__ import annotations

from .augment import crop_flip_with, normalize, random_crop_flip
from .dataset import SPLITS, Dataset, ResidentDataset, StreamingDataset
from .loaders import load_data, load_data_at
from .options import DataOptions
from .sources import SourceArrays
from .spec import DataSpec, parse_data_spec
from .split import make_split_indices, stratified_split

__all__ = [
    "SPLITS",
    "DataOptions",
    "DataSpec",
    "Dataset",
    "ResidentDataset",
    "SourceArrays",
    "StreamingDataset",
    "crop_flip_with",
    "load_data",
    "load_data_at",
    "make_split_indices",
    "normalize",
    "parse_data_spec",
    "random_crop_flip",
    "stratified_split",
]

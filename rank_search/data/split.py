"""Stratified, seeded splits of a labelled index set."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["make_split_indices", "stratified_split"]

Seed = int | tuple[int, ...]


def _quotas(counts: np.ndarray, fraction: float) -> np.ndarray:
    """Per-class sample counts, each floor or ceil of ``fraction * count``, summing to round(total)."""
    exact = counts * fraction
    base = np.floor(exact).astype(np.int64)
    total = math.floor(float(exact.sum()) + 0.5)
    short = max(0, min(total - int(base.sum()), len(counts)))
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:short]] += 1
    return np.minimum(base, counts)


def stratified_split(labels: np.ndarray, fraction: float, seed: Seed) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(labels)-1`` into ``(rest, held)``, both sorted.

    ``held`` takes ``fraction`` of every class (rounded to floor or ceil so the total is
    ``round(fraction * n)``), chosen at random by ``numpy.random.default_rng(seed)``.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quotas = _quotas(counts, fraction)
    groups = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    held_parts = [rng.permutation(group)[:quota] for group, quota in zip(groups, quotas)]
    held = np.sort(np.concatenate(held_parts)) if held_parts else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask).astype(np.int64), held.astype(np.int64)


def make_split_indices(
    train_labels: np.ndarray,
    num_test: int,
    *,
    val_fraction: float,
    split_seed: int,
    max_train_samples: int | None = None,
) -> dict[str, np.ndarray]:
    """Index arrays of the ``train``/``val``/``test`` splits into the source train and test sets.

    ``train`` and ``val`` partition the source train set (or its stratified
    ``max_train_samples`` subset); ``test`` is the whole source test set.
    """
    labels = np.asarray(train_labels)
    pool = np.arange(len(labels), dtype=np.int64)
    if max_train_samples is not None and max_train_samples < len(labels):
        _, pool = stratified_split(labels, max_train_samples / len(labels), (split_seed, 1))
    rest, held = stratified_split(labels[pool], val_fraction, (split_seed, 0))
    return {"train": pool[rest], "val": pool[held], "test": np.arange(num_test, dtype=np.int64)}

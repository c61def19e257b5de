"""Batching: the order of items (one ``numpy.random.Generator`` permutation an epoch) and stacked NumPy batches.

For data parallelism, every replica calls :func:`batch_indices` with a generator in the same state, so all agree
on the global batches, and takes its own slice of each (:func:`shard`); the items themselves do not depend on who
reads them (see :class:`~unmix.data.UMXDataset`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["batch_indices", "batches", "shard", "stack"]


def batch_indices(
    n: int, batch_size: int, rng: np.random.Generator | None = None, shuffle: bool = True, drop_last: bool = True
) -> list[np.ndarray]:
    """Indices of ``n`` items in batches of ``batch_size`` (a permutation from ``rng`` when ``shuffle``; the last,
    incomplete batch dropped when ``drop_last``, as demucs's training loop does for ``Remix``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        if rng is None:
            raise ValueError("shuffle=True needs an rng (numpy.random.Generator)")
        order = rng.permutation(n)
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_last else n
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Replica ``rank``'s contiguous part of a global batch (the batch size must divide by ``world_size``)."""
    if len(indices) % world_size:
        raise ValueError(f"a batch of {len(indices)} does not split over {world_size} replicas")
    per = len(indices) // world_size
    return indices[rank * per : (rank + 1) * per]


def stack(items: Sequence[Any]) -> Any:
    """Stack items (arrays, or tuples of arrays) along a new first axis."""
    if isinstance(items[0], tuple):
        return tuple(np.stack(parts) for parts in zip(*items))
    return np.stack(items)


def batches(
    dataset: Any,
    batch_size: int,
    rng: np.random.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Any]:
    """Stacked batches of ``dataset`` (``len`` and ``[i]``): ``(B, ...)`` arrays, or a tuple of them for
    ``(x, y)`` items. With ``world_size > 1``, replica ``rank``'s share of every global batch of ``batch_size``."""
    for indices in batch_indices(len(dataset), batch_size, rng, shuffle, drop_last):
        own = shard(indices, rank, world_size) if world_size > 1 else indices
        yield stack([dataset[int(i)] for i in own])

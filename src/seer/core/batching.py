"""Batches of items of similar length (less padding), and their results put back in order:
the one sort-by-length used wherever seer runs a model over many texts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["length_batches", "unbatch"]


def length_batches(
    lengths: Sequence[int], batch_size: int, *, longest_first: bool = False
) -> list[list[int]]:
    """The positions ``0..len(lengths)-1`` in batches of at most ``batch_size``, sorted by
    length (stable: ties keep their order), shortest first unless ``longest_first``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = [-n for n in lengths] if longest_first else list(lengths)
    order = [int(i) for i in np.argsort(keys, kind="stable")]
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def unbatch(chunks: Sequence[np.ndarray], batches: Sequence[Sequence[int]]) -> np.ndarray:
    """The rows of the per-batch results ``chunks`` (one array per batch of
    :func:`length_batches`, rows in the batch's order), put back in the original order."""
    stacked = np.concatenate(chunks)
    order = np.fromiter((i for batch in batches for i in batch), dtype=np.int64)
    if len(order) != len(stacked):
        raise ValueError(f"{len(stacked)} result rows for {len(order)} batched items")
    out = np.empty_like(stacked)
    out[order] = stacked
    return out

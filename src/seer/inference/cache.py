"""A left-padded batch's KV cache and attention mask, row by row: take rows out (a finished
reply's final read, or dropping it), and let new rows join (left-padding the shorter side).

Padding columns are masked (attention mask 0), so a row's attention never sees them; a row
taken out loses its leading padding and reads as if it had been generated alone.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from seer.errors import SeerError

__all__ = ["KV", "new_cache"]


def new_cache() -> DynamicCache:
    return DynamicCache()


def _pairs(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = getattr(cache, "layers", None)
    if layers is None or any(type(layer) is not DynamicLayer for layer in layers):
        raise SeerError(
            "seer's generation engine needs a model with a plain dynamic KV cache (no sliding "
            f"window or offloading); got {type(cache).__name__}"
        )
    return [(layer.keys, layer.values) for layer in layers]


def _cache(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    return DynamicCache(ddp_cache_data=pairs)


class KV:
    """A batch's cache ``[B, heads, L, d]`` per layer and its attention mask ``[B, L]``."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        self.cache, self.mask = cache, mask

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def grow(self) -> torch.Tensor:
        """The mask with one more real column (the next decode step's): returned and kept."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=1)
        return self.mask

    def keep(self, rows: list[int]) -> KV:
        """The given rows (in that order), with padding columns no kept row needs dropped
        (all rows in order: this batch itself, nothing copied)."""
        if rows == list(range(self.rows)):
            return self
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        start = int((mask.sum(0) == 0).long().cumprod(0).sum()) if rows else 0
        pairs = [
            (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
            for k, v in _pairs(self.cache)
        ]
        return KV(_cache(pairs), mask[:, start:])

    def join(self, other: KV) -> KV:
        """This batch's rows followed by ``other``'s, the shorter side padded on the left."""
        a, b = _pairs(self.cache), _pairs(other.cache)
        length = max(self.mask.shape[1], other.mask.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = length - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        pairs = [
            (torch.cat([pad(ka, 2), pad(kb, 2)]), torch.cat([pad(va, 2), pad(vb, 2)]))
            for (ka, va), (kb, vb) in zip(a, b, strict=True)
        ]
        return KV(_cache(pairs), torch.cat([pad(self.mask, 1), pad(other.mask, 1)]))

"""Read concept representations off a model: batched, stopping at the deepest layer needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from seer.core.batching import length_batches, unbatch
from seer.core.formatting import Encoded, encode, pad_batch
from seer.core.layers import capture_layers, run_until
from seer.core.normalize import center_states, state_mean

__all__ = [
    "estimate_center",
    "from_raw",
    "gather_positions",
    "normalize_states",
    "pick_positions",
    "representations",
    "running_means",
]


def pick_positions(
    hidden: torch.Tensor, positions: torch.Tensor, starts: torch.Tensor | None = None
) -> torch.Tensor:
    """The states of each read span: hidden states ``[B, T, H]`` averaged over the tokens
    ``starts..positions`` (both ``[B, P]``, inclusive), ``[B, P, H]`` in float32. Without
    ``starts`` (or where a start equals its position) the span is the one token at
    ``positions``, taken exactly."""
    index = positions[:, :, None].expand(-1, -1, hidden.shape[-1])
    picked = hidden.gather(1, index).float()
    if starts is None or bool((starts == positions).all()):
        return picked
    steps = torch.arange(hidden.shape[1], device=hidden.device)
    span = (steps >= starts[..., None]) & (steps <= positions[..., None])  # [B, P, T]
    weights = span.float() / span.sum(-1, keepdim=True).clamp(min=1)
    pooled = weights @ hidden.float()
    return torch.where((starts == positions)[..., None], picked, pooled)


def running_means(hidden: torch.Tensor, start: int) -> torch.Tensor:
    """Row ``t`` of ``hidden`` ``[T, H]`` replaced by the mean of rows ``start..t`` (the
    ``mean`` span as read after token ``t``); rows before ``start`` stay as they are. Float32."""
    out = hidden.float().clone()
    tail = out[start:]
    counts = torch.arange(1, len(tail) + 1, device=out.device, dtype=out.dtype)[:, None]
    out[start:] = tail.cumsum(0) / counts
    return out


def gather_positions(
    hidden: torch.Tensor,
    positions: torch.Tensor,
    center: torch.Tensor | None = None,
    starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """The representation of each row: hidden states ``[B, T, H]`` at the read spans
    ``starts..positions`` ``[B, P]`` (:func:`pick_positions`), minus ``center`` ``[P, H]`` if
    given (see :mod:`seer.core.normalize`), each L2-normalized, concatenated and scaled by
    ``1/sqrt(P)``.

    The result is unit-norm, and the cosine of two results is the mean of the per-position
    cosines; with one position it is simply the normalized hidden state.
    """
    return normalize_states(pick_positions(hidden, positions, starts), center)


def normalize_states(picked: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """Representations ``[B, P*H]`` from states ``[B, P, H]`` at the read positions: minus
    ``center`` ``[P, H]`` if given, each L2-normalized, concatenated, scaled by ``1/sqrt(P)``."""
    picked = F.normalize(center_states(picked, center), dim=-1)
    return picked.flatten(1) / picked.shape[1] ** 0.5


def from_raw(raw: np.ndarray, n_positions: int, center: torch.Tensor | None = None) -> np.ndarray:
    """Representations ``[n, P*H]`` from raw states ``[n, P*H]`` (``representations(...,
    raw=True)``), read as :func:`gather_positions` reads them."""
    picked = torch.from_numpy(raw).reshape(len(raw), n_positions, -1)
    return normalize_states(picked, center).numpy()


@torch.no_grad()
def representations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[dict],
    layers: Sequence[int],
    positions: Sequence[str] = ("last",),
    *,
    mode: str = "full",
    batch_size: int = 16,
    max_length: int = 512,
    layers_path: str | None = None,
    progress: bool | str = False,
    centers: Mapping[int, torch.Tensor | None] | None = None,
    raw: bool = False,
) -> dict[int, np.ndarray]:
    """Representations ``{layer: [n, P*H] float32}`` of ``examples`` (prompt/response dicts).

    ``mode="full"`` formats each example as prompt+response (prompt alone if it has none).
    One forward pass per batch serves every requested layer; it stops after the deepest.
    ``centers[layer]`` (``[P, H]``) is subtracted before normalizing, for the layers it names;
    ``raw=True`` returns the hidden states at the positions as they are (not normalized).
    """
    encoded: list[Encoded] = [
        encode(tokenizer, ex.get("prompt"), ex.get("response"), mode, max_length)  # type: ignore[arg-type]
        for ex in examples
    ]
    batches = length_batches([len(e.input_ids) for e in encoded], batch_size)
    device = next(model.parameters()).device
    chunks: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    bar = tqdm(
        batches,
        desc=progress if isinstance(progress, str) else "representations",
        disable=not progress,
        unit="batch",
    )
    with capture_layers(model, layers, stop_after=True, layers_path=layers_path) as hidden:
        for idx in bar:
            batch = pad_batch([encoded[i] for i in idx], tuple(positions), tokenizer.pad_token_id)
            run_until(
                model,
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                use_cache=False,
            )
            pos, starts = batch["positions"].to(device), batch["starts"].to(device)
            for layer in layers:
                if raw:
                    rep = pick_positions(hidden[layer], pos, starts).flatten(1)
                else:
                    center = (centers or {}).get(layer)
                    rep = gather_positions(hidden[layer], pos, center, starts)
                chunks[layer].append(rep.cpu().numpy())
    if not batches:
        return {layer: np.zeros((0, 0), np.float32) for layer in layers}
    return {layer: unbatch(chunks[layer], batches) for layer in layers}


def estimate_center(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[dict],
    layer: int,
    positions: Sequence[str] = ("last",),
    **kwargs: Any,
) -> torch.Tensor:
    """The ``center`` ``[P, H]`` of a run: the mean hidden state of ``model`` at ``layer`` and
    each read position over ``examples`` (formatted as prompt+response, as prototypes are).
    ``kwargs`` go to :func:`representations` (``batch_size``, ``max_length``, ...)."""
    states = representations(model, tokenizer, examples, [layer], positions, raw=True, **kwargs)
    picked = torch.from_numpy(states[layer]).reshape(len(examples), len(positions), -1)
    return state_mean(picked)

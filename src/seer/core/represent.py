"""Read concept representations off a model: batched, stopping at the deepest layer needed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from seer.core.batching import length_batches, unbatch
from seer.core.formatting import Encoded, encode, pad_batch
from seer.core.layers import capture_layers, run_until

__all__ = ["gather_positions", "representations"]


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The representation of each row: hidden states ``[B, T, H]`` at token indices
    ``positions`` ``[B, P]``, each L2-normalised, concatenated and scaled by ``1/sqrt(P)``.

    The result is unit-norm, and the cosine of two results is the mean of the per-position
    cosines; with one position it is simply the normalised hidden state.
    """
    index = positions[:, :, None].expand(-1, -1, hidden.shape[-1])
    picked = F.normalize(hidden.gather(1, index).float(), dim=-1)  # [B, P, H]
    return picked.flatten(1) / picked.shape[1] ** 0.5


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
) -> dict[int, np.ndarray]:
    """Representations ``{layer: [n, P*H] float32}`` of ``examples`` (prompt/response dicts).

    ``mode="full"`` formats each example as prompt+response (prompt alone if it has none).
    One forward pass per batch serves every requested layer; it stops after the deepest.
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
            pos = batch["positions"].to(device)
            for layer in layers:
                chunks[layer].append(gather_positions(hidden[layer], pos).cpu().numpy())
    if not batches:
        return {layer: np.zeros((0, 0), np.float32) for layer in layers}
    return {layer: unbatch(chunks[layer], batches) for layer in layers}

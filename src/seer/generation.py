"""Batched greedy generation from chat prompts (left-padded), used for retain text,
side-by-side samples and the detoxification evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from seer.formatting import prompt_ids

__all__ = ["generate_replies", "left_pad"]


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, length - len(s) :] = torch.tensor(list(s))
            mask[i, length - len(s) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def generate_replies(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool | str = False,
) -> list[str]:
    """Greedy replies to user prompts, formatted with the chat template."""
    device = next(model.parameters()).device
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    replies: list[str] = [""] * len(prompts)
    desc = progress if isinstance(progress, str) else "generating"
    for start in tqdm(
        range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"
    ):
        idx = order[start : start + batch_size]
        batch = left_pad([encoded[i] for i in idx], tokenizer.pad_token_id)
        out = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        for i, row in zip(idx, new, strict=True):
            replies[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return replies

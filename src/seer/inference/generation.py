"""Plain batched greedy generation from chat prompts (left-padded, ``model.generate``), for
text generated with no hook and no explanation: the retain set's replies during training and
``seer evaluate``'s side-by-side samples. Everything that reads the model while it generates
(monitors, traces, ``seer explain``, ``seer detox-eval``, ``seer serve``) goes through the
engine (:mod:`seer.inference.engine`) instead."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from seer.core.formatting import prompt_ids
from seer.inference.decoding import eos_ids, left_pad

__all__ = ["generate_batches", "generate_replies"]


@torch.no_grad()
def generate_batches(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool | str = False,
) -> Iterator[tuple[list[int], list[list[int]]]]:
    """Greedy generation in left-padded batches of prompts of similar length. Yields, per
    batch, the prompts' indices and each row's generated tokens up to and including its
    first EOS."""
    device = next(model.parameters()).device
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    eos = eos_ids(model)
    desc = progress if isinstance(progress, str) else "generating"
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
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
        rows = []
        for tokens in out[:, batch["input_ids"].shape[1] :].tolist():
            end = next((k for k, t in enumerate(tokens) if t in eos), len(tokens) - 1)
            rows.append(tokens[: end + 1])
        yield idx, rows


def generate_replies(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool | str = False,
) -> list[str]:
    """Greedy replies to user prompts, formatted with the chat template."""
    replies: list[str] = [""] * len(prompts)
    for idx, rows in generate_batches(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    ):
        for i, tokens in zip(idx, rows, strict=True):
            replies[i] = str(tokenizer.decode(tokens, skip_special_tokens=True)).strip()
    return replies

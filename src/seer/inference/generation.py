"""Batched greedy generation from chat prompts (left-padded), used for retain text,
side-by-side samples, monitored generation and the detoxification evaluation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from seer.core.formatting import prompt_ids

__all__ = ["generate_batches", "generate_replies", "left_pad"]

#: Called once per batch with the prompts' token counts; its context is open while the batch
#: generates and yields the stopping criteria to pass to ``model.generate`` (e.g. a hook that
#: watches the batch and ends rows).
BatchWatch = Callable[[list[int]], AbstractContextManager[list[Any]]]


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, length - len(s) :] = torch.tensor(list(s))
            mask[i, length - len(s) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _eos_ids(model: nn.Module) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


@contextlib.contextmanager
def _no_watch(_lengths: list[int]) -> Iterator[list[Any]]:
    yield []


@torch.no_grad()
def generate_batches(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool | str = False,
    watch: BatchWatch | None = None,
) -> Iterator[tuple[list[int], list[list[int]]]]:
    """Greedy generation in left-padded batches of prompts of similar length. Yields, per
    batch (after ``watch``'s context has closed), the prompts' indices and each row's
    generated tokens up to and including its first EOS."""
    device = next(model.parameters()).device
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    eos = _eos_ids(model)
    desc = progress if isinstance(progress, str) else "generating"
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        idx = order[start : start + batch_size]
        batch = left_pad([encoded[i] for i in idx], tokenizer.pad_token_id)
        with (watch or _no_watch)(batch["attention_mask"].sum(1).tolist()) as criteria:
            out = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
                stopping_criteria=criteria,
            )
        rows = []
        for tokens in out[:, batch["input_ids"].shape[1] :].tolist():
            end = next((k for k, t in enumerate(tokens) if t in eos), len(tokens) - 1)
            rows.append(tokens[: end + 1])
        yield idx, rows


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
            replies[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return replies

"""The pieces of greedy decoding the engine needs from a Hugging Face causal LM: left
padding, one forward pass over a KV cache, the greedy choice (honouring the generation
config's ``suppress_tokens``), the end-of-sequence ids, and multi-byte-safe incremental text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from seer.core.architecture import accepts, cache_kwarg

__all__ = ["Greedy", "TextStream", "eos_ids", "forward", "left_pad"]

logger = logging.getLogger(__name__)

#: Generation-config settings that change greedy choices; the engine honours none of them
#: except ``suppress_tokens`` (and says so once, instead of silently decoding differently).
_IGNORED = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None}


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, length - len(s) :] = torch.tensor(list(s))
            mask[i, length - len(s) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any,
) -> Any:
    """One forward pass that extends ``cache`` and keeps only the last position's logits."""
    kwargs: dict[str, Any] = {cache_kwarg(model): cache}
    if accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **kwargs,
    )


def eos_ids(model: nn.Module) -> set[int]:
    """The token ids that end a reply (the generation config's ``eos_token_id``)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


class Greedy:
    """Greedy next tokens from the last position's logits, as ``model.generate`` picks them."""

    def __init__(self, model: nn.Module) -> None:
        config = getattr(model, "generation_config", None)
        self.eos = eos_ids(model)
        self.suppress = list(getattr(config, "suppress_tokens", None) or [])
        for name, default in _IGNORED.items():
            if getattr(config, name, default) not in (default, None):
                logger.warning(
                    "the model's generation config sets %s; seer's engine decodes greedily "
                    "without it (only suppress_tokens is honoured)",
                    name,
                )

    def __call__(self, logits: torch.Tensor) -> list[int]:
        scores = logits[:, -1, :].float()
        if self.suppress:
            scores[:, self.suppress] = -float("inf")
        return scores.argmax(dim=-1).tolist()


class TextStream:
    """The text each new token adds to a reply (``skip_special_tokens``), holding back bytes
    of an unfinished multi-byte character until the token that completes it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.tokens = tokenizer, list[int]()
        self.prefix = self.read = 0

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self.tokens.append(token)
        before = self._decode(self.tokens[self.prefix : self.read])
        text = self._decode(self.tokens[self.prefix :])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.tokens)
            return text[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (at the reply's end)."""
        before = self._decode(self.tokens[self.prefix : self.read])
        text = self._decode(self.tokens[self.prefix :])
        self.prefix = self.read = len(self.tokens)
        return text[len(before) :]

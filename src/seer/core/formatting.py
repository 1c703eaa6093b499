"""Turn (prompt, response) pairs into token ids and the positions representations are read at.

Formatting goes only through the tokenizer's chat template; a tokenizer without one gets
plain concatenation (``prompt + "\\n" + response``). Three read positions are defined, each
a span of tokens whose states are averaged (one token for the first two):

- ``user_end``: the last token before the assistant's reply starts (the end of the
  user turn plus the template's assistant header), i.e. where the model is about to answer;
- ``last``: the last real token of the text;
- ``mean``: every token from the first of the user's message (``Encoded.start``: after the
  template's head, whose states are the same for every text, and after the first token,
  where many models put a massive activation) to the last real token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

__all__ = [
    "POSITIONS",
    "Encoded",
    "content_start",
    "encode",
    "pad_batch",
    "prompt_ids",
    "warn_truncated",
]

logger = logging.getLogger(__name__)

POSITIONS = ("last", "user_end", "mean")
Mode = Literal["full", "prompt", "response"]


@dataclass(frozen=True)
class Encoded:
    """One tokenised text and the indices of its named positions."""

    input_ids: list[int]
    user_end: int
    truncated: bool = False
    start: int = 0  # the first token of the user's message (see ``mean``)

    @property
    def last(self) -> int:
        return len(self.input_ids) - 1

    def position(self, name: str) -> int:
        """The last token of the read span ``name``."""
        return self.user_end if name == "user_end" else self.last

    def span_start(self, name: str) -> int:
        """The first token of the read span ``name`` (``position(name)`` for one token)."""
        return min(self.start, self.last) if name == "mean" else self.position(name)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _template(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str | None, generation_prompt: bool
) -> str:
    if tokenizer.chat_template is None:
        text = prompt if response is None else f"{prompt}\n{response}"
        return (tokenizer.bos_token or "") + text
    messages = [{"role": "user", "content": prompt}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return str(  # a str with tokenize=False
        tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    )


_MARK = "\u2063seer\u2063"  # text no prompt contains, to find where the user's message starts


def content_start(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> int:
    """The index in ``ids`` (a formatted text) of the first token of the user's message: the
    length of the template's head (every token before the message), at least 1 (the first
    token, often a massive activation, is never part of the message's span)."""
    text = _template(tokenizer, _MARK, None, generation_prompt=True)
    head = _ids(tokenizer, text[: text.index(_MARK)]) if _MARK in text else []
    n = next((i for i, (a, b) in enumerate(zip(ids, head, strict=False)) if a != b), len(head))
    return max(1, min(n, len(ids) - 1))


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a user turn followed by the assistant header: the input to generation."""
    return _ids(tokenizer, _template(tokenizer, prompt, None, generation_prompt=True))


def encode(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | None,
    response: str | None,
    mode: Mode = "full",
    max_length: int = 512,
) -> Encoded:
    """Tokenise one example.

    ``mode="full"`` is the user turn plus the assistant's response; ``"prompt"`` the user
    turn with the assistant header; ``"response"`` the response text alone, given to the
    model as the user turn. A text with no prompt is encoded like ``"response"`` whatever the
    mode. Texts longer than ``max_length`` tokens lose the end of their response (or of their
    prompt, when there is no response) and are flagged ``truncated``.
    """
    if mode == "response" or not prompt:
        prompt, response = response, None
    elif mode == "prompt" or not response:
        response = None
    if not prompt:
        raise ValueError("encode() needs a non-empty prompt (or response, for mode='response')")
    head = prompt_ids(tokenizer, prompt)
    if response is None:
        ids, truncated = head, False
        if len(ids) > max_length:
            budget = max(1, max_length - (len(head) - len(_ids(tokenizer, prompt))))
            cut = str(tokenizer.decode(_ids(tokenizer, prompt)[:budget]))
            ids = prompt_ids(tokenizer, cut)[:max_length]
            return Encoded(ids, min(max_length, len(head)) - 1, True, content_start(tokenizer, ids))
        return Encoded(ids, len(ids) - 1, truncated, content_start(tokenizer, ids))
    full = _ids(tokenizer, _template(tokenizer, prompt, response, generation_prompt=False))
    truncated = False
    if len(full) > max_length:
        overflow = len(full) - max_length
        resp = _ids(tokenizer, response)
        cut = str(tokenizer.decode(resp[: max(1, len(resp) - overflow - 2)]))
        full = _ids(tokenizer, _template(tokenizer, prompt, cut, generation_prompt=False))
        full, truncated = full[:max_length], True
    # The prompt-with-header is a prefix of the full text for every common template; where it
    # is not, fall back to the longest common prefix.
    n = len(head)
    if full[:n] != head:
        n = next(
            (i for i, (a, b) in enumerate(zip(full, head, strict=False)) if a != b),
            min(len(full), n),
        )
    return Encoded(full, max(0, min(n, len(full)) - 1), truncated, content_start(tokenizer, full))


def pad_batch(
    encoded: list[Encoded],
    positions: tuple[str, ...],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad to the batch's longest text: ``input_ids``, ``attention_mask``, ``positions``,
    ``starts``.

    ``positions`` and ``starts`` are ``[B, len(positions)]``: the last and the first token of
    each read span (equal for the one-token positions; see
    :func:`seer.core.represent.pick_positions`). ``pad_to_multiple_of`` rounds the length
    up (fewer distinct shapes help compiled/cuDNN attention on GPUs).
    """
    length = max(len(e.input_ids) for e in encoded)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(encoded), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
    pos = torch.tensor([[e.position(p) for p in positions] for e in encoded], dtype=torch.long)
    starts = torch.tensor([[e.span_start(p) for p in positions] for e in encoded], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "positions": pos, "starts": starts}


def warn_truncated(
    tokenizer: PreTrainedTokenizerBase, examples: list[dict], max_length: int, what: str = "texts"
) -> int:
    """Count the examples whose full text (their longest form) ``encode`` truncates at
    ``max_length`` tokens, and say so in one warning. Returns the count."""
    n = sum(
        encode(tokenizer, ex.get("prompt"), ex.get("response"), "full", max_length).truncated
        for ex in examples
    )
    if n:
        logger.warning(
            "%d of %d %s are longer than --max-length %d tokens and are truncated (the end of "
            "the response, or of the prompt, is cut); raise --max-length or shorten them",
            n,
            len(examples),
            what,
            max_length,
        )
    return n

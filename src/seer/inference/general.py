"""General (non-concept) text: the base model's own short greedy answers to varied generic
instructions shipped with the package, cached per base-model fingerprint. Training's retain
losses use it when no retain file is given; evaluation and detox-eval measure retention on it.
"""

from __future__ import annotations

import json
import logging
from importlib import resources

from torch import nn
from transformers import PreTrainedTokenizerBase

from seer.core.files import replacing
from seer.core.models import cache_dir
from seer.core.tables import write_jsonl
from seer.inference.generation import generate_replies

__all__ = ["general_text", "instructions"]

logger = logging.getLogger(__name__)


def instructions(split: str) -> list[str]:
    """Shipped generic instructions: ``"retain"`` (training) or ``"evaluation"`` (held apart)."""
    text = (
        resources.files("seer").joinpath("resources/instructions.json").read_text(encoding="utf-8")
    )
    return list(json.loads(text)[split])


def general_text(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    fingerprint: str,
    split: str = "retain",
    max_new_tokens: int = 64,
) -> list[dict]:
    """The base model's greedy answers to the shipped ``split`` instructions (cached)."""
    path = cache_dir() / "general" / f"{fingerprint}-{split}-{max_new_tokens}.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = instructions(split)
    logger.info(
        "generating %d general-text answers with the base model (cached at %s)", len(prompts), path
    )
    replies = generate_replies(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, progress=f"general text ({split})"
    )
    rows = [{"prompt": p, "response": r or None} for p, r in zip(prompts, replies, strict=True)]
    with replacing(path) as tmp:  # a cache other processes may read: never half-written
        write_jsonl(tmp, rows)
    return rows

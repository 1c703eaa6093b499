"""General (non-concept) text for the retain losses and the capability checks.

With no file given, seer asks the base model itself for short greedy answers to varied
generic instructions shipped with the package, and caches them per base-model fingerprint.
"""

from __future__ import annotations

import json
import logging
from importlib import resources

from torch import nn
from transformers import PreTrainedTokenizerBase

from seer.core.data import load_table
from seer.core.files import replacing
from seer.core.models import cache_dir
from seer.core.tables import write_jsonl
from seer.errors import SeerError
from seer.inference.generation import generate_replies

__all__ = ["general_text", "instructions", "load_retain"]

logger = logging.getLogger(__name__)


def instructions(split: str) -> list[str]:
    """Shipped generic instructions: ``"retain"`` (training) or ``"evaluation"`` (held apart)."""
    text = (
        resources.files("seer").joinpath("resources/instructions.json").read_text(encoding="utf-8")
    )
    return list(json.loads(text)[split])


def load_retain(path: str) -> list[dict]:
    rows = load_table(path, "--retain-data")
    out = []
    for row in rows:
        prompt = str(row.get("prompt") or row.get("text") or "").strip()
        response = str(row.get("response") or "").strip() or None
        if prompt:
            out.append({"prompt": prompt, "response": response})
    if not out:
        raise SeerError(f"{path}: no rows with a 'prompt' (or 'text') column value for retain text")
    return out


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

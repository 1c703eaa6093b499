"""Capability retention on general text, and side-by-side greedy samples, base vs SEER."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seer.core.formatting import encode, pad_batch
from seer.inference.generation import generate_replies

__all__ = ["generations", "retention"]


@torch.no_grad()
def retention(
    peft_model: Any, tokenizer: Any, texts: list[dict], batch_size: int = 8, max_length: int = 512
) -> dict:
    """Capability retention on general text: ``KL(base || seer)`` of next-token distributions
    (nats per real token) and the perplexity of each model on the responses."""
    device = next(peft_model.parameters()).device
    kl_sum, kl_n = 0.0, 0
    nll = {"base": 0.0, "seer": 0.0}
    nll_n = 0
    for start in range(0, len(texts), batch_size):
        enc = [
            encode(tokenizer, t["prompt"], t.get("response"), "full", max_length)
            for t in texts[start : start + batch_size]
        ]
        batch = pad_batch(enc, ("user_end",), tokenizer.pad_token_id)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with peft_model.disable_adapter():
            ref = F.log_softmax(
                peft_model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1
            )
        cur = F.log_softmax(peft_model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        real = mask.bool()
        kl_sum += (ref.exp() * (ref - cur)).sum(-1)[real].sum().item()
        kl_n += int(real.sum())
        # Perplexity of the response: positions from the end of the user turn to the last token.
        steps = torch.arange(ids.shape[1] - 1, device=device)[None, :]
        lengths = mask.sum(1, keepdim=True)
        resp = (steps >= batch["positions"].to(device)) & (steps < lengths - 1)
        target = ids[:, 1:]
        for name, logp in (("base", ref), ("seer", cur)):
            token_nll = -logp[:, :-1].gather(-1, target[..., None])[..., 0]
            nll[name] += token_nll[resp].sum().item()
        nll_n += int(resp.sum())
    return {
        "kl_nats_per_token": kl_sum / max(kl_n, 1),
        "ppl_base": float(np.exp(nll["base"] / max(nll_n, 1))),
        "ppl_seer": float(np.exp(nll["seer"] / max(nll_n, 1))),
        "n_texts": len(texts),
        "n_tokens": kl_n,
    }


def generations(peft_model: Any, tokenizer: Any, general: list[dict], n: int) -> list[dict]:
    """Greedy 48-token replies of base and SEER to the first ``n`` general prompts."""
    if not n:
        return []
    prompts = [g["prompt"] for g in general[:n]]
    with peft_model.disable_adapter():
        base_replies = generate_replies(peft_model, tokenizer, prompts, max_new_tokens=48)
    seer_replies = generate_replies(peft_model, tokenizer, prompts, max_new_tokens=48)
    return [
        {"prompt": p, "base": b, "seer": s}
        for p, b, s in zip(prompts, base_replies, seer_replies, strict=True)
    ]

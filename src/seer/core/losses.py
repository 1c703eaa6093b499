"""SEER's loss terms as pure functions: tensors in, a scalar out. No hooks, no models."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "chunked_next_token_kl",
    "concept_cosines",
    "info_nce",
    "next_token_kl",
    "retain_l2",
    "supcon",
]

# Elements of a [tokens, vocab] block the chunked KL holds at once (about 32 MB in float32;
# a few such blocks are alive at a time): 170 tokens for SmolLM2's 49,152-word vocabulary.
KL_CHUNK_ELEMENTS = 2**23


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """The paper's disentanglement loss.

    ``z1[i]`` and ``z2[i]`` are two texts of the same concept; logits are
    ``cos(z1_i, z2_j) / temperature`` and the target of row ``i`` is column ``i``. Every other
    column is a negative, even one of the same concept (the paper's objective, kept as is).
    """
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    logits = z1 @ z2.T / temperature
    return F.cross_entropy(logits, torch.arange(len(z1), device=z1.device))


def supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020, the "L_out" form).

    For each anchor ``i`` every other item with the same label is a positive; the loss is the
    mean over anchors with at least one positive of
    ``-mean_{p in P(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )``, ``s = cos / temperature``.
    """
    z = F.normalize(z.float(), dim=-1)
    sim = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positives.sum(dim=1)
    has_pos = n_pos > 0
    if not has_pos.any():
        return z.sum() * 0.0
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
    return -(pos_log_prob[has_pos] / n_pos[has_pos]).mean()


def retain_l2(
    adapted: list[torch.Tensor], reference: list[torch.Tensor], attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean L2 distance between adapted and reference hidden states.

    Averaged over the given layers and over real tokens only (the same mask applies to both
    sides, since both saw the same input). Each tensor is ``[B, T, H]``.
    """
    mask = attention_mask.bool()
    distances = [
        torch.linalg.vector_norm(a.float() - r.float(), dim=-1)[mask]
        for a, r in zip(adapted, reference, strict=True)
    ]
    return torch.cat(distances).mean()


def next_token_kl(
    reference_logits: torch.Tensor, logits: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``KL(p_reference || p)`` of next-token distributions, in nats per real token.

    Logits are ``[B, T, V]`` with positions where ``attention_mask`` is 0 ignored, or
    ``[N, V]`` rows that are all real tokens (``attention_mask=None``).
    """
    if attention_mask is not None:
        mask = attention_mask.bool()
        reference_logits, logits = reference_logits[mask], logits[mask]
    ref = F.log_softmax(reference_logits.float(), dim=-1)
    cur = F.log_softmax(logits.float(), dim=-1)
    return F.kl_div(cur, ref, log_target=True, reduction="batchmean")


def _head(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    raw = F.linear(hidden, weight, bias)
    return raw, (torch.tanh(raw / softcap) * softcap if softcap else raw)


class _ChunkedKL(torch.autograd.Function):
    """Forward and backward of the chunked KL in one sweep over the tokens.

    The LM head is linear, so the gradient of the summed KL with respect to a chunk's logits,
    ``softmax(logits) - p_reference``, is known as soon as the chunk's loss is: it is turned
    into the (small) gradients of the hidden states and of the head right away, and the
    chunk's ``[chunk, vocab]`` tensors are freed before the next chunk. Nothing is recomputed
    in backward, which only scales the stored gradients.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        reference: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        softcap: float | None,
        chunk: int,
    ) -> torch.Tensor:
        need_h, _, need_w, need_b = ctx.needs_input_grad[:4]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            ref = F.log_softmax(
                _head(reference[start : start + chunk], weight, bias, softcap)[1].float(), -1
            )
            raw, logits = _head(h, weight, bias, softcap)
            cur = F.log_softmax(logits.float(), dim=-1)
            p_ref = ref.exp()
            total += (p_ref * (ref - cur)).sum()
            if grad_h is None and grad_w is None and grad_b is None:
                continue
            grad = cur.exp_().sub_(p_ref)  # d(sum of KL) / d(logits)
            del ref, p_ref, cur
            if softcap:
                grad.mul_(1 - torch.tanh(raw.float() / softcap) ** 2)
            grad = grad.to(h.dtype)
            if grad_h is not None:
                grad_h[start : start + chunk] = grad @ weight
            if grad_w is not None:
                grad_w += (grad.T @ h).to(grad_w.dtype)
            if grad_b is not None:
                grad_b += grad.sum(0).to(grad_b.dtype)
        n = max(1, hidden.shape[0])
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.present, ctx.n = (grad_h is not None, grad_w is not None, grad_b is not None), n
        return total / n

    @staticmethod
    def backward(
        ctx: Any, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, torch.Tensor | None, torch.Tensor | None, None, None]:
        saved = iter(ctx.saved_tensors)
        scale = grad_out / ctx.n
        grads = [next(saved) * scale if present else None for present in ctx.present]
        return grads[0], None, grads[1], grads[2], None, None


def chunked_next_token_kl(
    hidden: torch.Tensor,
    reference_hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk_elements: int = KL_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """:func:`next_token_kl` of the LM head's outputs, without a whole ``[N, V]`` tensor.

    ``hidden`` and ``reference_hidden`` are ``[N, H]`` final hidden states (after the final
    norm) of the same N real tokens; the logits are ``hidden @ weight.T + bias``, optionally
    soft-capped (``tanh(x / cap) * cap``, Gemma 2). Equal to
    ``next_token_kl(head(reference_hidden), head(hidden))`` to float error, gradients included;
    the reference side gets no gradient.
    """
    chunk = max(1, chunk_elements // weight.shape[0])
    return _ChunkedKL.apply(hidden, reference_hidden.detach(), weight, bias, softcap, chunk)


@torch.no_grad()
def concept_cosines(z: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cosine between different items of the same concept, and of different concepts
    (``nan`` where a batch has no such pair)."""
    z = F.normalize(z.float(), dim=-1)
    cos = z @ z.T
    same = labels[:, None] == labels[None, :]
    off_diag = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    pos, neg = cos[same & off_diag], cos[~same]
    return (
        pos.mean().item() if pos.numel() else float("nan"),
        neg.mean().item() if neg.numel() else float("nan"),
    )

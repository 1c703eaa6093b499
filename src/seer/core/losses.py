"""SEER's loss terms as pure functions: tensors in, a scalar out. No hooks, no models."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["concept_cosines", "info_nce", "next_token_kl", "retain_l2", "supcon"]


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

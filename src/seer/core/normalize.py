"""Forms of SEER's representation and retain loss that do not depend on one model's units.

A hidden-state distance in raw units (the paper's retain l2) weighs what the model's hidden
states happen to measure: orders of magnitude apart between architectures, and between the
tokens of one text (the first token of many models carries "massive activations" of norm in
the thousands). A cosine of raw hidden states is dominated by whatever every text shares: on
some models the base representations of any two texts have cosine 0.98, so a cosine-based
contrastive loss and cosine prototypes see little else. The pure functions here remove both:

- :func:`relative_retain_l2`: each token's distance divided by its reference state's norm, so
  the term is a proportion, the same for the model scaled by any factor, and every token weighs
  the same whatever its norm;
- the ``centered`` representation ``normalize(h - center)``. In training the center is the
  mean state of the contrastive batch (:func:`batch_center`, with its gradient), so that a
  shift shared by every text changes nothing and training cannot lower the loss by moving all
  representations together (with a fixed center it can, and on a tiny model with a large
  shared component it does: every cosine goes to 1). After training the center is the trained
  model's mean state at the read positions on the training texts (:func:`state_mean`),
  stored with the run; prototypes and the readout subtract it (:func:`center_states`).

``center`` has shape ``[P, H]``: one mean per read position, in the run's ``positions`` order.
"""

from __future__ import annotations

import torch

__all__ = [
    "REPRESENTATIONS",
    "RETAIN_L2_FORMS",
    "batch_center",
    "center_states",
    "relative_retain_l2",
    "state_mean",
]

#: ``raw``: cosine of the hidden states as they are (the paper); ``centered``: of the hidden
#: states minus the base model's mean state on the training texts.
REPRESENTATIONS = ("raw", "centered")
#: ``raw``: mean distance in the model's units (the paper); ``relative``: each token's distance
#: over its reference state's norm.
RETAIN_L2_FORMS = ("raw", "relative")


def relative_retain_l2(
    adapted: list[torch.Tensor],
    reference: list[torch.Tensor],
    attention_mask: torch.Tensor,
    floor: float = 1e-3,
) -> torch.Tensor:
    """Mean over layers and real tokens of ``||a_t - r_t|| / ||r_t||``.

    Scale-free (multiplying every state by ``c`` leaves it unchanged) and blind to which tokens
    carry large norms: a token with a massive activation counts as much as any other. The
    denominator is kept above ``floor`` times the layer's mean reference norm, so that a
    near-zero state cannot blow the term up. Each tensor is ``[B, T, H]``.
    """
    mask = attention_mask.bool()
    ratios = []
    for a, r in zip(adapted, reference, strict=True):
        ref_norm = torch.linalg.vector_norm(r.float(), dim=-1)[mask]
        distance = torch.linalg.vector_norm(a.float() - r.float(), dim=-1)[mask]
        ratios.append(distance / ref_norm.clamp_min(floor * ref_norm.mean().clamp_min(1e-30)))
    return torch.cat(ratios).mean()


def center_states(picked: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    """``picked - center``: states ``[B, P, H]`` at the read positions minus the run's center
    ``[P, H]`` (``None``: unchanged, the raw representation)."""
    if center is None:
        return picked
    return picked - center.to(device=picked.device, dtype=picked.dtype)[None]


def batch_center(views: list[torch.Tensor]) -> torch.Tensor:
    """The training-time center: the mean ``[P, H]`` over every row of the contrastive batch's
    views (each ``[B, P, H]``), gradient included."""
    return torch.cat([v.float() for v in views]).mean(dim=0)


def state_mean(picked: torch.Tensor) -> torch.Tensor:
    """The center of states ``[n, P, H]`` at the read positions: their mean ``[P, H]``."""
    if picked.ndim != 3 or len(picked) == 0:
        raise ValueError(f"state_mean needs states [n >= 1, P, H], got {tuple(picked.shape)}")
    return picked.float().mean(dim=0)

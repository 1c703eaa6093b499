"""Causal faithfulness of the readout: does the model's own computation use the directions the
explanation reads?

At the target block, the output hidden states (every position) are projected onto the
orthogonal complement of a subspace, and the next-token distributions on test texts are
compared with the untouched ones: ``KL(clean || projected)`` in nats per real token. The
subspace is the span of the concept prototypes, against random subspaces of the same
dimension (several seeded draws: mean and spread). ``ratio = KL_prototypes / mean KL_random``:
well above 1 means the model relies on the readout's directions more than on arbitrary ones.
Two variants: ``span`` (the prototypes themselves, K dimensions, which include the direction
every text shares) and ``centered`` (the prototypes minus their mean, K-1 dimensions: only
what tells concepts apart).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seer.core.formatting import encode, pad_batch
from seer.core.layers import add_to_layer

__all__ = ["faithfulness", "orthonormal_basis", "projection_kl"]

logger = logging.getLogger(__name__)


def orthonormal_basis(vectors: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """``[d, r]`` orthonormal columns spanning the rows of ``vectors`` (``r`` = its rank)."""
    u, s, _ = np.linalg.svd(np.asarray(vectors, np.float64).T, full_matrices=False)
    rank = int((s > tol * max(s.max(initial=0.0), 1e-30)).sum())
    return u[:, :rank]


def _prototype_rows(prototypes: np.ndarray, hidden_size: int) -> np.ndarray:
    """Prototypes of ``P`` concatenated positions ``[K, P*H]`` as ``[K*P, H]`` directions."""
    P = np.asarray(prototypes, np.float64)
    return P.reshape(-1, hidden_size)


@torch.no_grad()
def projection_kl(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    layer: int,
    bases: dict[str, np.ndarray],
    *,
    batch_size: int = 4,
    max_length: int = 512,
    layers_path: str | None = None,
    progress: bool | str = False,
) -> dict[str, float]:
    """``KL(clean || projected)`` (nats per real token) for each named ``[H, r]`` basis."""
    device = next(model.parameters()).device
    enc = [encode(tokenizer, r.get("prompt"), r.get("response"), "full", max_length) for r in rows]
    order = np.argsort([len(e.input_ids) for e in enc], kind="stable")
    sums = dict.fromkeys(bases, 0.0)
    n_tokens = 0
    projectors = {
        k: torch.as_tensor(b, dtype=torch.float32, device=device) for k, b in bases.items()
    }
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=progress or "faithfulness", disable=not progress):
        batch = pad_batch(
            [enc[i] for i in order[start : start + batch_size]], ("last",), tokenizer.pad_token_id
        )
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        clean = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        real = mask.bool()
        n_tokens += int(real.sum())
        for name, Q in projectors.items():

            def remove(hidden: torch.Tensor, Q: torch.Tensor = Q) -> torch.Tensor:
                h = hidden.float()
                return -((h @ Q) @ Q.T)

            with add_to_layer(model, layer, remove, layers_path=layers_path):
                cut = F.log_softmax(
                    model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1
                )
            sums[name] += (clean.exp() * (clean - cut)).sum(-1)[real].sum().item()
    return {name: s / max(n_tokens, 1) for name, s in sums.items()}


def faithfulness(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    layer: int,
    prototypes: np.ndarray,
    *,
    n_draws: int = 5,
    seed: int = 0,
    **kw: Any,
) -> dict:
    """Prototype-span vs random-subspace projection KL at ``layer`` (see the module doc)."""
    hidden = int(model.config.hidden_size)
    directions = _prototype_rows(prototypes, hidden)
    variants = {"span": directions, "centered": directions - directions.mean(0, keepdims=True)}
    rng = np.random.default_rng(seed)
    bases: dict[str, np.ndarray] = {}
    dims = {}
    for variant, vectors in variants.items():
        basis = orthonormal_basis(vectors)
        dims[variant] = basis.shape[1]
        bases[f"{variant}/prototypes"] = basis
        for d in range(n_draws):
            bases[f"{variant}/random{d}"] = orthonormal_basis(
                rng.standard_normal((basis.shape[1], hidden))
            )
    kl = projection_kl(model, tokenizer, rows, layer, bases, **kw)
    out: dict = {"layer": layer, "n_texts": len(rows), "n_draws": n_draws}
    for variant in variants:
        random_kl = [kl[f"{variant}/random{d}"] for d in range(n_draws)]
        mean = float(np.mean(random_kl))
        proto = kl[f"{variant}/prototypes"]
        out[variant] = {
            "dimension": dims[variant],
            "kl_prototypes": proto,
            "kl_random_mean": mean,
            "kl_random_std": float(np.std(random_kl)),
            "kl_random": random_kl,
            "ratio": proto / mean if mean > 0 else float("nan"),
        }
        logger.info("faithfulness %s: %s", variant, out[variant])
    return out

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

from seer.core.architecture import base_model, logit_softcap
from seer.core.formatting import encode, pad_batch
from seer.core.layers import add_to_layer

__all__ = ["TOKENS_PER_TEXT", "faithfulness", "orthonormal_basis", "projection_kl"]

logger = logging.getLogger(__name__)

#: Real tokens per text at which the next-token distributions are compared (a seeded draw).
#: The LM head and the softmax over the vocabulary run on those rows only: with Gemma 3's
#: 262k-word vocabulary they cost more than the model's blocks. The figures carry their
#: standard error over the texts.
TOKENS_PER_TEXT = 16


def orthonormal_basis(vectors: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """``[d, r]`` orthonormal columns spanning the rows of ``vectors`` (``r`` = its rank)."""
    u, s, _ = np.linalg.svd(np.asarray(vectors, np.float64).T, full_matrices=False)
    rank = int((s > tol * max(s.max(initial=0.0), 1e-30)).sum())
    return u[:, :rank]


def _prototype_rows(prototypes: np.ndarray, hidden_size: int) -> np.ndarray:
    """Prototypes of ``P`` concatenated positions ``[K, P*H]`` as ``[K*P, H]`` directions."""
    P = np.asarray(prototypes, np.float64)
    return P.reshape(-1, hidden_size)


def _head(model: Any) -> tuple[Any, Any, float | None]:
    """The decoder stack (its output is after the final norm), the LM head and the logit
    soft-cap of ``model`` (a causal LM, or a PEFT model around one)."""
    hf: Any = base_model(model)
    return hf.get_decoder(), hf.get_output_embeddings(), logit_softcap(hf.config)


def _sample_tokens(mask: torch.Tensor, k: int | None, rng: np.random.Generator) -> torch.Tensor:
    """A boolean ``[B, T]`` mask of the real tokens whose next-token distributions are compared:
    all of them (``k`` None), or ``k`` of each text's, drawn without replacement."""
    if k is None:
        return mask.bool()
    keep = torch.zeros_like(mask, dtype=torch.bool)
    for i, row in enumerate(mask.bool()):
        real = row.nonzero().flatten().cpu().numpy()
        take = real if len(real) <= k else rng.choice(real, k, replace=False)
        keep[i, torch.as_tensor(take, dtype=torch.long)] = True
    return keep


def _log_probs(decoder: Any, head: Any, cap: float | None, ids: Any, mask: Any, keep: Any) -> Any:
    """Next-token log-probabilities ``[n_kept, V]`` at the kept positions only: the LM head (a
    262k-word vocabulary on Gemma 3) is applied to those rows, not to every token."""
    hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    logits = head(hidden[keep]).float()
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.log_softmax(logits, dim=-1)


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
    tokens_per_text: int | None = None,
    seed: int = 0,
    per_text: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """``KL(clean || projected)`` (nats per compared token) for each named ``[H, r]`` basis.

    ``tokens_per_text``: compare the next-token distributions at that many real tokens of
    each text (a seeded draw) instead of at all of them; the model still reads every token.
    ``per_text``, if given, receives each basis's per-text mean KL (for the spread)."""
    device = next(model.parameters()).device
    decoder, head, cap = _head(model)
    rng = np.random.default_rng(seed)
    enc = [encode(tokenizer, r.get("prompt"), r.get("response"), "full", max_length) for r in rows]
    order = np.argsort([len(e.input_ids) for e in enc], kind="stable")
    sums = {k: np.zeros(len(rows)) for k in bases}
    counts = np.zeros(len(rows))
    projectors = {
        k: torch.as_tensor(b, dtype=torch.float32, device=device) for k, b in bases.items()
    }
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=progress or "faithfulness", disable=not progress):
        index = order[start : start + batch_size]
        batch = pad_batch([enc[i] for i in index], ("last",), tokenizer.pad_token_id)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        keep = _sample_tokens(mask, tokens_per_text, rng)
        owner = torch.arange(len(index), device=device)[:, None].expand_as(keep)[keep].cpu()
        counts[index] += np.bincount(owner.numpy(), minlength=len(index))
        clean = _log_probs(decoder, head, cap, ids, mask, keep)
        for name, Q in projectors.items():

            def remove(hidden: torch.Tensor, Q: torch.Tensor = Q) -> torch.Tensor:
                h = hidden.float()
                return -((h @ Q) @ Q.T)

            with add_to_layer(model, layer, remove, layers_path=layers_path):
                cut = _log_probs(decoder, head, cap, ids, mask, keep)
            token_kl = (clean.exp() * (clean - cut)).sum(-1).double().cpu()
            sums[name][index] += np.bincount(owner.numpy(), token_kl.numpy(), len(index))
    if per_text is not None:
        for name, s in sums.items():
            per_text[name] = s / np.maximum(counts, 1)
    return {name: float(s.sum() / max(counts.sum(), 1)) for name, s in sums.items()}


def _standard_error(per_text: np.ndarray) -> float:
    """The standard error, over texts, of a mean of per-text values."""
    n = len(per_text)
    return float(np.std(per_text, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def faithfulness(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    layer: int,
    prototypes: np.ndarray,
    *,
    n_draws: int = 5,
    seed: int = 0,
    tokens_per_text: int | None = TOKENS_PER_TEXT,
    **kw: Any,
) -> dict:
    """Prototype-span vs random-subspace projection KL at ``layer`` (see the module doc).

    Each KL is compared at ``tokens_per_text`` seeded real tokens of each text (None: all);
    ``kl_prototypes_se`` is its standard error over the texts, ``kl_random_std`` the spread
    over the random draws."""
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
    per_text: dict[str, np.ndarray] = {}
    kl = projection_kl(
        model, tokenizer, rows, layer, bases, tokens_per_text=tokens_per_text, seed=seed,
        per_text=per_text, **kw,
    )  # fmt: skip
    out: dict = {
        "layer": layer,
        "n_texts": len(rows),
        "n_draws": n_draws,
        "tokens_per_text": tokens_per_text,
    }
    for variant in variants:
        random_kl = [kl[f"{variant}/random{d}"] for d in range(n_draws)]
        mean = float(np.mean(random_kl))
        proto = kl[f"{variant}/prototypes"]
        out[variant] = {
            "dimension": dims[variant],
            "kl_prototypes": proto,
            "kl_prototypes_se": _standard_error(per_text[f"{variant}/prototypes"]),
            "kl_random_mean": mean,
            "kl_random_std": float(np.std(random_kl)),
            "kl_random": random_kl,
            "ratio": proto / mean if mean > 0 else float("nan"),
        }
        logger.info("faithfulness %s: %s", variant, out[variant])
    return out

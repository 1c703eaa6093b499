"""Unit rows, cosines and prototypes: the geometry of the readout, for numpy arrays (float64)
and torch tensors (float32) alike. Pure functions, no model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["check_rows", "compute_prototypes", "cosines", "normalize_rows", "softmax_probabilities"]

Rows = TypeVar("Rows", np.ndarray, torch.Tensor)


def normalize_rows(x: Rows) -> Rows:
    """Every row scaled to unit L2 norm (zero rows stay zero): tensors in float32, arrays in
    float64. The one row normalization of seer's cosines."""
    if isinstance(x, torch.Tensor):
        return F.normalize(x.float(), dim=-1)
    return F.normalize(torch.from_numpy(np.asarray(x, dtype=np.float64)), dim=-1).numpy()


def cosines(x: Rows, prototypes: Rows) -> Rows:
    """Cosine similarity ``[n, K]`` of each row of ``x`` ``[n, D]`` with each prototype."""
    return normalize_rows(x) @ normalize_rows(prototypes).T


def softmax_probabilities(cos: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated concept probabilities ``softmax(cos / temperature)`` (float64)."""
    logits = np.asarray(cos, dtype=np.float64) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


def check_rows(X: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``X`` as a float64 ``[n, d]`` array and ``labels`` as an object array of ``n`` names."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array [n, d]; got shape {X.shape}. Stack the rows.")
    y = np.asarray([str(label) for label in labels], dtype=object)
    if len(y) != X.shape[0]:
        raise ValueError(
            f"X has {X.shape[0]} rows but {len(y)} labels were given; pass one label per row."
        )
    return X, y


def compute_prototypes(X: np.ndarray, labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Concept prototypes: the mean of the L2-normalized rows of each concept.

    Returns ``(names, P)`` with ``names`` sorted and ``P[k]`` (float32, not renormalized) the
    prototype of ``names[k]``.
    """
    X, y = check_rows(X, labels)
    if len(y) == 0:
        raise ValueError("compute_prototypes needs at least one row; got an empty X.")
    Xn = normalize_rows(X)
    names = sorted(set(y.tolist()))
    P = np.stack([Xn[y == name].mean(axis=0) for name in names]).astype(np.float32)
    return names, P

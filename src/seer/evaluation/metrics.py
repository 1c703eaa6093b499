"""Pure metrics on representation matrices: how well hidden states cluster by concept.

Every function takes raw hidden states ``X`` of shape ``[n, d]`` and a sequence of concept
names, and returns plain Python types (``float``, ``int``, ``str``, ``list``, ``dict``) so the
results can be written with ``json.dump``. Cosine-based quantities L2-normalize rows inside.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from seer.readout import check_rows, compute_prototypes, cosines, normalize_rows

logger = logging.getLogger(__name__)

__all__ = [
    "disentanglement",
    "probe_accuracy",
    "ot_separation",
    "layer_sweep",
]


def _mean_offdiag(S: np.ndarray) -> float:
    m = S.shape[0]
    return float((S.sum() - np.trace(S)) / (m * (m - 1)))


def _intra_inter(Xn: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    present = sorted(set(y.tolist()))
    intra = [_mean_offdiag(Xn[y == c] @ Xn[y == c].T) for c in present if (y == c).sum() >= 2]
    inter_sum, inter_count = 0.0, 0
    for i, a in enumerate(present):
        for b in present[i + 1 :]:
            S = Xn[y == a] @ Xn[y == b].T
            inter_sum += float(S.sum())
            inter_count += S.size
    intra_cos = float(np.mean(intra)) if intra else float("nan")
    inter_cos = inter_sum / inter_count if inter_count else float("nan")
    return intra_cos, inter_cos


def _macro_f1(confusion: np.ndarray, classes: list[int]) -> float:
    """Macro F1 over ``classes`` (those seen as true or predicted), 0 for an empty class."""
    if not classes:
        return float("nan")
    scores = []
    for k in classes:
        tp = confusion[k, k]
        denom = confusion[k, :].sum() + confusion[:, k].sum()  # = 2tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def disentanglement(
    X: np.ndarray, labels: Sequence[str], names: Sequence[str], P: np.ndarray
) -> dict:
    """Score how well ``X`` separates by concept, given prototypes ``P`` for ``names``.

    ``prototype_accuracy`` classifies each row by its nearest prototype (cosine; ties go to
    the earlier name). ``silhouette`` (cosine) and ``davies_bouldin`` (on L2-normalized rows)
    are ``nan`` when fewer than two concepts are present or there are no more rows than
    concepts. ``intra_cos`` is the mean over concepts of the mean cosine between different
    items of a concept; ``inter_cos`` the mean cosine over all pairs from different concepts.
    """
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    X, y = check_rows(X, labels)
    names = [str(n) for n in names]
    P = np.asarray(P)
    if P.ndim != 2 or P.shape[0] != len(names):
        raise ValueError(
            f"P must have one row per name: got P of shape {P.shape} for {len(names)} names."
        )
    unknown = sorted(set(y.tolist()) - set(names))
    if unknown:
        raise ValueError(
            f"labels {unknown} are not among the prototype names {names}; compute the "
            "prototypes on data that covers every concept, or drop those rows."
        )
    Xn = normalize_rows(X)
    pred = np.asarray(names, dtype=object)[np.argmax(cosines(Xn, P), axis=1)]
    idx = {name: k for k, name in enumerate(names)}
    y_idx = np.array([idx[v] for v in y], dtype=int)
    p_idx = np.array([idx[v] for v in pred], dtype=int)
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (y_idx, p_idx), 1)

    seen = sorted(set(y_idx.tolist()) | set(p_idx.tolist()))  # macro-F1 over these classes
    n_present = len(set(y.tolist()))
    if 2 <= n_present < len(y):
        silhouette = float(silhouette_score(Xn, y_idx, metric="cosine"))
        davies_bouldin = float(davies_bouldin_score(Xn, y_idx))
    else:
        logger.info(
            "silhouette/davies_bouldin undefined for %d concepts, %d rows", n_present, len(y)
        )
        silhouette = davies_bouldin = float("nan")
    intra_cos, inter_cos = _intra_inter(Xn, y)
    return {
        "prototype_accuracy": float(np.mean(y_idx == p_idx)) if len(y) else float("nan"),
        "macro_f1": _macro_f1(confusion, seen),
        "confusion": [[int(v) for v in row] for row in confusion],
        "labels": names,
        "silhouette": silhouette,
        "davies_bouldin": davies_bouldin,
        "intra_cos": intra_cos,
        "inter_cos": inter_cos,
    }


def probe_accuracy(
    X_train: np.ndarray,
    y_train: Sequence[str],
    X_test: np.ndarray,
    y_test: Sequence[str],
    seed: int = 0,
) -> float:
    """Test accuracy of a logistic-regression probe on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, ytr = check_rows(X_train, y_train)
    X_test, yte = check_rows(X_test, y_test)
    if len(set(ytr.tolist())) < 2:
        raise ValueError("probe_accuracy needs at least two concepts in y_train.")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(X_train, ytr.astype(str))
    return float(np.mean(probe.predict(X_test) == yte.astype(str)))


def _ratio(w: float, spread: float) -> float:
    if spread > 0:
        return w / spread
    return float("inf") if w > 0 else float("nan")


def ot_separation(
    X: np.ndarray, labels: Sequence[str], max_per_concept: int = 200, seed: int = 0
) -> dict:
    """Optimal-transport separation between concepts, on L2-normalized rows.

    For each concept ``k`` its spread ``s_k`` is the root mean squared euclidean distance of
    its points to their mean. For each unordered pair ``(a, b)`` the 2-Wasserstein distance
    ``W`` between the two uniform point clouds is computed exactly with POT, and
    ``ratio = W / ((s_a + s_b) / 2)``. Each concept is first subsampled (seeded) to at most
    ``max_per_concept`` points; spreads use the same subsample.

    A higher ratio means concepts lie farther apart relative to how tight they are, which the
    SEER paper's generalisation argument ties to better held-out accuracy. A ratio is ``inf``
    when both clouds are single points apart and ``nan`` when they coincide.

    Returns ``{"pairs": [{"a", "b", "wasserstein", "spread", "ratio"}, ...],
    "spreads": {concept: s_k}, "mean_wasserstein", "mean_spread", "mean_ratio", "min_ratio"}``
    (the means are ``nan`` when fewer than two concepts are present).
    """
    import ot

    X, y = check_rows(X, labels)
    if max_per_concept < 1:
        raise ValueError(f"max_per_concept must be >= 1; got {max_per_concept}.")
    Xn = normalize_rows(X)
    rng = np.random.default_rng(seed)
    clouds: dict[str, np.ndarray] = {}
    for name in sorted(set(y.tolist())):
        rows = np.flatnonzero(y == name)
        if len(rows) > max_per_concept:
            rows = np.sort(rng.choice(rows, size=max_per_concept, replace=False))
        clouds[name] = Xn[rows]
    spreads = {
        k: float(np.sqrt(np.mean(np.sum((c - c.mean(axis=0)) ** 2, axis=1))))
        for k, c in clouds.items()
    }
    pairs: list[dict[str, Any]] = []
    names = list(clouds)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            xa, xb = clouds[a], clouds[b]
            M = ot.dist(xa, xb, metric="sqeuclidean")
            wa = np.full(len(xa), 1.0 / len(xa))
            wb = np.full(len(xb), 1.0 / len(xb))
            w = float(np.sqrt(max(float(ot.emd2(wa, wb, M, numItermax=1_000_000)), 0.0)))
            spread = (spreads[a] + spreads[b]) / 2
            pairs.append(
                {"a": a, "b": b, "wasserstein": w, "spread": spread, "ratio": _ratio(w, spread)}
            )

    def _mean(key: str) -> float:
        return float(np.mean([p[key] for p in pairs])) if pairs else float("nan")

    return {
        "pairs": pairs,
        "spreads": spreads,
        "mean_wasserstein": _mean("wasserstein"),
        "mean_spread": _mean("spread"),
        "mean_ratio": _mean("ratio"),
        "min_ratio": float(min(p["ratio"] for p in pairs)) if pairs else float("nan"),
    }


def layer_sweep(
    reps_train: dict[int, np.ndarray],
    y_train: Sequence[str],
    reps_test: dict[int, np.ndarray],
    y_test: Sequence[str],
) -> dict[int, dict]:
    """Per-layer scalars: prototypes from train, scored on test.

    Returns ``{layer: {"prototype_accuracy", "silhouette", "intra_cos", "inter_cos",
    "davies_bouldin", "ot_mean_ratio"}}`` for every layer present in both dicts.
    """
    missing = sorted(set(reps_train) ^ set(reps_test))
    if missing:
        raise ValueError(
            f"layers {missing} appear in only one of reps_train/reps_test; "
            "record the same layers for both splits."
        )
    keys = ("prototype_accuracy", "silhouette", "intra_cos", "inter_cos", "davies_bouldin")
    out: dict[int, dict] = {}
    for layer in sorted(reps_train):
        names, P = compute_prototypes(reps_train[layer], y_train)
        scores = disentanglement(reps_test[layer], y_test, names, P)
        row = {k: float(scores[k]) for k in keys}
        row["ot_mean_ratio"] = ot_separation(reps_test[layer], y_test, max_per_concept=50)[
            "mean_ratio"
        ]
        out[int(layer)] = row
        logger.debug("layer %s: %s", layer, row)
    return out

"""How well class probabilities detect each concept (pure): calibration, detection at a fixed
FPR, selective prediction; the figures a monitor is judged by.

Every function takes NumPy arrays (probabilities ``[n, k]`` whose rows sum to 1, integer
targets ``[n]``, or one score per row) and returns plain Python types for ``json.dump``.
Thresholds are set on one split and measured on another: the functions that do so take both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "detection",
    "expected_calibration_error",
    "fpr_threshold",
    "negative_log_likelihood",
    "probability_metrics",
    "roc_auc",
    "selective_curve",
]

_EPS = 1e-12


def expected_calibration_error(probs: np.ndarray, target: np.ndarray, n_bins: int = 15) -> dict:
    """ECE of the top-class confidence with ``n_bins`` equal-width bins on [0, 1].

    A row falls in bin ``b`` when its confidence lies in ``(b/n, (b+1)/n]`` (bin 0 also takes
    0). ``ece = sum_b (n_b / n) |accuracy_b - confidence_b|``. ``bins`` lists, per bin, its
    edges, row count, mean confidence and accuracy (``None`` for an empty bin): the data of a
    reliability diagram.
    """
    probs = np.asarray(probs, np.float64)
    target = np.asarray(target, int)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == target
    index = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        mask = index == b
        count = int(mask.sum())
        row: dict[str, float | int | None] = {
            "lower": b / n_bins,
            "upper": (b + 1) / n_bins,
            "count": count,
        }
        if count:
            acc, mean_conf = float(correct[mask].mean()), float(conf[mask].mean())
            ece += count / len(conf) * abs(acc - mean_conf)
            row.update(confidence=mean_conf, accuracy=acc)
        else:
            row.update(confidence=None, accuracy=None)
        bins.append(row)
    return {"ece": float(ece) if len(conf) else float("nan"), "n_bins": n_bins, "bins": bins}


def negative_log_likelihood(probs: np.ndarray, target: np.ndarray) -> float:
    """Mean ``-log p(target)`` in nats (probabilities clipped at 1e-12)."""
    probs = np.asarray(probs, np.float64)
    p = probs[np.arange(len(target)), np.asarray(target, int)]
    return float(-np.log(np.maximum(p, _EPS)).mean())


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); ``nan`` without both classes."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def fpr_threshold(negative_scores: np.ndarray, fpr: float) -> float:
    """The lowest threshold ``t`` such that at most ``fpr`` of ``negative_scores`` are ``> t``.

    A row is flagged when its score is strictly above ``t``. With ``n`` negatives,
    ``floor(fpr * n)`` of them may be flagged, so ``t`` is the ``floor(fpr * n) + 1``-th
    highest negative score (the highest one when ``fpr * n < 1``).
    """
    neg = np.sort(np.asarray(negative_scores, np.float64))[::-1]
    if not len(neg):
        raise ValueError("fpr_threshold needs at least one negative score.")
    allowed = int(np.floor(fpr * len(neg) + 1e-9))
    return float(neg[min(allowed, len(neg) - 1)])


def detection(
    cal_scores: np.ndarray,
    cal_positive: np.ndarray,
    test_scores: np.ndarray,
    test_positive: np.ndarray,
    fprs: Sequence[float] = (0.01, 0.05),
) -> dict:
    """One-vs-rest detection of one concept: ROC AUC on test (and on calibration, for choosing
    between monitors without test rows), and for each target FPR the threshold set on the
    calibration negatives with the recall and the realised FPR on test."""
    cal_scores, test_scores = np.asarray(cal_scores), np.asarray(test_scores)
    cal_positive, test_positive = np.asarray(cal_positive, bool), np.asarray(test_positive, bool)
    out: dict = {
        "auroc": roc_auc(test_scores, test_positive),
        "calibration_auroc": roc_auc(cal_scores, cal_positive),
        "at_fpr": {},
    }
    for fpr in fprs:
        t = fpr_threshold(cal_scores[~cal_positive], fpr)
        flagged = test_scores > t
        out["at_fpr"][f"{fpr:g}"] = {
            "threshold": t,
            "recall": float(flagged[test_positive].mean()) if test_positive.any() else None,
            "realised_fpr": float(flagged[~test_positive].mean())
            if (~test_positive).any()
            else None,
        }
    return out


def selective_curve(confidence: np.ndarray, correct: np.ndarray) -> dict:
    """Accuracy against coverage when only the most confident rows are answered.

    Rows are sorted by ``confidence`` (highest first, ties in input order); point ``k`` answers
    the top ``k``: ``coverage = k / n`` and ``accuracy`` the share of them ``correct``.
    ``aurc`` is the mean risk (1 - accuracy) over the ``n`` points.
    """
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, bool)
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    k = np.arange(1, len(order) + 1)
    accuracy = hits / k
    return {
        "coverage": (k / len(order)).tolist(),
        "accuracy": accuracy.tolist(),
        "aurc": float(np.mean(1 - accuracy)) if len(order) else float("nan"),
    }


def probability_metrics(
    cal_probs: np.ndarray,
    cal_target: np.ndarray,
    test_probs: np.ndarray,
    test_target: np.ndarray,
    names: Sequence[str],
    fprs: Sequence[float] = (0.01, 0.05),
) -> dict:
    """Every probability-based figure of one monitor: accuracy, macro-F1, ECE, NLL on test,
    per-concept detection (thresholds from calibration) and the means over concepts."""
    cal_probs, test_probs = np.asarray(cal_probs, np.float64), np.asarray(test_probs, np.float64)
    cal_target, test_target = np.asarray(cal_target, int), np.asarray(test_target, int)
    pred = test_probs.argmax(axis=1)
    per_concept = {
        name: detection(cal_probs[:, k], cal_target == k, test_probs[:, k], test_target == k, fprs)
        for k, name in enumerate(names)
    }
    f1 = []
    for k in sorted(set(test_target.tolist()) | set(pred.tolist())):
        tp = np.sum((pred == k) & (test_target == k))
        denom = np.sum(pred == k) + np.sum(test_target == k)
        f1.append(2 * tp / denom if denom else 0.0)
    calibration = expected_calibration_error(test_probs, test_target)
    aurocs = [d["auroc"] for d in per_concept.values()]
    means = {
        f"mean_recall_at_{f:g}_fpr": float(
            np.nanmean([_nan(d["at_fpr"][f"{f:g}"]["recall"]) for d in per_concept.values()])
        )
        for f in fprs
    }
    return {
        "accuracy": float(np.mean(pred == test_target)),
        "macro_f1": float(np.mean(f1)),
        "ece": calibration["ece"],
        "reliability": calibration["bins"],
        "nll": negative_log_likelihood(test_probs, test_target),
        "mean_auroc": float(np.nanmean(aurocs)),
        **means,
        "per_concept": per_concept,
    }


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)

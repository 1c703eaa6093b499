"""External monitors a user would otherwise deploy: a logistic and a one-hidden-layer MLP
probe on hidden states, fitted on train, thresholds set on calibration, scored on test.

Their class probabilities are used as they come out of scikit-learn (no temperature), and go
through the same :func:`seer.evaluation.detection.probability_metrics` as SEER's readout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seer.evaluation.detection import probability_metrics

__all__ = ["PROBES", "fit_probe", "probe_metrics"]

PROBES = ("logistic", "mlp")


def fit_probe(kind: str, X: np.ndarray, y: np.ndarray, seed: int = 0) -> Any:
    """A standardising pipeline with a ``logistic`` regression or an ``mlp`` (one hidden layer
    of 256 ReLU units, L2 0.01, L-BFGS: scikit-learn's choice for a few hundred rows) fitted
    on ``X``; the training rows are all used (no validation share is carved out of them)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        head: Any = LogisticRegression(max_iter=2000, random_state=seed)
    elif kind == "mlp":
        head = MLPClassifier(
            hidden_layer_sizes=(256,),
            alpha=1e-2,
            solver="lbfgs",
            max_iter=500,
            random_state=seed,
        )
    else:
        raise ValueError(f"unknown probe {kind!r}; use one of {PROBES}")
    return make_pipeline(StandardScaler(), head).fit(np.asarray(X, np.float64), y)


def probe_metrics(
    kind: str,
    reps: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    names: Sequence[str],
    seed: int = 0,
) -> dict:
    """Fit a ``kind`` probe on ``reps["train"]`` and score it like SEER's readout.

    ``reps`` and ``targets`` hold ``"train"``, ``"calibration"`` and ``"test"`` (integer
    targets indexing ``names``).
    """
    probe = fit_probe(kind, reps["train"], targets["train"], seed)
    classes = list(probe.classes_)

    def probs(split: str) -> np.ndarray:
        p = probe.predict_proba(np.asarray(reps[split], np.float64))
        full = np.zeros((len(p), len(names)))
        full[:, classes] = p  # a concept absent from train keeps probability 0
        return full

    return probability_metrics(
        probs("calibration"), targets["calibration"], probs("test"), targets["test"], names
    )

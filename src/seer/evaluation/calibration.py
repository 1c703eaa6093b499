"""Turn cosine similarities to concept prototypes into probabilities and a ``none`` threshold.

Both are fitted on the run's held-out split at the end of training and stored with the run:
the temperature ``T`` of ``softmax(cos / T)`` minimises the held-out negative log-likelihood
(temperature scaling, Guo et al. 2017), and the threshold is the ``quantile`` of held-out
best-prototype cosines: a representation less similar than that to every prototype is
reported as ``none`` (by construction, about ``quantile`` of in-distribution texts are).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from seer.inference.readout import cosines, softmax_probabilities

__all__ = ["calibrate", "softmax_probabilities"]


def calibrate(
    X: np.ndarray,
    labels: Sequence[str],
    names: Sequence[str],
    P: np.ndarray,
    quantile: float = 0.05,
) -> dict[str, float]:
    """Fit the probability temperature and the ``none`` threshold on held-out data."""
    cos = cosines(np.asarray(X, np.float64), np.asarray(P, np.float64))
    index = {n: i for i, n in enumerate(names)}
    target = np.array([index[label] for label in labels])

    def nll(log_t: float) -> float:
        p = softmax_probabilities(cos, float(np.exp(log_t)))
        return float(-np.log(p[np.arange(len(target)), target] + 1e-12).mean())

    best = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(10.0)), method="bounded")
    return {
        "temperature": float(np.exp(best.x)),
        "threshold": float(np.quantile(cos.max(axis=1), quantile)),
        "quantile": quantile,
        "held_out_accuracy": float((cos.argmax(axis=1) == target).mean()),
        "held_out_nll": float(best.fun),
    }

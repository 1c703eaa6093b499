"""Turn cosine similarities to concept prototypes into probabilities and a ``none`` threshold.

Both are fitted on the run's *calibration* split at the end of training and stored with the
run (the test split is never seen): the temperature ``T`` of ``softmax(cos / T)`` minimises
the calibration negative log-likelihood (temperature scaling, Guo et al. 2017), and the
threshold is the ``quantile`` of calibration best-prototype cosines: a representation less
similar than that to every prototype is reported as ``none`` (by construction, about
``quantile`` of in-distribution texts are).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from seer.readout.cosine import cosines, softmax_probabilities

__all__ = ["calibrate"]


def calibrate(
    X: np.ndarray,
    labels: Sequence[str],
    names: Sequence[str],
    P: np.ndarray,
    quantile: float = 0.05,
    fitted_on: str = "calibration",
) -> dict[str, Any]:
    """Fit the probability temperature and the ``none`` threshold on the rows ``X``.

    ``fitted_on`` names the split ``X`` came from; it is stored with the values, and the
    accuracy and NLL of the fit are keyed by it (``calibration_accuracy``, ...).
    """
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
        "fitted_on": fitted_on,
        "n_rows": len(target),
        f"{fitted_on}_accuracy": float((cos.argmax(axis=1) == target).mean()),
        f"{fitted_on}_nll": float(best.fun),
    }

"""SEER's readout and the external probes as monitors, on one run's train / calibration / test
representations, and the concept-by-concept comparison between them.

The readout (:mod:`seer.readout`) is read here as inference reads it; its temperature and
threshold come from the calibration split (for SEER: stored at training; for the base model:
fitted here, on the base calibration rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from seer.evaluation.detection import probability_metrics, selective_curve
from seer.evaluation.probes import PROBES, probe_metrics
from seer.readout import NONE, Readout, calibrate, compute_prototypes, cosines

__all__ = [
    "MATCH_TOLERANCE",
    "base_calibration",
    "best_layer",
    "compare",
    "external_probes",
    "readout_metrics",
]

#: AUROC within this of the best external probe counts as a match.
MATCH_TOLERANCE = 0.01


def readout_metrics(
    reps: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    readout: Readout,
) -> dict:
    """Probability metrics of the readout plus its ``none`` answer on test: the share answered
    ``none``, the accuracy on the rest, and the selective-prediction curve (rows ranked by
    best cosine, the score the ``none`` threshold cuts)."""
    read = {s: readout.read_array(reps[s]) for s in ("calibration", "test")}
    out = probability_metrics(
        read["calibration"].probabilities,
        targets["calibration"],
        read["test"].probabilities,
        targets["test"],
        readout.concepts,
    )
    cos = read["test"].cosines
    best = cos.max(axis=1)
    correct = cos.argmax(axis=1) == np.asarray(targets["test"])
    answered = np.array([top != NONE for top in read["test"].top], dtype=bool)
    out["temperature"] = readout.temperature
    out["none"] = {
        "threshold": readout.threshold,
        "share": float(1 - answered.mean()),
        "accuracy_answered": float(correct[answered].mean()) if answered.any() else None,
        "selective": selective_curve(best, correct),
    }
    return out


def base_calibration(
    reps: Mapping[str, np.ndarray], labels: Mapping[str, Sequence[str]], fitted_on: str
) -> tuple[Readout, np.ndarray]:
    """The base model's readout as SEER builds its own: prototypes from train, temperature and
    threshold fitted on ``reps["calibration"]``; and its prototypes as computed."""
    names, protos = compute_prototypes(reps["train"], labels["train"])
    fit = calibrate(reps["calibration"], labels["calibration"], names, protos, fitted_on=fitted_on)
    return Readout.fitted(names, protos, fit), protos


def best_layer(
    reps_train: Mapping[int, np.ndarray],
    y_train: Sequence[str],
    reps_cal: Mapping[int, np.ndarray],
    y_cal: Sequence[str],
) -> tuple[int, dict[int, float]]:
    """The layer whose train prototypes classify the calibration rows best (ties: the
    earlier layer), and every layer's calibration accuracy: chosen without test rows."""
    scores = {}
    for layer in sorted(reps_train):
        names, protos = compute_prototypes(reps_train[layer], y_train)
        pred = np.asarray(names)[cosines(reps_cal[layer], protos).argmax(axis=1)]
        scores[int(layer)] = float(np.mean(pred == np.asarray(y_cal)))
    return max(scores, key=lambda k: (scores[k], -k)), scores


def external_probes(
    reps_by_layer: Mapping[str, Mapping[int, np.ndarray]],
    targets: Mapping[str, np.ndarray],
    names: Sequence[str],
    layers: Mapping[str, int],
    seed: int = 0,
) -> dict[str, dict]:
    """Every probe kind at every named layer (``{"run": 14, "best": 9}``), keyed
    ``"logistic@run"`` etc.; a layer named twice is fitted once and reported under both."""
    out: dict[str, dict] = {}
    done: dict[tuple[str, int], dict] = {}
    for tag, layer in layers.items():
        for kind in PROBES:
            if (kind, layer) not in done:
                reps = {s: reps_by_layer[s][layer] for s in ("train", "calibration", "test")}
                done[kind, layer] = {
                    "layer": layer,
                    **probe_metrics(kind, reps, targets, names, seed),
                }
            out[f"{kind}@{tag}"] = done[kind, layer]
    return out


def compare(seer: Mapping, probes: Mapping[str, Mapping], names: Sequence[str]) -> dict:
    """Concept by concept: SEER's test AUROC and recall at 1% FPR against those of the external
    probe with the best *calibration* AUROC on that concept (chosen without test rows);
    ``verdict`` is ``beats`` / ``matches`` / ``below`` (test AUROC difference beyond +/-
    MATCH_TOLERANCE)."""
    rows = {}
    for name in names:
        ours = seer["per_concept"][name]
        best_key = max(
            probes, key=lambda k: _num(probes[k]["per_concept"][name]["calibration_auroc"])
        )
        theirs = probes[best_key]["per_concept"][name]
        diff = _num(ours["auroc"]) - _num(theirs["auroc"])
        verdict = "matches" if abs(diff) <= MATCH_TOLERANCE else "beats" if diff > 0 else "below"
        rows[name] = {
            "seer_auroc": ours["auroc"],
            "best_probe": best_key,
            "probe_auroc": theirs["auroc"],
            "seer_recall_at_1pct_fpr": ours["at_fpr"]["0.01"]["recall"],
            "probe_recall_at_1pct_fpr": theirs["at_fpr"]["0.01"]["recall"],
            "verdict": verdict,
        }
    counts = {
        v: sum(r["verdict"] == v for r in rows.values()) for v in ("beats", "matches", "below")
    }
    return {"tolerance": MATCH_TOLERANCE, "per_concept": rows, "counts": counts}


def _num(value: object) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("-inf")
    return out if out == out else float("-inf")

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from seer.evaluation.metrics import disentanglement, layer_sweep, ot_separation, probe_accuracy
from seer.readout import Readout, compute_prototypes, cosines, normalize_rows

S = 1 / math.sqrt(2)


def blobs(n_per: int = 40, d: int = 16, scale: float = 5.0, noise: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    X, y = [], []
    for k, name in enumerate(["cat", "dog", "fish"]):
        mean = np.zeros(d)
        mean[k] = scale
        X.append(mean + noise * rng.standard_normal((n_per, d)))
        y += [name] * n_per
    return np.concatenate(X), y


TINY_X = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
TINY_Y = ["a", "a", "b", "b"]


def test_normalize_rows_unit_rows_and_zero_row():
    Xn = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(Xn, [[0.6, 0.8], [0.0, 0.0]])


def test_prototypes_tiny_case():
    names, P = compute_prototypes(TINY_X, TINY_Y)
    assert names == ["a", "b"]
    assert P.dtype == np.float32
    np.testing.assert_allclose(P, [[1.0, 0.0], [S / 2, (1 + S) / 2]], rtol=1e-6)


def test_prototypes_names_sorted_and_not_renormalized():
    names, P = compute_prototypes(np.array([[0.0, 5.0], [1.0, 0.0], [-1.0, 0.0]]), ["z", "m", "m"])
    assert names == ["m", "z"]
    np.testing.assert_allclose(P, [[0.0, 0.0], [0.0, 1.0]], atol=1e-7)


def test_cosines_normalize_both_sides():
    scores = cosines(np.array([[2.0, 0.0], [1.0, 1.0]]), np.array([[5.0, 0.0], [0.0, 0.1]]))
    np.testing.assert_allclose(scores, [[1.0, 0.0], [S, S]])


def test_disentanglement_tiny_case_exact():
    names, P = compute_prototypes(TINY_X, TINY_Y)
    out = disentanglement(TINY_X, TINY_Y, names, P)
    assert out["prototype_accuracy"] == 1.0
    assert out["macro_f1"] == 1.0
    assert out["confusion"] == [[2, 0], [0, 2]]
    assert out["labels"] == ["a", "b"]
    assert out["intra_cos"] == pytest.approx((1 + S) / 2)
    assert out["inter_cos"] == pytest.approx(2 * S / 4)
    json.dumps(out)


def test_confusion_macro_f1_and_tie_break_on_crafted_case():
    e = np.eye(3)
    X = np.stack([e[0], e[1], e[1], e[2], e[2], e[0] + e[1]])
    y = ["a", "a", "b", "b", "c", "b"]  # last row ties a/b -> predicted a (first name)
    out = disentanglement(X, y, ["a", "b", "c"], e)
    assert out["confusion"] == [[1, 1, 0], [1, 1, 1], [0, 0, 1]]
    assert out["prototype_accuracy"] == pytest.approx(3 / 6)
    # per class F1: a 2*(.5*.5)/1 = .5, b 2*(.5*(1/3))/(5/6) = .4, c 2*(.5*1)/1.5 = 2/3
    assert out["macro_f1"] == pytest.approx((0.5 + 0.4 + 2 / 3) / 3)
    assert all(isinstance(v, int) for row in out["confusion"] for v in row)


def test_separated_blobs_score_well():
    X, y = blobs()
    names, P = compute_prototypes(X, y)
    out = disentanglement(X, y, names, P)
    assert out["prototype_accuracy"] == 1.0
    assert out["macro_f1"] == 1.0
    assert out["silhouette"] > 0.5
    assert out["davies_bouldin"] < 0.5
    assert out["intra_cos"] > 0.9
    assert out["inter_cos"] < 0.1
    assert out["intra_cos"] > out["inter_cos"]


def test_unknown_labels_raise_naming_them():
    names, P = compute_prototypes(TINY_X, TINY_Y)
    with pytest.raises(ValueError, match=r"\['zebra'\]"):
        disentanglement(TINY_X, ["a", "zebra", "b", "b"], names, P)


def test_label_count_mismatch_raises():
    with pytest.raises(ValueError, match="one label per row"):
        compute_prototypes(TINY_X, ["a"])


def test_single_concept_gives_nan_for_cluster_scores():
    X = np.random.default_rng(0).standard_normal((5, 3))
    names, P = compute_prototypes(X, ["a"] * 5)
    out = disentanglement(X, ["a"] * 5, names, P)
    assert math.isnan(out["silhouette"]) and math.isnan(out["davies_bouldin"])
    assert math.isnan(out["inter_cos"])
    assert out["prototype_accuracy"] == 1.0


def test_one_item_per_concept_gives_nan_for_cluster_scores():
    names, P = compute_prototypes(np.eye(2), ["a", "b"])
    out = disentanglement(np.eye(2), ["a", "b"], names, P)
    assert math.isnan(out["silhouette"]) and math.isnan(out["davies_bouldin"])
    assert math.isnan(out["intra_cos"])
    assert out["inter_cos"] == pytest.approx(0.0)


def test_probe_separable_is_perfect():
    X, y = blobs(seed=1)
    Xt, yt = blobs(seed=2)
    acc = probe_accuracy(X, y, Xt, yt)
    assert acc == 1.0 and isinstance(acc, float)


def test_ot_hand_computed_pair():
    X = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, -1.0]])
    out = ot_separation(X, ["a", "a", "b", "b"])
    (pair,) = out["pairs"]
    assert (pair["a"], pair["b"]) == ("a", "b")
    assert out["spreads"] == pytest.approx({"a": math.sqrt(0.5), "b": 1.0})
    assert pair["wasserstein"] == pytest.approx(math.sqrt(2))
    assert pair["spread"] == pytest.approx((math.sqrt(0.5) + 1) / 2)
    assert pair["ratio"] == pytest.approx(math.sqrt(2) / ((math.sqrt(0.5) + 1) / 2))
    assert out["mean_ratio"] == out["min_ratio"] == pytest.approx(pair["ratio"])
    json.dumps(out)


def test_ot_separated_ratio_large_identical_small():
    X, y = blobs()
    sep = ot_separation(X, y)
    assert len(sep["pairs"]) == 3
    assert sep["mean_ratio"] > 5 and sep["min_ratio"] > 5
    rng = np.random.default_rng(3)
    same = rng.standard_normal((80, 16)) + 2.0
    mixed = ot_separation(same, ["a"] * 40 + ["b"] * 40)
    # finite-sample W between two draws of one law is about one spread in 16-d, not 0
    assert mixed["mean_ratio"] < 1.5
    assert mixed["mean_ratio"] < sep["mean_ratio"]


def test_ot_subsampling_is_seeded():
    X, y = blobs(n_per=30)
    a = ot_separation(X, y, max_per_concept=5, seed=1)
    b = ot_separation(X, y, max_per_concept=5, seed=1)
    c = ot_separation(X, y, max_per_concept=5, seed=2)
    assert a == b
    assert a["mean_wasserstein"] != c["mean_wasserstein"]


def test_ot_degenerate_clouds():
    out = ot_separation(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), ["a", "b", "c"])
    ratios = {(p["a"], p["b"]): p["ratio"] for p in out["pairs"]}
    assert ratios[("a", "b")] == math.inf
    assert math.isnan(ratios[("b", "c")])


def test_ot_single_concept_is_nan():
    out = ot_separation(np.eye(3), ["a"] * 3)
    assert out["pairs"] == [] and math.isnan(out["mean_ratio"])


def test_layer_sweep_scalars_per_layer():
    X, y = blobs(n_per=20)
    noise = np.random.default_rng(5).standard_normal(X.shape)
    Xt, yt = blobs(n_per=20, seed=9)
    noise_t = np.random.default_rng(6).standard_normal(Xt.shape)
    sweep = layer_sweep({0: noise, 3: X}, y, {0: noise_t, 3: Xt}, yt)
    assert list(sweep) == [0, 3]
    assert set(sweep[3]) == {
        "prototype_accuracy",
        "silhouette",
        "intra_cos",
        "inter_cos",
        "davies_bouldin",
        "ot_mean_ratio",
    }
    assert sweep[3]["prototype_accuracy"] == 1.0
    assert sweep[0]["prototype_accuracy"] < 0.8
    assert sweep[3]["ot_mean_ratio"] > sweep[0]["ot_mean_ratio"]
    json.dumps(sweep)


def test_layer_sweep_mismatched_layers_raise():
    X, y = blobs(n_per=5)
    with pytest.raises(ValueError, match=r"\[2\]"):
        layer_sweep({1: X, 2: X}, y, {1: X}, y)


# --- monitoring metrics: synthetic scores with known answers ----------------------------------

from seer.evaluation.detection import (  # noqa: E402
    detection,
    expected_calibration_error,
    fpr_threshold,
    negative_log_likelihood,
    probability_metrics,
    roc_auc,
    selective_curve,
)
from seer.evaluation.versus_probes import MATCH_TOLERANCE, compare, readout_metrics  # noqa: E402


def _two_class(confidences, correct):
    """Rows whose top class is 0 with the given confidence; target 0 if correct else 1."""
    conf = np.asarray(confidences, float)
    probs = np.stack([conf, 1 - conf], axis=1)
    return probs, np.where(correct, 0, 1)


def test_ece_known_answer_and_bins():
    probs, target = _two_class([0.9, 0.9, 0.6, 0.6, 1.0], [True, False, True, True, True])
    out = expected_calibration_error(probs, target, n_bins=15)
    # two rows at 0.9 with accuracy 0.5, two at 0.6 with accuracy 1, one at 1.0 exactly right
    assert out["ece"] == pytest.approx((2 * 0.4 + 2 * 0.4 + 0) / 5)
    assert len(out["bins"]) == 15 and sum(b["count"] for b in out["bins"]) == 5
    top = out["bins"][-1]
    assert top["count"] == 1 and top["accuracy"] == 1.0 and top["confidence"] == 1.0
    assert out["bins"][0]["accuracy"] is None


def test_ece_zero_when_confidence_equals_accuracy():
    # 10 rows at confidence 0.7, 7 of them right: perfectly calibrated
    probs, target = _two_class([0.7] * 10, [True] * 7 + [False] * 3)
    assert expected_calibration_error(probs, target)["ece"] == pytest.approx(0.0)


def test_nll_known_answer():
    probs = np.array([[0.5, 0.5], [0.25, 0.75]])
    assert negative_log_likelihood(probs, np.array([0, 1])) == pytest.approx(
        -(np.log(0.5) + np.log(0.75)) / 2
    )


def test_roc_auc_known_answer_and_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    pos = np.array([0.97, 0.985, 0.999, 0.5])
    neg = np.array([0.99, 0.1, 0.2, 0.3])
    scores, labels = np.concatenate([pos, neg]), np.array([1] * 4 + [0] * 4, bool)
    assert roc_auc(scores, labels) == pytest.approx(13 / 16)
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 200).astype(float), rng.random(200) < 0.3  # many ties
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert math.isnan(roc_auc(s, np.zeros(200, bool)))


def test_fpr_threshold_lets_through_at_most_the_share():
    neg = np.arange(100) / 100  # 0.00 .. 0.99
    assert fpr_threshold(neg, 0.01) == pytest.approx(0.98)  # only 0.99 is above
    assert fpr_threshold(neg, 0.05) == pytest.approx(0.94)  # 0.95 .. 0.99
    assert fpr_threshold(neg[:10], 0.01) == pytest.approx(0.09)  # < 1 allowed: the maximum
    for fpr in (0.0, 0.01, 0.05, 0.2):
        assert np.mean(neg > fpr_threshold(neg, fpr)) <= fpr + 1e-12


def test_recall_at_fpr_threshold_from_calibration_measured_on_test():
    cal_scores = np.concatenate([np.arange(100) / 100, [0.5, 0.6]])
    cal_pos = np.array([False] * 100 + [True, True])
    test_scores = np.array([0.97, 0.985, 0.999, 0.5, 0.99, 0.1, 0.2, 0.3])
    test_pos = np.array([True] * 4 + [False] * 4)
    out = detection(cal_scores, cal_pos, test_scores, test_pos)
    assert out["at_fpr"]["0.01"] == {"threshold": 0.98, "recall": 0.5, "realised_fpr": 0.25}
    assert out["at_fpr"]["0.05"]["threshold"] == pytest.approx(0.94)
    assert out["at_fpr"]["0.05"]["recall"] == 0.75
    assert out["auroc"] == pytest.approx(13 / 16)
    # the test negative at 0.99 would have moved a threshold fitted on test: it did not
    moved = detection(cal_scores, cal_pos, test_scores * 0 + 0.995, test_pos)
    assert moved["at_fpr"]["0.01"]["threshold"] == 0.98


def test_selective_curve_known_answer():
    out = selective_curve(np.array([0.9, 0.1, 0.8, 0.5]), np.array([1, 0, 0, 1], bool))
    assert out["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert out["accuracy"] == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert out["aurc"] == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)


def test_probability_metrics_perfect_monitor():
    target = np.repeat(np.arange(3), 20)
    probs = np.full((60, 3), 0.05)
    probs[np.arange(60), target] = 0.9
    out = probability_metrics(probs, target, probs, target, ["a", "b", "c"])
    assert out["accuracy"] == out["macro_f1"] == out["mean_auroc"] == 1.0
    assert out["mean_recall_at_0.01_fpr"] == 1.0 and out["ece"] == pytest.approx(0.1)


def test_readout_none_share_and_answered_accuracy():
    P = np.eye(2)
    X = np.array(
        [[1.0, 0.0], [0.0, 1.0], [1.0, 1.2], [1.0, 0.1]]
    )  # cosines to best: 1, 1, .77, .99
    targets = {"calibration": np.array([0, 1, 1, 0]), "test": np.array([0, 1, 0, 0])}
    readout = Readout.fitted(["a", "b"], P, {"temperature": 0.1, "threshold": 0.9})
    out = readout_metrics({"calibration": X, "test": X}, targets, readout)
    assert out["none"]["share"] == 0.25  # the third row
    assert out["none"]["accuracy_answered"] == 1.0  # the answered three are right
    assert out["accuracy"] == 0.75 and out["temperature"] == 0.1
    assert out["none"]["selective"]["accuracy"][-1] == 0.75


def test_compare_picks_the_probe_by_calibration_auroc():
    def monitor(test_auc, cal_auc):
        at = {"0.01": {"recall": 0.5}}
        return {
            "per_concept": {"x": {"auroc": test_auc, "calibration_auroc": cal_auc, "at_fpr": at}}
        }

    probes = {"logistic@run": monitor(0.95, 0.7), "mlp@run": monitor(0.80, 0.9)}
    row = compare(monitor(0.8 + MATCH_TOLERANCE / 2, 0.5), probes, ["x"])["per_concept"]["x"]
    assert row["best_probe"] == "mlp@run" and row["verdict"] == "matches"
    assert compare(monitor(0.9, 0.5), probes, ["x"])["per_concept"]["x"]["verdict"] == "beats"
    assert compare(monitor(0.7, 0.5), probes, ["x"])["counts"] == {
        "beats": 0, "matches": 0, "below": 1,
    }  # fmt: skip

"""The stop monitor's trade-off from watched probabilities (pure functions)."""

from __future__ import annotations

import pytest

from seer.errors import SeerError
from seer.inference.monitor import Monitor, replay
from seer.safety.tradeoff import (
    best_within,
    cross_fitted_stop,
    plot_tradeoff,
    stop_curve,
)


def test_replay_fires_at_the_first_crossing():
    def stop(threshold, **kw):
        return Monitor("unsafe", threshold, **kw)

    assert replay(stop(0.5), [0.1, 0.6, 0.9]) == 1
    assert replay(stop(0.6), [0.1, 0.6, 0.9]) == 1
    assert replay(stop(0.95), [0.1, 0.6, 0.9]) is None
    assert replay(stop(0.1), []) is None
    assert replay(stop(0.5, watch_tokens=0), [0.1, 0.6, 0.9]) is None  # the prompt's end only
    assert replay(stop(0.5, watch_tokens=1), [0.1, 0.6, 0.9]) == 1
    assert replay(stop(0.5, reply_end=True), [0.9, 0.9], final=0.4) is None
    assert replay(stop(0.5, reply_end=True), [0.1, 0.1], final=0.5) == 2  # after the reply
    with pytest.raises(SeerError, match="replayed"):
        replay(Monitor("unsafe", 0.5, "steer", towards="safe"), [0.9])


def test_stop_curve_counts_fired_or_already_safe():
    bt = [[0.9, 0.1], [0.2, 0.3], [0.4]]  # peaks 0.9, 0.3, 0.4
    bt_safe = [False, True, False]
    xst = [[0.35], [0.1, 0.05]]  # peaks 0.35, 0.1
    xst_refused = [False, False]
    curve = stop_curve(bt, bt_safe, xst, xst_refused)
    points = {p["threshold"]: p for p in curve["points"]}
    assert points[1.0]["BT"] == pytest.approx(1 / 3) and points[1.0]["XST"] == 0
    assert points[0.4]["BT"] == 1.0 and points[0.4]["XST"] == 0  # fires on BT 0 and 2 only
    assert points[0.35]["XST"] == 0.5 and points[0.1]["XST"] == 1.0
    # BT peaks 0.9, 0.3, 0.4 vs XST 0.35, 0.1: 5 of 6 pairs ordered right
    assert curve["auc_bt_vs_xst"] == pytest.approx(5 / 6)
    assert best_within(curve["points"], 0.0)["threshold"] == 0.4
    assert best_within(curve["points"], -1) is None


def test_cross_fitted_stop_never_sees_the_prompt_it_scores():
    # One XSTest prompt looks more unsafe than every BT prompt. Chosen on all rows, the
    # threshold keeps XST at 0 (and gains nothing); cross-fitted, the fold that holds it out
    # picks 0.9 and fires on it.
    bt, xst = [[0.9]] * 4, [[0.95], [0.1], [0.1], [0.1]]
    in_sample = best_within(stop_curve(bt, [False] * 4, xst, [False] * 4)["points"], 0.0)
    assert in_sample["XST"] == 0 and in_sample["BT"] == 0
    out = cross_fitted_stop(
        bt,
        [False] * 4,
        list("abcd"),
        xst,
        [False] * 4,
        list("efgh"),
        [False] * 4,
        max_xst_rise=0.0,
        folds=4,
    )
    assert sorted(out["thresholds"]) == [0.9, 1.0, 1.0, 1.0]
    assert out["BT"] == 0.25 and out["XST"] == 0.25


def test_cross_fitted_stop_keeps_a_prompts_rows_in_one_fold():
    # Were the two "x" rows split, the one in calibration would push that fold's threshold
    # to 1.0 and only one "x" row would fire.
    out = cross_fitted_stop(
        [[0.9], [0.9]],
        [False, False],
        ["a", "b"],
        [[0.95], [0.95], [0.1], [0.1]],
        [False] * 4,
        ["x", "x", "y", "y"],
        [False] * 4,
        max_xst_rise=0.0,
        folds=2,
        seed=3,
    )
    assert out["XST"] == 0.5 and out["BT"] == 0.5
    with pytest.raises(ValueError, match="at least 2"):
        cross_fitted_stop([[0.9]], [False], ["a"], [[0.1]], [False], ["x"], [False], folds=1)


def test_plot_tradeoff(tmp_path):
    curve = stop_curve([[0.9]], [False], [[0.2]], [False])
    base = {"BT": 0.3, "XST": 0.0}
    path = plot_tradeoff({"a": curve}, tmp_path / "c.png", base=base, marks={"SEER": base})
    assert path.stat().st_size > 1000

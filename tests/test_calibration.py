"""Calibration metrics against independent computations: scikit-learn's calibration_curve
(quantile bins) where its bins are ours, a plain per-bin loop where ties decide, scikit-learn's
log_loss for normalized entropy, and a loop over scenarios for the per-scenario figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss

from msctr.errors import UserError
from msctr.evaluate.metrics import (
    LOGLOSS_EPS,
    calibration_ratio,
    compute_all,
    ece,
    normalized_entropy,
    per_scenario_calibration,
    reliability,
)

TOL = 1e-9


def _data(n: int, seed: int, decimals: int | None = None, scale: float = 1.0):
    """Labels drawn from p itself (calibrated), then p scaled (miscalibrated when != 1)."""
    rng = np.random.default_rng(seed)
    p = rng.random(n) * 0.6
    y = (rng.random(n) < p).astype(np.int64)
    p = np.clip(p * scale, 0.0, 1.0)
    if decimals is not None:
        p = np.round(p, decimals)
    return y, p, rng


def _loop_bins(y, p, bins):
    """The documented rule, one row at a time: sort ascending; a row at position r goes to bin
    floor(r * bins / n), and every row tied with an earlier one joins that row's bin."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    n = len(p)
    members = [[] for _ in range(bins)]
    b = 0
    for r, i in enumerate(order):
        if r == 0 or p[i] != p[order[r - 1]]:
            b = r * bins // n
        members[b].append(i)
    return members


def _loop_ece(y, p, bins):
    total = 0.0
    for m in _loop_bins(y, p, bins):
        if m:
            total += len(m) / len(p) * abs(np.mean(p[m]) - np.mean(y[m]))
    return total


def _ne(y, p):
    q = np.clip(p, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    ctr = y.mean()
    return log_loss(y, q, labels=[0, 1]) / log_loss(y, np.full(len(y), ctr), labels=[0, 1])


@pytest.mark.parametrize("bins", [1, 5, 10, 20])
@pytest.mark.parametrize("seed", [0, 1])
def test_reliability_and_ece_match_sklearn_quantile_bins(bins, seed):
    """With distinct scores and n a multiple of the bins, scikit-learn's quantile edges
    split the sorted rows exactly where ours do."""
    y, p, _ = _data(200 * bins, seed)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=bins, strategy="quantile")
    r = reliability(y, p, bins)
    assert (r.rows == 200).all()
    np.testing.assert_allclose(r.observed, prob_true, rtol=0, atol=TOL)
    np.testing.assert_allclose(r.predicted, prob_pred, rtol=0, atol=TOL)
    assert abs(ece(y, p, bins) - np.mean(np.abs(prob_true - prob_pred))) < TOL


@pytest.mark.parametrize("decimals", [None, 2, 1])
@pytest.mark.parametrize("n,bins", [(997, 10), (50, 7), (3001, 16)])
def test_ece_matches_a_plain_loop_with_ties_and_uneven_bins(decimals, n, bins):
    y, p, _ = _data(n, n + bins, decimals, scale=1.4)
    assert abs(ece(y, p, bins) - _loop_ece(y, p, bins)) < TOL
    r = reliability(y, p, bins)
    assert r.rows.tolist() == [len(m) for m in _loop_bins(y, p, bins)]


def test_a_tie_block_at_a_bin_edge_goes_whole_to_the_lower_bin_and_order_does_not_matter():
    # 10 rows, 2 bins: the edge is after row 5, inside the block of six 0.2s
    p = np.array([0.2] * 6 + [0.7] * 4)
    y = np.array([0, 1, 0, 0, 0, 0, 1, 1, 0, 1])
    r = reliability(y, p, 2)
    assert r.rows.tolist() == [6, 4]
    np.testing.assert_allclose(r.observed, [1 / 6, 3 / 4])
    expected = 0.6 * abs(0.2 - 1 / 6) + 0.4 * abs(0.7 - 0.75)
    assert abs(ece(y, p, 2) - expected) < TOL
    perm = np.random.default_rng(3).permutation(len(p))
    assert ece(y[perm], p[perm], 2) == ece(y, p, 2)
    # one score for all rows: one bin, the others empty (nan in the diagram, 0 in ECE)
    r = reliability(y, np.full(10, 0.5), 4)
    assert r.rows.tolist() == [10, 0, 0, 0] and np.isnan(r.observed[1:]).all()
    assert abs(ece(y, np.full(10, 0.5), 4) - abs(0.5 - y.mean())) < TOL


def test_calibration_ratio_is_predicted_over_observed_clicks():
    y, p, _ = _data(4000, 5)
    assert abs(calibration_ratio(y, p) - p.sum() / y.sum()) < TOL
    assert abs(calibration_ratio(y, p * 0.5) - 0.5 * p.sum() / y.sum()) < TOL
    assert math.isnan(calibration_ratio(np.zeros(5, dtype=int), np.full(5, 0.1)))


def test_normalized_entropy_is_sklearn_logloss_over_the_base_rate_logloss():
    y, p, _ = _data(5000, 7, scale=1.3)
    assert abs(normalized_entropy(y, p) - _ne(y, p)) < TOL
    # predicting the rows' own click rate everywhere is NE = 1 exactly
    assert abs(normalized_entropy(y, np.full(len(y), y.mean())) - 1.0) < TOL
    # saturated predictions are clipped as logloss clips them
    q = p.copy()
    q[:10] = 1.0 - y[:10]
    assert abs(normalized_entropy(y, q) - _ne(y, q)) < TOL
    assert math.isnan(normalized_entropy(np.ones(4, dtype=int), np.full(4, 0.9)))


@pytest.mark.parametrize("bins", [3, 10])
def test_per_scenario_figures_match_each_scenarios_rows_alone(bins):
    y, p, rng = _data(6000, 11, decimals=2, scale=0.8)
    s = rng.integers(0, 5, len(y))
    s[s == 3] = 2  # scenario 3 has no rows
    y[s == 4] = 0  # scenario 4 has no click
    got = per_scenario_calibration(y, p, s, 5, bins)
    for k in (0, 1, 2):
        m = s == k
        assert abs(got["calibration"][k] - p[m].sum() / y[m].sum()) < TOL
        assert abs(got["ece"][k] - _loop_ece(y[m], p[m], bins)) < TOL
        assert abs(got["ne"][k] - _ne(y[m], p[m])) < TOL
    assert all(math.isnan(got[name][3]) for name in ("calibration", "ece", "ne"))
    assert math.isnan(got["calibration"][4]) and math.isnan(got["ne"][4])
    assert abs(got["ece"][4] - p[s == 4].mean()) < TOL  # no click: ECE is the mean prediction
    flat = compute_all(y, p, s, 5, bins=bins)
    for name in ("calibration", "ece", "ne"):
        np.testing.assert_array_equal([flat[f"{name}_s{k}"] for k in range(5)], got[name])
    assert flat["ece"] == ece(y, p, bins)
    assert flat["calibration"] == calibration_ratio(y, p)
    assert flat["ne"] == normalized_entropy(y, p)


def test_calibrated_scores_score_well_and_scaled_ones_badly():
    y, p, _ = _data(40_000, 13)
    _, over, _ = _data(40_000, 13, scale=1.5)
    assert abs(calibration_ratio(y, p) - 1) < 0.03 and ece(y, p) < 0.01
    assert calibration_ratio(y, over) > 1.4 and ece(y, over) > 0.1
    assert normalized_entropy(y, over) > normalized_entropy(y, p)


@pytest.mark.parametrize("bins", [0, -3, 2.5, True])
def test_bad_bin_counts_are_one_line_errors(bins):
    y, p, _ = _data(100, 0)
    with pytest.raises(UserError, match="eval.calibration_bins"):
        ece(y, p, bins)

"""Seed-level tests against SciPy, DeLong against the O(m*n) definition, degenerate inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from msctr.errors import UserError
from msctr.evaluate.stats import (
    DeLongResult,
    _components,
    delong,
    mann_whitney,
    mean_std,
    paired_t,
    significance_mark,
    welch_t,
)

TOL = 1e-9


def _runs(seed: int, n: int, shift: float, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    a = 0.78 + 0.002 * rng.standard_normal(n)
    b = 0.78 + shift + 0.002 * rng.standard_normal(n)
    if decimals is not None:
        a, b = np.round(a, decimals), np.round(b, decimals)
    return a, b


# --- t-tests and Mann-Whitney ------------------------------------------------------------------


@pytest.mark.parametrize("n,shift", [(5, 0.0), (5, 0.003), (10, 0.001), (30, 0.002)])
def test_t_tests_equal_scipy(n, shift):
    a, b = _runs(n, n, shift)
    assert abs(welch_t(a, b) - sps.ttest_ind(a, b, equal_var=False).pvalue) < TOL
    assert abs(paired_t(a, b) - sps.ttest_rel(a, b).pvalue) < TOL
    # Unequal sizes for Welch.
    assert abs(welch_t(a[:-2], b) - sps.ttest_ind(a[:-2], b, equal_var=False).pvalue) < TOL


@pytest.mark.parametrize("n,shift", [(5, 0.0), (5, 0.004), (10, 0.002), (60, 0.001)])
def test_mann_whitney_equals_scipy_without_ties(n, shift):
    a, b = _runs(100 + n, n, shift)
    method = "exact" if n <= 50 else "asymptotic"
    ref = sps.mannwhitneyu(a, b, alternative="two-sided", method=method).pvalue
    assert abs(mann_whitney(a, b) - ref) < TOL


def test_mann_whitney_with_ties_uses_tie_corrected_asymptotic():
    a, b = _runs(7, 10, 0.002, decimals=3)
    assert np.unique(np.concatenate([a, b])).size < 20  # the fixture has ties
    ref = sps.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic").pvalue
    assert abs(mann_whitney(a, b) - ref) < TOL


def test_clear_difference_is_significant_and_none_is_not():
    a, b = _runs(11, 8, 0.01)
    for test in (welch_t, paired_t, mann_whitney):
        assert test(a, b) < 0.05
        assert significance_mark(test(a, b)) == "*"
    a, b = _runs(12, 8, 0.0)
    assert welch_t(a, b) > 0.05 and significance_mark(welch_t(a, b)) == ""


def test_degenerate_inputs_follow_the_documented_rule():
    nan = float("nan")
    # Too few values -> nan.
    assert np.isnan(welch_t([0.7], [0.71, 0.72]))
    assert np.isnan(paired_t([0.7], [0.71]))
    assert np.isnan(mann_whitney([], [0.7]))
    # NaN in a sample -> nan.
    assert np.isnan(welch_t([0.7, nan], [0.71, 0.72]))
    assert np.isnan(mann_whitney([0.7, nan], [0.71, 0.72]))
    # Constant and equal -> 1.0; constant and different -> nan (no noise estimate).
    assert welch_t([0.7, 0.7, 0.7], [0.7, 0.7]) == 1.0
    assert np.isnan(welch_t([0.7, 0.7, 0.7], [0.8, 0.8]))
    assert paired_t([0.7, 0.8, 0.9], [0.7, 0.8, 0.9]) == 1.0
    assert np.isnan(paired_t([0.7, 0.8, 0.9], [0.6, 0.7, 0.8]))
    assert mann_whitney([0.7, 0.7], [0.7, 0.7, 0.7]) == 1.0
    # One constant side is still a valid Welch test.
    a = [0.70, 0.71, 0.72]
    with warnings.catch_warnings():  # SciPy warns about the constant side; ours must not
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = sps.ttest_ind(a, [0.7, 0.7], equal_var=False).pvalue
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert abs(welch_t(a, [0.7, 0.7]) - ref) < TOL
    assert significance_mark(nan) == ""
    with pytest.raises(UserError, match="same seeds"):
        paired_t([0.7, 0.8], [0.7, 0.8, 0.9])


def test_mean_std():
    assert mean_std([0.75]) == (0.75, 0.0)
    m, s = mean_std([0.1, 0.2, 0.4])
    assert abs(m - np.mean([0.1, 0.2, 0.4])) < TOL
    assert abs(s - np.std([0.1, 0.2, 0.4], ddof=1)) < TOL
    assert all(np.isnan(v) for v in mean_std([]))


# --- DeLong ------------------------------------------------------------------------------------


def _delong_reference(y, p1, p2):
    """DeLong et al. (1988) directly: psi over every (click, non-click) pair."""
    x, z = [np.stack([p1[y == 1], p2[y == 1]]), np.stack([p1[y == 0], p2[y == 0]])]
    psi = (x[:, :, None] > z[:, None, :]) + 0.5 * (x[:, :, None] == z[:, None, :])  # [2, m, n]
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)  # [2, m], [2, n]
    aucs = psi.mean(axis=(1, 2))
    s = np.cov(v10) / x.shape[1] + np.cov(v01) / z.shape[1]
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    zstat = (aucs[0] - aucs[1]) / np.sqrt(var)
    return aucs, var, zstat, 2 * sps.norm.sf(abs(zstat))


@pytest.mark.parametrize("decimals", [None, 2, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_quadratic_reference(seed, decimals):
    rng = np.random.default_rng(seed)
    n = 300
    q = rng.random(n)
    y = (rng.random(n) < q).astype(int)
    p1 = q + rng.normal(0, 0.3, n)
    p2 = 0.5 * q + 0.5 * p1 + rng.normal(0, 0.3, n)  # correlated with p1
    if decimals is not None:
        p1, p2 = np.round(p1, decimals), np.round(p2, decimals)
    got = delong(y, p1, p2)
    aucs, var, z, p = _delong_reference(y, p1, p2)
    assert isinstance(got, DeLongResult)
    assert abs(got.auc1 - roc_auc_score(y, p1)) < TOL
    assert abs(got.auc2 - roc_auc_score(y, p2)) < TOL
    assert abs(got.auc1 - aucs[0]) < TOL and abs(got.auc2 - aucs[1]) < TOL
    assert abs(got.var - var) < TOL * var
    assert abs(got.z - z) < TOL and abs(got.p_value - p) < TOL


def test_components_equal_sun_xu_midrank_differences():
    # The identity the fast path relies on: V10 = (tz - tx) / n, V01 = 1 - (tz - ty) / m with
    # tz, tx, ty the midranks among all rows, clicks, non-clicks (scipy.stats.rankdata).
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500), 1)
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    tz = sps.rankdata(s)
    v10, v01, u2 = _components(pos, s, m, n)
    assert np.allclose(v10, (tz[pos] - sps.rankdata(s[pos])) / n, rtol=0, atol=1e-12)
    assert np.allclose(v01, 1 - (tz[~pos] - sps.rankdata(s[~pos])) / m, rtol=0, atol=1e-12)
    assert u2 == 2 * (tz[pos].sum() - m * (m + 1) / 2)


def test_delong_symmetry_and_identical_scorers():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    p1, p2 = y + rng.normal(0, 1, 400), y + rng.normal(0, 1.5, 400)
    ab, ba = delong(y, p1, p2), delong(y, p2, p1)
    assert abs(ab.z + ba.z) < 1e-12 and abs(ab.p_value - ba.p_value) < 1e-12
    same = delong(y, p1, p1)
    assert same.z == 0.0 and same.p_value == 1.0 and same.var == 0.0


def test_delong_degenerate():
    one_class = delong(np.ones(5), np.arange(5.0), np.arange(5.0))
    assert all(np.isnan(v) for v in (one_class.auc1, one_class.z, one_class.p_value))
    single_click = delong(
        np.array([1, 0, 0, 0]), np.array([0.9, 0.1, 0.2, 0.3]), np.array([0.1, 0.2, 0.3, 0.4])
    )
    assert single_click.auc1 == 1.0 and single_click.auc2 == 0.0
    assert np.isnan(single_click.p_value)


def test_delong_is_calibrated_under_the_null_and_detects_a_gap():
    rng = np.random.default_rng(4)
    reps, n = 300, 300
    rejections = 0
    for _ in range(reps):  # loop over independent experiments, not rows
        y = rng.integers(0, 2, n)
        shared = y + rng.normal(0, 1, n)
        # Two scorers with the same noise level: equal true AUC, correlated errors.
        p1 = shared + rng.normal(0, 0.7, n)
        p2 = shared + rng.normal(0, 0.7, n)
        rejections += delong(y, p1, p2).p_value < 0.05
    assert 0.02 <= rejections / reps <= 0.09
    y = rng.integers(0, 2, 2000)
    strong, weak = y + rng.normal(0, 1, 2000), y + rng.normal(0, 2, 2000)
    assert delong(y, strong, weak).p_value < 1e-6

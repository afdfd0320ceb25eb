"""Metrics against scikit-learn and a plain per-group reference loop, to 1e-9."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from msctr.errors import UserError
from msctr.evaluate.metrics import (
    GroupAUC,
    auc,
    compute_all,
    group_auc,
    logloss,
    per_scenario_auc,
    rela_impr,
)

TOL = 1e-9


def _data(n: int, seed: int, decimals: int | None = None, ctr: float = 0.3):
    """Labels drawn from a score-dependent rate; rounding the scores creates heavy ties."""
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < ctr * 2 * p).astype(np.int64)
    if decimals is not None:
        p = np.round(p, decimals)
    return y, p, rng


def _ref_group_auc(y, p, g) -> tuple[float, int, int, int]:
    """The obvious definition: loop over groups, sklearn AUC per two-class group."""
    num = den = used = skipped = 0
    for k in np.unique(g):
        m = g == k
        if np.unique(y[m]).size < 2:
            skipped += 1
            continue
        num += m.sum() * roc_auc_score(y[m], p[m])
        den += m.sum()
        used += 1
    return (num / den if den else float("nan")), used, skipped, int(den)


# --- AUC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 3, 1])
@pytest.mark.parametrize("seed", [0, 1])
def test_auc_matches_sklearn_with_ties(decimals, seed):
    y, p, _ = _data(5000, seed, decimals)
    assert abs(auc(y, p) - roc_auc_score(y, p)) < TOL


def test_auc_float_labels_float32_scores_and_bool_labels():
    y, p, _ = _data(3000, 2, 2)
    p32 = p.astype(np.float32)
    ref = roc_auc_score(y, p32)
    assert abs(auc(y.astype(np.float64), p32) - ref) < TOL
    assert abs(auc(y.astype(bool), p32) - ref) < TOL


def test_auc_rare_positives_and_extreme_ties():
    rng = np.random.default_rng(3)
    y = np.zeros(2000, dtype=np.int64)
    y[rng.choice(2000, 3, replace=False)] = 1
    p = rng.integers(0, 2, 2000).astype(float)  # only two distinct scores
    assert abs(auc(y, p) - roc_auc_score(y, p)) < TOL
    assert auc(y, np.full(2000, 0.3)) == 0.5  # all tied -> chance


def test_auc_perfect_and_reversed():
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0


def test_auc_single_class_or_empty_is_nan():
    assert np.isnan(auc(np.ones(10), np.linspace(0, 1, 10)))
    assert np.isnan(auc(np.zeros(10), np.linspace(0, 1, 10)))
    assert np.isnan(auc(np.zeros(0), np.zeros(0)))


def test_bad_inputs_raise_user_error():
    with pytest.raises(UserError, match="0 or 1"):
        auc(np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(UserError, match="one score per row"):
        auc(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(UserError, match="NaN"):
        auc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(UserError, match="user id per row"):
        compute_all(np.array([0, 1]), np.array([0.1, 0.2]), np.array([0, 0]), 1, user=np.array([1]))


# --- Logloss -----------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-7, 1e-3])
def test_logloss_matches_sklearn_on_clipped(eps):
    y, p, rng = _data(4000, 4, 3)
    p[:50] = 0.0  # saturated predictions: clipping must keep the loss finite
    p[50:100] = 1.0
    ref = log_loss(y, np.clip(p, eps, 1 - eps), labels=[0, 1])
    got = logloss(y, p, eps=eps)
    assert np.isfinite(got)
    assert abs(got - ref) < TOL


def test_logloss_single_class_and_bound():
    y = np.ones(5)
    p = np.array([1.0, 0.0, 0.5, 0.9, 0.1])
    ref = log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])
    assert abs(logloss(y, p) - ref) < TOL
    # A confidently wrong row costs at most -log(eps).
    assert abs(logloss(np.array([1]), np.array([0.0])) + np.log(1e-7)) < TOL


# --- GAUC / S-GAUC -----------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 2])
def test_group_auc_matches_reference_loop(decimals):
    y, p, rng = _data(6000, 5, decimals)
    # Large, negative, non-contiguous ids; group sizes around 5 so many groups are
    # single-class or single-row.
    g = rng.integers(0, 1200, y.size) * 7_919_000_003 - 10**15
    ref, used, skipped, rows = _ref_group_auc(y, p, g)
    got = group_auc(y, p, g)
    assert isinstance(got, GroupAUC)
    assert skipped > 100 and used > 300  # the fixture exercises both paths
    assert abs(got.value - ref) < TOL
    assert (got.groups_used, got.groups_skipped, got.rows_used) == (used, skipped, rows)


def test_group_auc_counts_single_class_groups():
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0])
    p = np.array([0.9, 0.1, 0.5, 0.4, 0.3, 0.2, 0.8, 0.8, 0.1])
    g = np.array([5, 5, 7, 7, 9, 9, 3, 3, 3])
    # group 5: AUC 1 (2 rows); 7: all clicks (skip); 9: no clicks (skip);
    # 3: click 0.8 vs non-clicks 0.8 (tie) and 0.1 -> (0.5 + 1) / 2 = 0.75 (3 rows).
    got = group_auc(y, p, g)
    assert got.groups_used == 2 and got.groups_skipped == 2 and got.rows_used == 5
    assert abs(got.value - (2 * 1.0 + 3 * 0.75) / 5) < TOL


def test_group_auc_is_order_invariant_and_nan_without_usable_groups():
    y, p, rng = _data(3000, 6, 2)
    g = rng.integers(0, 200, y.size)
    perm = rng.permutation(y.size)
    assert abs(group_auc(y, p, g).value - group_auc(y[perm], p[perm], g[perm]).value) < 1e-12
    none = group_auc(np.array([1, 1, 0]), np.array([0.2, 0.3, 0.4]), np.array([1, 1, 2]))
    assert np.isnan(none.value) and none.groups_used == 0 and none.groups_skipped == 2


def test_one_group_equals_plain_auc():
    y, p, _ = _data(2000, 7, 2)
    got = group_auc(y, p, np.zeros(y.size, dtype=np.int64))
    assert abs(got.value - roc_auc_score(y, p)) < TOL and got.groups_used == 1


# --- Per scenario ------------------------------------------------------------------------------


def test_per_scenario_auc_matches_sklearn_and_marks_missing():
    y, p, rng = _data(6000, 8, 2)
    s = rng.integers(0, 4, y.size)  # scenario 4 gets no rows
    y[s == 2] = 0  # scenario 2 has no click
    got = per_scenario_auc(y, p, s, 5)
    assert got.shape == (5,)
    for k in (0, 1, 3):
        assert abs(got[k] - roc_auc_score(y[s == k], p[s == k])) < TOL
    assert np.isnan(got[2]) and np.isnan(got[4])


def test_per_scenario_auc_rejects_out_of_range_ids():
    with pytest.raises(UserError, match="num_scenarios"):
        per_scenario_auc(np.array([0, 1]), np.array([0.1, 0.2]), np.array([0, 3]), 3)


# --- RelaImpr ----------------------------------------------------------------------------------


def test_rela_impr_reproduces_hierrec_table():
    # HierRec Table 2: HierRec vs the best baseline, reported RelaImpr in percent.
    assert round(rela_impr(0.6253, 0.6187), 2) == 5.56  # Ali-CCP sce_1 vs STAR
    assert round(rela_impr(0.6046, 0.5970), 2) == 7.84  # Ali-CCP sce_2 vs AdaSparse
    assert round(rela_impr(0.8442, 0.8184), 2) == 8.10  # KuaiRand sce_5 vs AdaSparse
    assert rela_impr(0.7, 0.7) == 0.0
    assert rela_impr(0.55, 0.6) < 0
    assert np.isnan(rela_impr(0.7, 0.5)) and np.isnan(rela_impr(0.7, float("nan")))


# --- compute_all -------------------------------------------------------------------------------


def test_compute_all_agrees_with_single_metrics():
    y, p, rng = _data(3000, 9, 2)
    s = rng.integers(0, 3, y.size)
    u = rng.integers(0, 150, y.size)
    sess = u * 10 + rng.integers(0, 3, y.size)
    out = compute_all(y, p, s, 3, user=u, session=sess)
    assert out["n"] == y.size and abs(out["ctr"] - y.mean()) < TOL
    assert abs(out["auc"] - roc_auc_score(y, p)) < TOL
    assert abs(out["logloss"] - log_loss(y, np.clip(p, 1e-7, 1 - 1e-7))) < TOL
    per_s = per_scenario_auc(y, p, s, 3)
    for k in range(3):
        assert out[f"auc_s{k}"] == per_s[k]
        mine = s == k
        ref = log_loss(y[mine], np.clip(p[mine], 1e-7, 1 - 1e-7), labels=[0, 1])
        assert abs(out[f"logloss_s{k}"] - ref) < TOL
    for name, keys in (("gauc", u), ("sgauc", sess)):
        ref, used, skipped, _ = _ref_group_auc(y, p, keys)
        assert abs(out[name] - ref) < TOL
        assert (out[f"{name}_groups"], out[f"{name}_skipped"]) == (used, skipped)
    bare = compute_all(y, p, s, 3)
    assert "gauc" not in bare and "sgauc" not in bare and "auc_s2" in bare


def test_true_probabilities_beat_noisy_scores():
    # The ceiling idea: on planted data the generating probabilities rank best.
    rng = np.random.default_rng(10)
    q = rng.beta(1, 8, 50000)
    y = (rng.random(q.size) < q).astype(int)
    noisy = np.clip(q + rng.normal(0, 0.05, q.size), 0, 1)
    s = np.zeros(q.size, dtype=np.int64)
    best, worse = compute_all(y, q, s, 1), compute_all(y, noisy, s, 1)
    assert best["auc"] > worse["auc"] and best["logloss"] < worse["logloss"]

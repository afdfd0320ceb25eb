"""Significance tests for comparing runs: over seeds (t-tests, Mann-Whitney U) and, for a single
pair of runs on the same test set, DeLong's test on the AUC difference.

Seed-level tests delegate to SciPy so their p-values are SciPy's; this module only fixes the
method choices and makes degenerate inputs (too few runs, runs that never vary) return a
documented value instead of raising or printing a warning. The rule everywhere:

- a sample with NaN/inf, or too few values for the test          -> nan  (cannot test)
- no variation at all and no difference between the samples  -> 1.0  (no evidence of a gap)
- no variation at all but a difference                        -> nan  (the t statistic is
  infinite and the p-value meaningless: there is no noise estimate to judge the gap against)

"No variation" and "no difference" allow a relative 1e-12 for float rounding.

A nan p-value never earns a significance mark.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from msctr.errors import UserError
from msctr.evaluate.metrics import _labels, _probs  # shared input validation

__all__ = [
    "ALPHA",
    "DeLongGroups",
    "DeLongResult",
    "delong",
    "delong_groups",
    "mann_whitney",
    "mann_whitney_columns",
    "mean_std",
    "paired_t",
    "paired_t_columns",
    "significance_mark",
    "welch_t",
    "welch_t_columns",
]

ALPHA = 0.05
# Largest sample for which Mann-Whitney uses the exact null distribution (see mann_whitney).
_MW_EXACT_MAX = 50


def _sample(values: np.ndarray | list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).ravel()


# Two metric values closer than this (relative to their size) are the same number written with
# different rounding: 0.7 - 0.6 and 0.8 - 0.7 differ in the 17th digit, and SciPy would turn that
# into a t statistic of 1e15. Real seed-to-seed noise in a metric is many orders larger.
_REL_TOL = 1e-12


def _same(x: np.ndarray, ref: float) -> bool:
    """All of x equals ref up to rounding."""
    scale = max(float(np.max(np.abs(x))), abs(ref), 1e-300)
    return bool(np.all(np.abs(x - ref) <= _REL_TOL * scale))


def _scipy_p(test: Callable[[], object]) -> float:
    """p-value of a SciPy test, with its precision-loss RuntimeWarning silenced: it fires when
    one sample is constant, a case Welch handles exactly (that sample's variance is just 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(test().pvalue)  # type: ignore[attr-defined]


def _bad(x: np.ndarray) -> bool:
    return not bool(np.isfinite(x).all())


def _constant(x: np.ndarray) -> bool:
    return _same(x, float(x[0]))


def welch_t(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    """Two-sided Welch t-test p-value (scipy.stats.ttest_ind, equal_var=False).

    The test HierRec uses for its '*'. Needs >= 2 values in each sample.
    """
    a, b = _sample(a), _sample(b)
    if a.size < 2 or b.size < 2 or _bad(a) or _bad(b):
        return float("nan")
    if _constant(a) and _constant(b):
        return 1.0 if _same(a, float(b[0])) else float("nan")
    return _scipy_p(lambda: sps.ttest_ind(a, b, equal_var=False))


def paired_t(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    """Two-sided paired t-test p-value (scipy.stats.ttest_rel).

    For runs that share seeds: a[i] and b[i] must come from the same seed, so the seed's effect
    cancels in the difference. Needs >= 2 pairs.
    """
    a, b = _sample(a), _sample(b)
    if a.size != b.size:
        raise UserError(
            f"paired t-test needs one value per seed on both sides, got {a.size} and {b.size}; "
            "run both configurations on the same seeds or use the Welch test"
        )
    if a.size < 2 or _bad(a) or _bad(b):
        return float("nan")
    d = a - b
    # Tolerance relative to the metric values themselves, not to their (tiny) differences.
    tol = _REL_TOL * max(float(np.max(np.abs(a))), float(np.max(np.abs(b))), 1e-300)
    if np.ptp(d) <= tol:
        return 1.0 if np.all(np.abs(d) <= tol) else float("nan")
    return _scipy_p(lambda: sps.ttest_rel(a, b))


def mann_whitney(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    """Two-sided Mann-Whitney U p-value (scipy.stats.mannwhitneyu), the test SFPNet reports.

    Method: 'exact' when no value is tied and both samples have at most 50 values; otherwise
    'asymptotic' (normal approximation with tie correction and continuity correction). With the
    5-10 seeds of a typical comparison the normal approximation is poor, and the exact null
    distribution is cheap and valid as long as there are no ties; the exact distribution assumes
    distinct values, so ties fall back to the tie-corrected approximation. (SciPy's own 'auto'
    switches to the approximation above 8 values per sample; we keep exact further.)
    Needs >= 1 value in each sample; if every value is equal the p-value is 1.0.
    """
    a, b = _sample(a), _sample(b)
    if a.size < 1 or b.size < 1 or _bad(a) or _bad(b):
        return float("nan")
    both = np.concatenate([a, b])
    if _constant(both):
        return 1.0
    ties = np.unique(both).size < both.size
    method = "exact" if not ties and max(a.size, b.size) <= _MW_EXACT_MAX else "asymptotic"
    return _scipy_p(lambda: sps.mannwhitneyu(a, b, alternative="two-sided", method=method))


def mean_std(values: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over seeds; std is 0.0 for a single value
    and both are nan for none. NaN values propagate."""
    x = _sample(values)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), 0.0
    return float(x.mean()), float(x.std(ddof=1))


def significance_mark(p_value: float, alpha: float = ALPHA) -> str:
    """'*' when p < alpha (nan never qualifies), else ''."""
    return "*" if p_value < alpha else ""


# ---------------------------------------------------------------------------------------------
# The same tests on many columns at once: one column per metric (each scenario's AUC), one row
# per seed. Each column's p-value is the scalar function's on that column (same degenerate
# rules), from one SciPy call over all the columns that can be tested.


def _matrix(values: np.ndarray | list) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    return x.reshape(-1, 1) if x.ndim == 1 else x


def _same_cols(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per column: all of x equals ref (one value per column) up to rounding (`_same`)."""
    scale = np.maximum(np.maximum(np.abs(x).max(axis=0), np.abs(ref)), 1e-300)
    return np.all(np.abs(x - ref) <= _REL_TOL * scale, axis=0)


def _finite_cols(*xs: np.ndarray) -> np.ndarray:
    return np.logical_and.reduce([np.isfinite(x).all(axis=0) for x in xs])


def _scipy_cols(test: Callable[[], object]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(test().pvalue, dtype=np.float64)  # type: ignore[attr-defined]


def welch_t_columns(a: np.ndarray | list, b: np.ndarray | list) -> np.ndarray:
    """`welch_t` of each column of a [n_a, K] and b [n_b, K]: [K] p-values."""
    a, b = _matrix(a), _matrix(b)
    out = np.full(a.shape[1], np.nan)
    if a.shape[0] < 2 or b.shape[0] < 2:
        return out
    finite = _finite_cols(a, b)
    both_constant = _same_cols(a, a[0]) & _same_cols(b, b[0])
    out[finite & both_constant & _same_cols(a, b[0])] = 1.0
    run = finite & ~both_constant
    if run.any():
        out[run] = _scipy_cols(lambda: sps.ttest_ind(a[:, run], b[:, run], equal_var=False))
    return out


def paired_t_columns(a: np.ndarray | list, b: np.ndarray | list) -> np.ndarray:
    """`paired_t` of each column: row i of a and of b from the same seed."""
    a, b = _matrix(a), _matrix(b)
    if a.shape != b.shape:
        raise UserError(
            f"paired t-test needs one value per seed on both sides, got {a.shape[0]} and "
            f"{b.shape[0]}; run both configurations on the same seeds or use the Welch test"
        )
    out = np.full(a.shape[1], np.nan)
    if a.shape[0] < 2:
        return out
    finite = _finite_cols(a, b)
    d = a - b
    tol = _REL_TOL * np.maximum(np.maximum(np.abs(a).max(axis=0), np.abs(b).max(axis=0)), 1e-300)
    flat = np.ptp(d, axis=0) <= tol
    out[finite & flat & np.all(np.abs(d) <= tol, axis=0)] = 1.0
    run = finite & ~flat
    if run.any():
        out[run] = _scipy_cols(lambda: sps.ttest_rel(a[:, run], b[:, run]))
    return out


def mann_whitney_columns(a: np.ndarray | list, b: np.ndarray | list) -> np.ndarray:
    """`mann_whitney` of each column (exact without ties up to 50 values a side, else the
    tie-corrected normal approximation, chosen per column)."""
    a, b = _matrix(a), _matrix(b)
    out = np.full(a.shape[1], np.nan)
    if a.shape[0] < 1 or b.shape[0] < 1:
        return out
    finite = _finite_cols(a, b)
    both = np.concatenate([a, b])
    constant = _same_cols(both, both[0])
    out[finite & constant] = 1.0
    ranked = np.sort(both, axis=0)
    ties = np.any(ranked[1:] == ranked[:-1], axis=0)
    small = max(a.shape[0], b.shape[0]) <= _MW_EXACT_MAX
    for method, cols in (("exact", ~ties & small), ("asymptotic", ties | (not small))):
        run = finite & ~constant & cols
        if run.any():
            out[run] = _scipy_cols(
                lambda run=run, method=method: sps.mannwhitneyu(
                    a[:, run], b[:, run], alternative="two-sided", method=method
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# DeLong's test


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's test of AUC(p1) == AUC(p2) on one test set.

    var is the estimated variance of auc1 - auc2; z = (auc1 - auc2) / sqrt(var); p_value is
    two-sided from the standard normal.
    """

    auc1: float
    auc2: float
    z: float
    p_value: float
    var: float


def _components(
    is_pos: np.ndarray, score: np.ndarray, m: int, n: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """One scorer's DeLong structural components and exact 2*U, from a single sort.

    Sun & Xu write V10_i = (tz_i - tx_i) / n with tz the midrank of click i among all rows and
    tx its midrank among the clicks. In a tie block b preceded by CX_b clicks and CY_b
    non-clicks and holding cx_b and cy_b of them, tz = CX_b + CY_b + (cx_b + cy_b + 1) / 2 and
    tx = CX_b + (cx_b + 1) / 2, so tz - tx = CY_b + cy_b / 2: the non-clicks ranked below plus
    half the tied ones. Likewise tz - ty = CX_b + cx_b / 2 for a non-click. Working from block
    counts gives all three midrank vectors' differences with one sort instead of three.
    Returns v10 [m] and v01 [n] in the row order of the clicks / non-clicks, and 2*U (int).
    """
    total = score.shape[0]
    order = np.argsort(score)  # order inside tie blocks is irrelevant
    s_sorted = score[order]
    pos_sorted = is_pos[order]
    new_block = np.empty(total, dtype=bool)
    new_block[0] = True
    new_block[1:] = s_sorted[1:] != s_sorted[:-1]
    starts = np.flatnonzero(new_block)  # [B]
    block = np.cumsum(new_block) - 1  # [total] block of each sorted row
    cx = np.add.reduceat(pos_sorted.astype(np.int64), starts)  # [B] clicks per block
    cy = np.diff(np.append(starts, total)) - cx  # [B] non-clicks per block
    cx_before = np.cumsum(cx) - cx  # [B]
    cy_before = np.cumsum(cy) - cy  # [B]
    u2 = int((cx * (2 * cy_before + cy)).sum())  # 2 * Mann-Whitney U, exact
    v_sorted = np.where(
        pos_sorted,
        (cy_before + 0.5 * cy)[block] / n,  # clicks: V10
        1.0 - (cx_before + 0.5 * cx)[block] / m,  # non-clicks: V01
    )
    v = np.empty(total)
    v[order] = v_sorted
    return v[is_pos], v[~is_pos], u2


def delong(y: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> DeLongResult:
    """DeLong, DeLong & Clarke-Pearson (1988) test for two correlated AUCs, computed with the
    O(N log N) midrank algorithm of Sun & Xu (2014).

    With m clicks X and n non-clicks Y, a scorer's structural components are
    V10_i = P(Y < X_i) + 0.5 P(Y = X_i) over the non-clicks and
    V01_j = P(X > Y_j) + 0.5 P(X = Y_j) over the clicks; the AUC is their mean. Sun & Xu get
    them from midranks instead of the m*n pair table (see `_components`).
    Var(AUC1 - AUC2) = c' (S10 / m + S01 / n) c with c = (1, -1) and S the 2x2 sample
    covariances (ddof=1) of the components.

    Undefined cases return nan instead of raising: one class only -> everything nan; fewer than
    2 clicks or non-clicks -> AUCs computed, var/z/p nan. A zero variance (e.g. p1 == p2)
    gives z = 0, p = 1 when the AUCs are equal.
    """
    y = _labels(y)
    p = (_probs(p1, y.shape[0]), _probs(p2, y.shape[0]))
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    nan = float("nan")
    if m == 0 or n == 0:
        return DeLongResult(nan, nan, nan, nan, nan)
    (v10_1, v01_1, u2_1), (v10_2, v01_2, u2_2) = (_components(pos, p[r], m, n) for r in (0, 1))
    auc1, auc2 = u2_1 / (2.0 * m * n), u2_2 / (2.0 * m * n)
    if m < 2 or n < 2:
        return DeLongResult(auc1, auc2, nan, nan, nan)
    v10 = np.stack([v10_1, v10_2])  # [2, m]
    v01 = np.stack([v01_1, v01_2])  # [2, n]
    s = np.cov(v10) / m + np.cov(v01) / n  # [2, 2]
    var = float(s[0, 0] + s[1, 1] - 2.0 * s[0, 1])
    diff = auc1 - auc2
    if var <= 0.0:
        # The difference has no estimated noise (identical scorers, or both separating
        # perfectly): equal AUCs -> no evidence of a gap; unequal AUCs (rare) -> nan rather
        # than a p-value of 0 that would claim certainty from no noise estimate.
        return DeLongResult(
            auc1, auc2, 0.0 if diff == 0 else nan, 1.0 if diff == 0 else nan, max(var, 0.0)
        )
    z = diff / np.sqrt(var)
    return DeLongResult(auc1, auc2, float(z), float(2.0 * sps.norm.sf(abs(z))), var)


@dataclass(frozen=True)
class DeLongGroups:
    """DeLong's test in each group of rows (each scenario's test rows): [G] arrays with the
    meaning of `DeLongResult`'s fields, and the same rules for undefined groups."""

    auc1: np.ndarray
    auc2: np.ndarray
    z: np.ndarray
    p_value: np.ndarray
    var: np.ndarray


def _group_components(
    is_pos: np.ndarray, score: np.ndarray, group: np.ndarray, m: np.ndarray, n: np.ndarray
) -> np.ndarray:
    """`_components` inside each group at once: rows sorted by (group, score), tie blocks
    never cross a group, and the clicks / non-clicks counted before a block are those of its
    own group. Returns V10 at the clicks and V01 at the non-clicks, in row order."""
    total = score.shape[0]
    order = np.lexsort((score, group))
    s_sorted, g_sorted, pos_sorted = score[order], group[order], is_pos[order]
    new_group = np.empty(total, dtype=bool)
    new_group[0] = True
    new_group[1:] = g_sorted[1:] != g_sorted[:-1]
    new_block = new_group.copy()
    new_block[1:] |= s_sorted[1:] != s_sorted[:-1]
    starts = np.flatnonzero(new_block)  # [B]
    block = np.cumsum(new_block) - 1  # [total]
    cx = np.add.reduceat(pos_sorted.astype(np.int64), starts)  # [B]
    cy = np.diff(np.append(starts, total)) - cx
    # counts before each block within its group: running totals less the group's start
    first = np.maximum.accumulate(np.where(new_group[starts], np.arange(starts.size), 0))
    cx_run, cy_run = np.cumsum(cx) - cx, np.cumsum(cy) - cy
    cx_before, cy_before = cx_run - cx_run[first], cy_run - cy_run[first]
    with np.errstate(divide="ignore", invalid="ignore"):  # a group lacking a class: nan
        v_sorted = np.where(
            pos_sorted,
            (cy_before + 0.5 * cy)[block] / n[g_sorted],
            1.0 - (cx_before + 0.5 * cx)[block] / m[g_sorted],
        )
    v = np.empty(total)
    v[order] = v_sorted
    return v


def _group_var(d: np.ndarray, group: np.ndarray, count: np.ndarray, size: int) -> np.ndarray:
    """Sample variance (ddof=1) of d within each group (two passes, for precision)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.bincount(group, weights=d, minlength=size) / count
        sq = np.bincount(group, weights=(d - mean[group]) ** 2, minlength=size)
        return sq / (count - 1)


def delong_groups(
    y: np.ndarray, p1: np.ndarray, p2: np.ndarray, group: np.ndarray, num_groups: int
) -> DeLongGroups:
    """`delong` on the rows of each group 0..num_groups-1, all groups in one pass (one sort by
    group and score per scorer): a single run's per-scenario marks."""
    y = _labels(y)
    p = (_probs(p1, y.shape[0]), _probs(p2, y.shape[0]))
    group = np.asarray(group).astype(np.int64)
    pos = y == 1
    m = np.bincount(group[pos], minlength=num_groups)
    n = np.bincount(group[~pos], minlength=num_groups)
    nan = np.full(num_groups, np.nan)
    if y.size == 0:
        return DeLongGroups(nan, nan.copy(), nan.copy(), nan.copy(), nan.copy())
    v1, v2 = (_group_components(pos, p[r], group, m, n) for r in (0, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        auc1 = np.bincount(group[pos], weights=v1[pos], minlength=num_groups) / m
        auc2 = np.bincount(group[pos], weights=v2[pos], minlength=num_groups) / m
        var = _group_var(v1[pos] - v2[pos], group[pos], m, num_groups) / m
        var += _group_var(v1[~pos] - v2[~pos], group[~pos], n, num_groups) / n
    both = (m > 0) & (n > 0)
    auc1, auc2 = np.where(both, auc1, np.nan), np.where(both, auc2, np.nan)
    var = np.where(both & (m >= 2) & (n >= 2), var, np.nan)
    diff = auc1 - auc2
    noisy = var > 0.0  # nan compares False
    flat = var <= 0.0  # no estimated noise: z 0 and p 1 when the AUCs agree, else nan
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(noisy, diff / np.sqrt(np.where(noisy, var, 1.0)), np.nan)
    z = np.where(flat & (diff == 0), 0.0, z)
    p_value = np.where(noisy, 2.0 * sps.norm.sf(np.abs(z)), np.nan)
    p_value = np.where(flat & (diff == 0), 1.0, p_value)
    return DeLongGroups(auc1, auc2, z, p_value, np.where(flat, 0.0, var))

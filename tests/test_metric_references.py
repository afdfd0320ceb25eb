"""Per-scenario AUC inside `compute_all` and the synthetic Bayes ceiling, each against
scikit-learn on the rows themselves (not against another msctr function)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from msctr.data.sources.synthetic import generate
from msctr.evaluate.bayes import bayes_auc, bayes_metrics
from msctr.evaluate.metrics import compute_all


def test_compute_all_scenario_aucs_match_sklearn_on_each_scenarios_rows():
    rng = np.random.default_rng(5)
    n, S = 4000, 5
    s = rng.integers(0, S - 1, n)  # scenario 4 has no rows
    p = rng.random(n)
    # a different signal strength per scenario, so the AUCs differ from scenario to scenario
    y = (rng.random(n) < 0.15 + 0.7 * p * (s + 1) / S).astype(np.int64)
    y[s == 3] = 1  # scenario 3: clicks only, AUC undefined
    out = compute_all(y, p, s, S)
    for k in range(3):
        m = s == k
        assert out[f"auc_s{k}"] == pytest.approx(roc_auc_score(y[m], p[m]), abs=1e-9)
    assert len({round(out[f"auc_s{k}"], 6) for k in range(3)}) == 3
    assert np.isnan(out["auc_s3"]) and np.isnan(out["auc_s4"])


def test_bayes_ceiling_is_sklearns_auc_of_the_true_probability():
    table = generate(rows=4000, seed=7, seq_len=6)
    df = table.frame.collect()
    f = table.fields
    y, p, s = df[f.label].to_numpy(), df[f.true_prob].to_numpy(), df[f.scenario].to_numpy()
    m = bayes_metrics(table)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(y, p), abs=1e-12)
    assert bayes_auc(table) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    for k, row in m["scenarios"].items():
        sel = s == k
        assert row["rows"] == int(sel.sum())
        assert row["auc"] == pytest.approx(roc_auc_score(y[sel], p[sel]), abs=1e-12)

"""The Bayes ceiling of planted-signal data: the metrics of the true click probability (what no
model can beat), and each planted logit term's share of its AUC."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from msctr.data.sources.base import SourceTable
from msctr.errors import UserError

if TYPE_CHECKING:
    from msctr.data.planted.clicks import Simulation


def bayes_metrics(
    data: SourceTable | pl.DataFrame | pl.LazyFrame,
    label: str = "is_click",
    prob: str = "true_prob",
    scenario: str = "tab",
) -> dict:
    """AUC and logloss of the true probability (what no model can beat), overall and per scenario.

    `data` is a SourceTable (its FieldMap names the columns) or any frame holding the
    three named columns, e.g. a prepared split with ``label``, ``_true_prob``, ``scenario``.
    """
    from sklearn.metrics import log_loss, roc_auc_score

    if isinstance(data, SourceTable):
        f = data.fields
        if f.true_prob is None:
            raise UserError(f"dataset '{data.name}' has no true click probability")
        label, prob, scenario = f.label, f.true_prob, f.scenario
        data = data.frame
    df = data.lazy().select(scenario, label, prob).collect()

    def one(d: pl.DataFrame) -> dict:
        y, p = d[label].to_numpy(), d[prob].to_numpy()
        both = 0 < y.sum() < len(y)
        return {
            "rows": len(y),
            "ctr": float(y.mean()),
            "mean_true_prob": float(p.mean()),
            "auc": float(roc_auc_score(y, p)) if both else float("nan"),
            "logloss": float(log_loss(y, p, labels=[0, 1])),
        }

    out = one(df)
    groups = df.partition_by(scenario, as_dict=True, maintain_order=False)
    out["scenarios"] = {int(k[0]): one(d) for k, d in sorted(groups.items())}
    return out


def bayes_auc(data: SourceTable | pl.DataFrame | pl.LazyFrame, **columns: str) -> float:
    """AUC of the true click probability: the best AUC any model can reach on these rows."""
    return bayes_metrics(data, **columns)["auc"]


def term_shares(
    sim: Simulation, names: list[str] | tuple[str, ...] | None = None, test_share: float = 0.1
) -> dict[str, float]:
    """Each term's share of the Bayes AUC on the test rows (the last `test_share` of the log,
    as `prepare` splits it): AUC of true_prob minus AUC of sigmoid(logit - term), labels
    unchanged. `names` may join several terms with "+" to remove them together."""
    from sklearn.metrics import roc_auc_score

    perm = np.lexsort((sim.user, sim.time_ms))  # log order
    n = len(perm)
    test = perm[int(n * (1.0 - test_share)) :]
    y = sim.label[test]
    total = np.sum(list(sim.terms.values()), axis=0)[test]
    full = roc_auc_score(y, total)
    out = {}
    for group in names if names is not None else list(sim.terms):
        minus = sum(sim.terms[t][test] for t in group.split("+"))
        out[group] = float(full - roc_auc_score(y, total - minus))
    return out

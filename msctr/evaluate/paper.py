"""The paper's figures beside ours: what a reproduction study reads first.

A paper recipe carries the numbers its paper reports (`paper:` in the recipe). When a run of
it was made on the paper's dataset in the paper's setup, `compare` pairs each reported figure
with the run's mean and std over seeds, and measures whether the models come out in the
paper's order (Kendall's tau and Spearman's rho over the models, per metric). On any other
data it says why the comparison is not shown: on synthetic data or a user's table the
paper's numbers mean nothing.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from msctr.data.schema import Schema
from msctr.recipe import PaperFigures
from msctr.tables import Table


def not_comparable(paper: PaperFigures, schema: Schema) -> str | None:
    """Why this run's figures cannot be set beside the paper's, or None when they can."""
    dataset = schema.info.get("dataset")
    if dataset != paper.dataset:
        what = f"{dataset} data" if dataset else f"'{schema.source}' data"
        return f"the run is on {what}; the paper's figures are for {paper.dataset}"
    n_fields = 1 + len(schema.sparse) + len(schema.dense) + len(schema.sequences)
    if paper.fields is not None and n_fields != paper.fields:
        return (
            f"the data has {n_fields} input fields and the paper's setup {paper.fields}; "
            "prepare it as the recipe's comment says"
        )
    missing = [s for s in paper.scenarios if s not in schema.scenario_names]
    if missing:
        return f"the data has no scenario(s) {missing} of the paper's table"
    return None


def _rank_agreement(paper: list[float], ours: list[float], higher_better: bool) -> dict:
    """Kendall's tau and Spearman's rho of the models' values, and whether the order is the
    same (ties in the paper count as either order)."""
    out: dict = {"models": len(paper)}
    if len(paper) < 2:
        return out
    tau = stats.kendalltau(paper, ours)
    rho = stats.spearmanr(paper, ours)
    sign = 1 if higher_better else -1
    order = np.argsort([-sign * v for v in paper], kind="stable")
    seq = [ours[i] * sign for i in order]
    out.update(
        kendall_tau=float(tau.statistic),
        kendall_p=float(tau.pvalue),
        spearman_rho=float(rho.statistic),
        same_order=all(
            a >= b or paper[order[i]] == paper[order[i + 1]]
            for i, (a, b) in enumerate(zip(seq, seq[1:]))
        ),
    )
    return out


def compare(paper: PaperFigures, schema: Schema, rows: list[dict]) -> dict:
    """The paper's figures next to `rows` (summarize's per-model rows): per metric and model
    paper value, our mean and std, their difference; and the rank agreement per metric."""
    out: dict = {"source": paper.source, "dataset": paper.dataset}
    why = not_comparable(paper, schema)
    if why:
        return {**out, "shown": False, "why": why}
    by_model = {r["model"]: r for r in rows}
    labels = paper.scenario_labels or paper.scenarios
    metrics = [("auc", "AUC", True), ("logloss", "Logloss", False)]
    metrics += [
        (f"auc_s{schema.scenario_names.index(s)}", f"AUC {label}", True)
        for s, label in zip(paper.scenarios, labels, strict=True)
    ]
    table = []
    for p in paper.rows:
        if p.model not in by_model:
            continue
        given = {"auc": p.auc, "logloss": p.logloss}
        given |= {m: v for (m, _, _), v in zip(metrics[2:], p.scenario_auc)}
        ours = by_model[p.model]
        for key, name, _ in metrics:
            if given.get(key) is None or key not in ours:
                continue
            mean, std = ours[key]["mean"], ours[key]["std"]
            table.append(
                {
                    "model": p.model,
                    "paper_name": p.name or p.model,
                    "metric": name,
                    "paper": given[key],
                    "ours": mean,
                    "std": std,
                    "diff": mean - given[key],
                }
            )
    ranks = {}
    for _, name, higher in metrics:
        pairs = [(r["paper"], r["ours"]) for r in table if r["metric"] == name]
        pairs = [(a, b) for a, b in pairs if not math.isnan(b)]
        if pairs:
            ranks[name] = _rank_agreement([a for a, _ in pairs], [b for _, b in pairs], higher)
    return {**out, "shown": True, "rows": table, "rank": ranks}


def _num(v: float, digits: int = 4) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def tables(cmp: dict) -> list[Table]:
    """The comparison, models as rows: overall AUC and Logloss, then AUC per scenario (paper,
    ours, diff for each), then the rank agreement. `print_tables` splits the wide ones to the
    terminal's width; report.md has them whole."""
    rows = cmp["rows"]
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    cell = {(r["model"], r["metric"]): r for r in rows}
    overall = [m for m in metrics if not m.startswith("AUC ")]
    scenario = [m for m in metrics if m.startswith("AUC ")]
    out = []
    for group, title in ((overall, "overall"), (scenario, "AUC per scenario")):
        if not group:
            continue
        header = ["Model"]
        for m in group:  # each column named in full: a wide table is split between columns
            name = m.removeprefix("AUC ") if m.startswith("AUC ") else m
            header += [f"{name} paper", f"{name} ours", f"{name} diff"]
        body = []
        for model in models:
            line = [model]
            for m in group:
                r = cell.get((model, m))
                line += ["-"] * 3 if r is None else [
                    _num(r["paper"]), _num(r["ours"]), f"{r['diff']:+.4f}"
                ]  # fmt: skip
            body.append(line)
        out.append(Table(header, body, title=f"paper vs measured: {title}"))
    rank_rows = [
        [
            m,
            str(r["models"]),
            f"{r['kendall_tau']:+.2f}",
            f"{r['kendall_p']:.2g}",
            f"{r['spearman_rho']:+.2f}",
            "yes" if r["same_order"] else "no",
        ]
        for m, r in cmp["rank"].items()
        if "kendall_tau" in r
    ]
    if rank_rows:
        header = ["Metric", "Models", "Kendall tau", "p", "Spearman rho", "Paper's order"]
        out.append(Table(header, rank_rows, title="do the models rank as in the paper?"))
    return out


def legend(cmp: dict) -> str:
    if not cmp["shown"]:
        return f"paper vs measured ({cmp['source']}): not shown — {cmp['why']}."
    renamed = sorted(
        {f"{r['model']} = {r['paper_name']}" for r in cmp["rows"] if r["paper_name"] != r["model"]}
    )
    names = f" Rows named otherwise in the paper: {', '.join(renamed)}." if renamed else ""
    return (
        f"paper: {cmp['source']}; ours: mean over seeds; diff = ours - paper.{names} "
        "Kendall tau / Spearman rho: agreement of the models' order with the paper's "
        "(1 = the same order)."
    )

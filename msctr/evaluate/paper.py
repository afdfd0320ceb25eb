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
    fields = n_fields(schema)
    if paper.fields is not None and fields != paper.fields:
        return (
            f"the data has {fields} input fields and the paper's setup {paper.fields}; "
            "prepare it as the recipe's comment says"
        )
    missing = [s for s in paper.scenarios if s not in schema.scenario_names]
    if missing:
        return f"the data has no scenario(s) {missing} of the paper's table"
    return None


def n_fields(schema: Schema) -> int:
    """Input fields as the papers count them: the scenario, every sparse and dense field,
    each behaviour sequence."""
    return 1 + len(schema.sparse) + len(schema.dense) + len(schema.sequences)


def dataset_setup(schema: Schema) -> dict:
    """The prepared dataset's setup that produced a result, from its schema.json: the source
    and format, how scenarios (and partitions) were drawn, the split, the field count and the
    rows per split. Stored with every result and set beside a paper's protocol."""
    info = schema.info
    return {
        "dataset": info.get("dataset") or schema.source,
        "source": schema.source,
        "format": info.get("format") or info.get("variant"),
        "setup": info.get("setup"),
        "scenario_column": info.get("scenario_column"),
        "scenarios": list(schema.scenario_names),
        "scenario_values": info.get("scenario_values"),
        "partition_fields": list(schema.partition_fields),
        "partitions": schema.num_partitions,
        "split": info.get("split"),
        "split_fractions": info.get("split_fractions"),
        "val_from": info.get("val_from"),
        "val_fraction": info.get("val_fraction"),
        "fields": n_fields(schema),
        "sparse": len(schema.sparse),
        "dense": len(schema.dense),
        "sequences": len(schema.sequences),
        "min_count": info.get("min_count"),
        "rows": dict(schema.rows),
    }


def _split_text(setup: dict) -> str:
    split, fr = setup.get("split"), setup.get("split_fractions")
    if split == "given":
        val = setup.get("val_fraction")
        part = f"{val:.0%} of " if isinstance(val, int | float) else ""
        if setup.get("val_from") == "test":
            return f"source's train as train; {part}source's test as val, the rest as test"
        return f"source's train into train / val ({part}train as val), source's test as test"
    if fr:
        return f"{split} {'/'.join(f'{x:.0%}' for x in fr)}"
    return str(split)


def setup_text(setup: dict) -> str:
    """One line: the dataset setup a result was measured on."""
    head = f"{setup['dataset']} ({setup['source']}"
    head += f", {setup['format']}" if setup.get("format") else ""
    head += f", setup {setup['setup']}" if setup.get("setup") else ""
    values = setup.get("scenario_values") or {}
    names = [f"{n}={values[n]}" if n in values else n for n in setup["scenarios"]]
    by = f" by {setup['scenario_column']}" if setup.get("scenario_column") else ""
    parts = [f"{len(names)} scenarios{by} ({', '.join(names)})"]
    if setup.get("partition_fields"):
        fields = " x ".join(setup["partition_fields"])
        parts.append(f"{setup['partitions'] - 1} partitions by {fields}")  # id 0: unseen
    parts.append(f"split: {_split_text(setup)}")
    parts.append(
        f"{setup['fields']} fields ({setup['sparse']} sparse, {setup['dense']} dense, "
        f"{setup['sequences']} sequences)"
    )
    if setup.get("min_count") is not None:
        parts.append(f"min_count {setup['min_count']}")
    rows = setup.get("rows") or {}
    if rows:
        parts.append("rows " + " / ".join(f"{k} {v:,}" for k, v in rows.items()))
    return head + "): " + "; ".join(parts)


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
    # the protocol beside the figures, shown or not: a gap may be the data's, not the model's
    out |= {"protocol": paper.protocol, "setup": setup_text(dataset_setup(schema))}
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


def protocol_lines(cmp: dict) -> list[str]:
    """The paper's data protocol and this run's dataset setup, one line each."""
    if "setup" not in cmp:  # a results.json from before protocols were recorded
        return []
    paper = cmp.get("protocol") or "not recorded in the recipe (paper.protocol)"
    return [f"protocol, paper: {paper}", f"protocol, this run: {cmp['setup']}"]


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

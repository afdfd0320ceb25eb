"""`msctr ablate`: a model's named parts switched off, each variant trained over the recipe's
seeds and compared with the full model (the papers' ablation tables and figures)."""

from __future__ import annotations

import copy
import re

from rich.console import Console
from rich.markup import escape

from msctr.errors import UserError
from msctr.evaluate import figures
from msctr.evaluate.report import (
    REPORT,
    TERMINAL,
    CellStyle,
    append_section,
    section,
    summarize,
)
from msctr.models.registry import check_switches, get_spec
from msctr.recipe import ModelEntry, Recipe
from msctr.runs import RunFolder
from msctr.tables import Table, print_tables
from msctr.train.loop import train_recipe


def pick_model(recipe: Recipe, key: str | None) -> ModelEntry:
    if key is not None:
        return recipe.models[recipe.model_index(key, "--model")]
    with_switches = [m for m in recipe.models if get_spec(m.name).switches]
    if not with_switches:
        raise UserError(
            "no model of this recipe declares ablation switches; ablate hierrec, sfpnet or hmdn"
        )
    return with_switches[-1]  # recipes list the proposed model last, as the papers' tables do


def variants(entry: ModelEntry, drops: list[str]) -> list[tuple[str, list[str]]]:
    """(label suffix, switches dropped) per variant; 'all' expands to every switch one by one,
    and 'a+b' drops several parts in one variant."""
    spec = get_spec(entry.name)
    if not drops:
        raise UserError(
            f"give at least one --drop; {entry.name}'s switches are: "
            f"{', '.join(spec.switches)} (or --drop all)"
        )
    out: list[tuple[str, list[str]]] = []
    for d in drops:
        names = list(spec.switches) if d == "all" else [[p for p in d.split("+") if p]]
        if d != "all" and not names[0]:
            # it would train the full model again and show it as an ablation row
            raise UserError(
                f"--drop {d!r} names no switch; give one or more joined by '+', e.g. "
                f"--drop {'+'.join(list(spec.switches)[:2])}; {entry.name}'s switches are: "
                f"{', '.join(spec.switches)}"
            )
        for group in [[n] for n in names] if d == "all" else names:
            check_switches(spec, group)
            if group not in [g for _, g in out]:
                out.append(("w/o " + "+".join(group), group))
    return out


def ablation_recipe(
    recipe: Recipe, entry: ModelEntry, drops: list[str], with_baselines: bool = False
) -> Recipe:
    """The full model, then each variant; with `with_baselines`, then the recipe's other
    models too (the mechanism recipes' strongest baseline), all tested against the full model."""
    base_drop = list(entry.params.get("drop", []))
    full = ModelEntry(entry.name, entry.key, copy.deepcopy(entry.params))
    models = [full]
    for suffix, group in variants(entry, drops):
        params = copy.deepcopy(entry.params)
        params["drop"] = base_drop + [g for g in group if g not in base_drop]
        models.append(ModelEntry(entry.name, f"{entry.key} {suffix}", params))
    if with_baselines:
        models += [copy.deepcopy(m) for m in recipe.models if m.key != entry.key]
    r = copy.deepcopy(recipe)
    # the name must stay a valid recipe name: labels may hold "(", " ", "/"
    r.name = f"{recipe.name}-ablate-{re.sub(r'[^A-Za-z0-9_.-]+', '_', entry.key).strip('_')}"
    r.out = str(recipe.run_dir.parent / r.name) if recipe.out is None else f"{recipe.out}-ablate"
    r.models = models
    r.eval.baseline = full.key
    r.eval.baselines = [full.key]  # every variant is tested against the full model
    return r


def ablation_rows(result: dict, style: CellStyle = REPORT) -> tuple[list[str], list[list[str]]]:
    rows_in = result["models"]
    full = rows_in[0]
    scen = result["scenarios"]
    header = [
        "Variant",
        *(f"AUC {s}" for s in scen),
        "AUC",
        "Δ AUC",
        "Logloss",
        "Δ Logloss",
        "p (vs full)",
        "MWU p",
    ]
    rows = []
    for r in rows_in:
        t = r["test"] or {}
        p = t.get("welch_p", t.get("delong_p"))
        mark = "*" if t.get("significant") else ""
        d_auc = r["auc"]["mean"] - full["auc"]["mean"]
        d_ll = r["logloss"]["mean"] - full["logloss"]["mean"]
        rows.append(
            [
                r["model"],
                *(f"{r[f'auc_s{k}']['mean']:.4f}" for k in range(len(scen))),
                f"{r['auc']['mean']:.4f}"
                + (f" ±{r['auc']['std']:.4f}" if len(r["auc"]["runs"]) > 1 else ""),
                "" if r is full else f"{d_auc:+.4f}{mark}",
                f"{r['logloss']['mean']:.4f}",
                "" if r is full else f"{d_ll:+.4f}",
                "" if p is None else f"{p:{style.p_digits}}",
                "" if t.get("mannwhitney_p") is None else f"{t['mannwhitney_p']:{style.p_digits}}",
            ]
        )
    return header, rows


def ablation_table(result: dict, key: str, style: CellStyle = REPORT) -> Table:
    """The ablation table of model `key`, all in one: the report's."""
    header, rows = ablation_rows(result, style)
    return Table(header, rows, title=f"Ablation of {key} ({result['test_rows']:,} test rows)")


def ablation_tables(result: dict, key: str) -> list[Table]:
    """The same as the terminal shows it (p-values in scientific notation): the overall
    columns, then the per-scenario AUCs in a table of their own, as `msctr eval` does. The
    Mann-Whitney column is left out where no variant has that test (single runs)."""
    full = ablation_table(result, key, TERMINAL)
    k = len(result["scenarios"])
    overall = list(range(1 + k, len(full.header)))
    if not any(row[-1] for row in full.rows):
        overall = overall[:-1]
    scen = result["scenarios"]
    return [
        full.select(overall, full.title),
        full.select(range(1, 1 + k), "AUC per scenario", header=scen),
    ]


def run_ablation(
    recipe: Recipe,
    drops: list[str],
    model: str | None,
    console: Console,
    with_baselines: bool = False,
    fresh: bool = False,
) -> dict:
    entry = pick_model(recipe, model)
    r = ablation_recipe(recipe, entry, drops, with_baselines)
    run_dir = train_recipe(r, console, fresh=fresh)
    result = summarize(run_dir)
    table = ablation_table(result, entry.key)
    print_tables(console, *ablation_tables(result, entry.key))
    console.print(
        "Δ = variant minus full model; * = p < "
        f"{result['alpha']} (Welch t-test over seeds, or DeLong's test for a single run)."
    )
    report = RunFolder(run_dir).report
    figure = RunFolder(run_dir).figure("ablation.png")
    plotted = figures.ablation(result, figure)
    image = "![overall AUC](ablation.png)" if plotted else ""
    append_section(report, section("Ablation", table, image))
    if plotted:
        console.print(f"wrote {escape(str(report))} and {escape(str(figure))}")
    else:
        console.print(f"wrote {escape(str(report))}; no figure: no variant's test AUC is a number")
    return result

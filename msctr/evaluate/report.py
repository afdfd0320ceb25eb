"""`msctr eval RUN_DIR`: metrics from the saved predictions, aggregated over seeds, with
significance against the best baseline, the Bayes ceiling where the truth is known, and the
papers' table shape (models as rows; per-scenario AUC, AUC, Logloss, ...).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console
from rich.markup import escape

from msctr import track
from msctr.config import parse_yaml
from msctr.data.schema import LABEL, SCENARIO, SESSION, TRUE_PROB, USER, Schema
from msctr.errors import UserError
from msctr.evaluate import figures, metrics, paper, stats
from msctr.evaluate.figures import BAYES
from msctr.io import reading, write_json, write_text
from msctr.recipe import (
    BEST_BASELINE,
    ModelEntry,
    Recipe,
    fingerprint_change,
    recipe_from_dict,
    run_fingerprint,
)
from msctr.runs import RunFolder, SeedRun
from msctr.tables import Table, print_tables


def run_metrics(
    pred: pl.DataFrame, num_scenarios: int, prob: str = "prob", bins: int = metrics.CALIBRATION_BINS
) -> dict:
    cols = set(pred.columns)
    return metrics.compute_all(
        pred[LABEL].to_numpy(),
        pred[prob].to_numpy(),
        pred[SCENARIO].to_numpy(),
        num_scenarios,
        user=pred[USER].to_numpy() if USER in cols else None,
        session=pred[SESSION].to_numpy() if SESSION in cols else None,
        bins=bins,
    )


@dataclass
class ModelRuns:
    key: str
    name: str
    seeds: list[int]
    runs: list[dict]  # per-seed metrics, in seed order
    folder: Path

    def values(self, metric: str) -> np.ndarray:
        return np.array([r[metric] for r in self.runs], dtype=np.float64)

    def matrix(self, metrics: list[str]) -> np.ndarray:
        """[seeds, metrics]: each seed's value of each metric (e.g. every scenario's AUC)."""
        return np.array([[r[m] for m in metrics] for r in self.runs], dtype=np.float64)

    def predictions(self, seed: int) -> pl.DataFrame:
        return read_predictions(self.run(seed).predictions)

    def run(self, seed: int) -> SeedRun:
        return SeedRun(self.folder / f"seed_{seed}")


PREDICTION_COLUMNS = (LABEL, SCENARIO, "prob")


def read_predictions(path: Path) -> pl.DataFrame:
    with reading(path, "retrain this model and seed (or remove the run folder)"):
        pred = pl.read_parquet(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in pred.columns]
    if missing:
        raise UserError(
            f"'{path}' lacks column(s) {', '.join(missing)}; retrain this model and seed"
        )
    return pred


def load_run(run_dir: Path, data: Path | None = None) -> tuple[Recipe, Schema]:
    """The run's recorded recipe and its dataset's schema (`data` overrides the recorded
    dataset folder, e.g. after moving the project)."""
    path = RunFolder(run_dir).recipe
    if not path.is_file():
        raise UserError(
            f"'{run_dir}' is not a training run (no recipe.yaml); run `msctr train` first"
        )
    with reading(path, "restore it or retrain the recipe into a fresh run folder"):
        raw = parse_yaml(path.read_bytes().decode("utf-8"))
    if not isinstance(raw, dict):
        raise UserError(f"'{path}' is not a recipe (not a YAML mapping); retrain the recipe")
    recipe = recipe_from_dict(raw, where=str(path))
    folder = Path(data) if data is not None else Path(recipe.data)
    if not folder.is_dir():
        raise UserError(
            f"the run's dataset '{folder}' (recorded in {path}) is not found from here; "
            "run eval from the folder you trained in, or give --data PATH"
        )
    return recipe, Schema.load(folder)


def check_belongs(
    run: SeedRun, recipe: Recipe, entry: ModelEntry, schema: Schema, run_dir: Path, data: Path
) -> None:
    """A run is evaluated only if it was trained by the folder's recorded recipe: its
    fingerprint (written when it started) agrees on every result-affecting key. Runs of an
    msctr that wrote no fingerprint are taken as they are."""
    if not run.fingerprint.is_file():
        return
    with reading(run.fingerprint, "retrain the recipe with `msctr train --fresh`"):
        got = json.loads(run.fingerprint.read_text())
    change = fingerprint_change(got, run_fingerprint(recipe, entry, schema), entry.key)
    if change is not None and change[0].startswith("data"):
        # the runs are sound, for the data they were trained on: say which data, no --fresh
        raise UserError(
            f"'{run.folder}' was trained on other data than the dataset '{data}' holds now "
            f"(prepared_md5 {change[1]} there, {change[2]} in '{data}'): the dataset was "
            "prepared again since, or --data points at another one; give --data the dataset "
            "the runs were trained on, or retrain the recipe on this one into a new run folder"
        )
    if change is not None:
        key, was, now = change
        raise UserError(
            f"'{run.folder}' was trained with {key} = {was!r}, but '{run_dir}' records "
            f"{now!r}: the folder mixes recipes; retrain it with `msctr train --fresh`"
        )


def collect(
    run_dir: Path, recipe: Recipe, schema: Schema, partial: bool = False, data: Path | None = None
) -> tuple[list[ModelRuns], list[str]]:
    """Every (model, seed) run the recipe asks for, with its test metrics, and the runs that
    are missing. A missing run is an error unless `partial`: statistics over a silently
    smaller sample of seeds would look like the recipe's and are not."""
    out, missing = [], []
    for entry in recipe.models:
        folder = RunFolder(run_dir).model(entry.key)
        seeds, runs = [], []
        for seed in recipe.train.seeds:
            run = SeedRun(folder / f"seed_{seed}")
            if not run.predictions.is_file():
                missing.append(f"{entry.key} seed {seed}")
                continue
            check_belongs(run, recipe, entry, schema, run_dir, data or Path(recipe.data))
            predictions = read_predictions(run.predictions)
            if not out and not runs:  # a folder trained before `train` refused such test rows
                metrics.check_test_labels(predictions[LABEL].to_numpy(), recipe.train.eval_rows)
            m = run_metrics(predictions, schema.num_scenarios, bins=recipe.eval.calibration_bins)
            write_json(run.metrics, m)
            seeds.append(seed)
            runs.append(m)
        if runs:
            out.append(ModelRuns(entry.key, entry.name, seeds, runs, folder))
    if not out:
        raise UserError(f"no finished runs under '{run_dir}' (no predictions.parquet); train first")
    if missing and not partial:
        raise UserError(
            f"{len(missing)} run(s) of the recipe have no predictions.parquet in '{run_dir}': "
            f"{', '.join(missing)}; finish them with `msctr train`, or `msctr eval --partial` "
            "to compare the finished seeds only"
        )
    rows = {f"{m.key} seed {s}": r["n"] for m in out for s, r in zip(m.seeds, m.runs)}
    usual = max(set(rows.values()), key=list(rows.values()).count)
    odd = [f"{run} has {n:,}" for run, n in rows.items() if n != usual]
    if odd:
        raise UserError(
            f"the runs in '{run_dir}' scored different test sets ({'; '.join(odd)} test rows, "
            f"the others {usual:,}); they come from different recipes or data — retrain the "
            "recipe into a fresh run folder"
        )
    return out, missing


def compare(model: ModelRuns, ref: ModelRuns, alpha: float, test: str = "welch") -> dict:
    """`model`'s AUCs against the reference's: Welch's t, Mann-Whitney U and (over shared
    seeds) paired t; `test` (the recipe's eval.test) decides `significant`."""
    out: dict = {"reference": ref.key, "n": len(model.runs), "n_reference": len(ref.runs)}
    over_seeds = seed_tests(model, ref, "auc", alpha, test)
    if over_seeds:
        out |= over_seeds
    else:  # a single run each: DeLong's test on the shared test set
        pm, pr = model.predictions(model.seeds[0]), ref.predictions(ref.seeds[0])
        d = stats.delong(pm[LABEL].to_numpy(), pm["prob"].to_numpy(), pr["prob"].to_numpy())
        out["delong_z"], out["delong_p"] = d.z, d.p_value
        out["significant"] = bool(d.p_value < alpha)
    return out


# -- per column: RelaImpr against its base, each column against its best baseline ---------------

LOWER_IS_BETTER = ("logloss",)


def column_references(
    models: list[ModelRuns], candidates: list[ModelRuns], columns: list[str]
) -> list[list[ModelRuns | None]]:
    """For each model and each column (overall AUC, Logloss, each scenario's AUC): the best
    other candidate by mean over seeds in that column (the lowest for Logloss), the column's
    'best baseline' (None where no other candidate has a finite mean there)."""
    sign = np.array([-1.0 if c in LOWER_IS_BETTER else 1.0 for c in columns])
    means = np.stack([c.matrix(columns).mean(axis=0) for c in candidates]) * sign  # [C, K]
    means = np.where(np.isfinite(means), means, -np.inf)
    out = []
    for m in models:
        own = means.copy()
        own[[c.key == m.key for c in candidates]] = -np.inf  # never its own reference
        pick = own.argmax(axis=0)  # [K]
        found = np.isfinite(own.max(axis=0))
        out.append([candidates[i] if ok else None for i, ok in zip(pick, found, strict=True)])
    return out


def relaimpr_columns(
    model: ModelRuns,
    models: list[ModelRuns],
    refs: list[ModelRuns | None],
    base_key: str,
    form: str,
    schema: Schema,
) -> dict:
    """RelaImpr of the overall AUC and of each scenario's AUC, in `form`, against `base_key`
    (a model) or, for `best`, against each column's best baseline (`refs`, one per column,
    from `column_references`), with the model each one is taken against."""
    columns = ["auc", *(f"auc_s{k}" for k in range(schema.num_scenarios))]
    if base_key != BEST_BASELINE:
        refs = [next(m for m in models if m.key == base_key)] * len(columns)
    ours = model.matrix(columns).mean(axis=0)
    base = [
        float("nan") if r is None else float(r.values(c).mean())
        for r, c in zip(refs, columns, strict=True)
    ]
    values = [metrics.rela_impr(a, b, form) for a, b in zip(ours, base, strict=True)]
    vs = [None if r is None else r.key for r in refs]
    return {
        "relaimpr": values[0],
        "relaimpr_vs": vs[0],
        "scenario_relaimpr": values[1:],
        "scenario_relaimpr_vs": vs[1:],
    }


def column_compare(
    model: ModelRuns,
    refs: list[ModelRuns | None],
    columns: list[str],
    schema: Schema,
    alpha: float,
    test: str,
) -> list[dict | None]:
    """Each column (a scenario's AUC, the Logloss) against that column's best baseline
    (`refs`), as `compare` does for the overall AUC: Welch's t, Mann-Whitney U and paired t
    over seeds, `test` deciding `significant`; the tests run on all the columns that share a
    reference at once. With a single run each, a scenario's AUC gets DeLong's test on the
    scenario's test rows, and the Logloss no test (None)."""
    out: list[dict | None] = [None] * len(refs)
    for ref in {r.key: r for r in refs if r is not None}.values():
        cols = [k for k, r in enumerate(refs) if r is ref]
        a, b = model.matrix([columns[k] for k in cols]), ref.matrix([columns[k] for k in cols])
        tests: dict[str, np.ndarray] = {}
        if len(a) >= 2 and len(b) >= 2:
            tests["welch_p"] = stats.welch_t_columns(a, b)
            tests["mannwhitney_p"] = stats.mann_whitney_columns(a, b)
            shared = sorted(set(model.seeds) & set(ref.seeds))
            if len(shared) >= 2:
                ia = [model.seeds.index(s) for s in shared]
                ib = [ref.seeds.index(s) for s in shared]
                tests["paired_p"] = stats.paired_t_columns(a[ia], b[ib])
            deciding = tests[f"{test}_p"]
        else:
            scen = [int(columns[k].removeprefix("auc_s")) for k in cols if columns[k] != "logloss"]
            cols = [k for k in cols if columns[k] != "logloss"]
            if not cols:
                continue
            pm, pr = model.predictions(model.seeds[0]), ref.predictions(ref.seeds[0])
            d = stats.delong_groups(
                pm[LABEL].to_numpy(),
                pm["prob"].to_numpy(),
                pr["prob"].to_numpy(),
                pm[SCENARIO].to_numpy(),
                schema.num_scenarios,
            )
            tests = {"delong_z": d.z[scen], "delong_p": d.p_value[scen]}
            deciding = tests["delong_p"]
        significant = deciding < alpha  # nan: never
        for j, k in enumerate(cols):
            out[k] = {"reference": ref.key, "n": len(a), "n_reference": len(b)}
            out[k] |= {name: float(v[j]) for name, v in tests.items()}
            out[k]["significant"] = bool(significant[j])
    return out


def summarize(run_dir: str | Path, partial: bool = False, data: Path | None = None) -> dict:
    run_dir = Path(run_dir)
    recipe, schema = load_run(run_dir, data)
    if "mlflow" in recipe.train.log:  # refused before anything is written, as in train
        track.check_available(["mlflow"])
    models, missing = collect(run_dir, recipe, schema, partial, data)
    keys = [m.key for m in models]
    alpha = recipe.eval.significance
    base_key = recipe.eval.baseline or keys[0]
    if base_key != BEST_BASELINE:  # a missing base (a --partial run) falls back to the first
        base_key = next((m.key for m in models if m.key == base_key), keys[0])
    candidates = [m for m in models if m.key in recipe.eval.baselines] or models
    metric_names = list(models[0].runs[0].keys())
    scenario_cols = [f"auc_s{k}" for k in range(schema.num_scenarios)]
    best = column_references(models, candidates, ["auc", "logloss", *scenario_cols])
    rows = []
    for m, (ref, ll_ref, *scen_refs) in zip(models, best, strict=True):
        row: dict = {"model": m.key, "name": m.name, "seeds": m.seeds}
        for name in metric_names:
            mean, std = stats.mean_std(m.values(name))
            row[name] = {"mean": mean, "std": std, "runs": m.values(name).tolist()}
        row["test"] = compare(m, ref, alpha, recipe.eval.test) if ref is not None else None
        row |= relaimpr_columns(
            m, models, [ref, *scen_refs], base_key, recipe.eval.relaimpr, schema
        )
        tested = column_compare(
            m, [ll_ref, *scen_refs], ["logloss", *scenario_cols], schema, alpha, recipe.eval.test
        )
        row["logloss_test"], row["scenario_tests"] = tested[0], tested[1:]
        rows.append(row)
    result = {
        "run": str(run_dir),
        "recipe": recipe.name,
        "mirrors": recipe.mirrors,
        "data": recipe.data,
        "scenarios": schema.scenario_names,
        "test_rows": int(models[0].predictions(models[0].seeds[0]).height),
        "relaimpr_base": base_key,
        "relaimpr_form": recipe.eval.relaimpr,
        "baselines": [m.key for m in candidates],
        "alpha": alpha,
        "test": recipe.eval.test,
        "table_metrics": recipe.eval.metrics,
        "models": rows,
        "missing_runs": missing,
    }
    result["setup"] = paper.dataset_setup(schema)
    if recipe.tuning is not None:
        result["tuning"] = tuning_record(recipe)
    if recipe.paper is not None:
        result["paper"] = paper.compare(recipe.paper, schema, rows)
    if schema.has_true_prob:
        pred = models[0].predictions(models[0].seeds[0])
        bins = recipe.eval.calibration_bins
        result["bayes"] = run_metrics(pred, schema.num_scenarios, prob=TRUE_PROB, bins=bins)
    result["figures"] = model_figures(models, schema, run_dir)
    add_calibration(result, models, candidates, recipe, schema, run_dir)
    add_curves(result, models, run_dir)
    folder = RunFolder(run_dir)
    write_json(folder.results, result)
    write_text(folder.report, render_markdown(result) + calibration_markdown(result))
    if "mlflow" in recipe.train.log:  # the runs' test figures and the report, beside the curves
        figures = [folder.figure(f) for f in [*result["figures"], "calibration.png", "curves.png"]]
        files = [folder.recipe, folder.report, folder.results, *figures]
        track.log_results(run_dir, recipe.name, result, files)
    return result


def model_figures(models: list[ModelRuns], schema: Schema, run_dir: Path) -> list[str]:
    """The figures the models declare (HierRec's head weights), each from its first seed."""
    folder = RunFolder(run_dir)
    out = []
    for m in models:

        def to(stem: str, m: ModelRuns = m) -> Path:
            return folder.figure(f"{stem}_{m.folder.name}.png")

        run = m.run(m.seeds[0]).summary
        path = figures.model_figure(m.name, m.key, run, schema.scenario_names, to)
        if path is not None:
            out.append(path.name)
    return out


def section(title: str, *blocks: Table | str) -> list[str]:
    """A report.md section, as lines: `## title`, then each block (a table, a paragraph, a
    Markdown image; empty ones left out), each followed by a blank line. `msctr eval`,
    ablate and sweep write theirs through it."""
    lines = [f"## {title}", ""]
    for block in blocks:
        text = block.to_markdown() if isinstance(block, Table) else block
        if text:
            lines += [text, ""]
    return lines


def append_section(report: Path, lines: list[str]) -> None:
    """`lines` (a `section`) added to the end of an existing report.md, atomically."""
    write_text(report, report.read_text() + "\n" + "\n".join(lines))


# -- rendering -----------------------------------------------------------------------------------


def _fmt(v: float, digits: int = 4) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


@dataclass(frozen=True)
class CellStyle:
    """How the numbers read: report.md has room to spare, the terminal 100 columns."""

    sep: str  # between a mean and its "±std"
    p_digits: str  # format of a p-value
    p_header: str  # the header of the p-value column


REPORT = CellStyle(" ", ".3g", "p vs best other")  # "0.7405 ±.0012*", "0.000557"
TERMINAL = CellStyle("", ".1e", "p")  # "0.7405±.0012*", "5.6e-04"


def _cell(stat: dict, style: CellStyle = REPORT, digits: int = 4) -> str:
    if len(stat["runs"]) > 1:
        return f"{_fmt(stat['mean'], digits)}{style.sep}±{_fmt(stat['std'], digits).lstrip('0')}"
    return _fmt(stat["mean"], digits)


def _p(p: float | None, style: CellStyle = REPORT) -> str:
    return "-" if p is None or math.isnan(p) else f"{p:{style.p_digits}}"


def _scenario_columns(result: dict) -> int:
    """How many per-scenario AUC columns the table has (none unless the recipe asks)."""
    return len(result["scenarios"]) if "scenario_auc" in (result.get("table_metrics") or ()) else 0


def table_rows(result: dict, style: CellStyle = REPORT) -> tuple[list[str], list[list[str]]]:
    scen = result["scenarios"]
    first = result["models"][0]
    show = set(result.get("table_metrics") or ())
    per_scenario = range(_scenario_columns(result))
    groups = [
        (k, h) for k, h in (("gauc", "GAUC"), ("sgauc", "S-GAUC")) if k in first and k in show
    ]
    main = [(k, h) for k, h in (("auc", "AUC"), ("logloss", "Logloss")) if k in show]
    header = [*(f"AUC {scen[k]}" for k in per_scenario), *(h for _, h in main + groups)]
    header += ["RelaImpr"] * ("relaimpr" in show) + [style.p_header, "MWU p"]
    rows = []
    for r in result["models"]:
        star = "*" if r["test"] and r["test"].get("significant") else ""
        cells = [r["model"]]
        cells += [_cell(r[f"auc_s{k}"], style) + _scenario_star(r, k) for k in per_scenario]
        cells += [_cell(r[k], style) + _overall_star(r, k, star) for k, _ in main + groups]
        test = r["test"] or {}
        cells += [_pct(r["relaimpr"])] * ("relaimpr" in show)
        cells += [_p(test.get("welch_p", test.get("delong_p")), style)]
        cells += [_p(test.get("mannwhitney_p"), style)]
        rows.append(cells)
    if "bayes" in result:
        b = result["bayes"]
        cells = [BAYES] + [_fmt(b[f"auc_s{k}"]) for k in per_scenario]
        cells += [_fmt(b.get(k)) for k, _ in main + groups]
        rows.append(cells + [""] * (len(header) + 1 - len(cells)))
    return ["Model", *header], rows


def results_table(result: dict, style: CellStyle = REPORT) -> Table:
    """The papers' table of a run (models as rows), all in one: report.md's table."""
    header, rows = table_rows(result, style)
    title = f"{result['recipe']}: test split, {result['test_rows']:,} rows"
    if result.get("mirrors"):
        title += f" (mirrors {result['mirrors']})"
    styles = ["dim" if r[0] == BAYES else None for r in rows]
    return Table(header, rows, title=title, styles=styles)


def _pct(v: float) -> str:
    """A RelaImpr cell: '-' where there is no base to compare with (nan)."""
    return "-" if v is None or math.isnan(v) else f"{v:+.2f}%"


def _overall_star(row: dict, metric: str, auc_star: str) -> str:
    """The overall AUC's mark, and the Logloss's where it differs from the best baseline's."""
    if metric == "auc":
        return auc_star
    test = row.get("logloss_test") if metric == "logloss" else None
    return "*" if test and test.get("significant") else ""


def _scenario_star(row: dict, k: int) -> str:
    """'*' on scenario k's AUC where it differs from that scenario's best baseline."""
    tests = row.get("scenario_tests") or []
    return "*" if k < len(tests) and tests[k] and tests[k].get("significant") else ""


def scenario_relaimpr_table(result: dict) -> Table | None:
    """RelaImpr of each scenario's AUC (models as rows, scenarios as columns, as HierRec's
    RelaImpr row is per column); None where the table has no per-scenario or RelaImpr
    columns, or results.json predates per-scenario RelaImpr."""
    k = _scenario_columns(result)
    rows = result["models"]
    if not k or "relaimpr" not in (result.get("table_metrics") or ()):
        return None
    if any("scenario_relaimpr" not in r for r in rows):
        return None
    body = [[r["model"], *map(_pct, r["scenario_relaimpr"])] for r in rows]
    return Table(["Model", *result["scenarios"]], body, title="RelaImpr per scenario")


RELAIMPR_FORMS = {
    "auc_minus_half": "((AUC - 0.5) / (AUC_base - 0.5) - 1) x 100% (HierRec's Eq. 11)",
    "ratio": "(AUC / AUC_base - 1) x 100% (HMDN's Tables 1-2)",
}


def relaimpr_legend(result: dict) -> str:
    """What the RelaImpr columns hold: the form and the base."""
    form = RELAIMPR_FORMS[result.get("relaimpr_form", "auc_minus_half")]
    if result["relaimpr_base"] == BEST_BASELINE:
        pool = ", ".join(result.get("baselines") or []) or "every model"
        return (
            f"RelaImpr = {form}, against the best baseline of each column (the best mean "
            f"among {pool}; a baseline's own row against the best other)."
        )
    return f"RelaImpr = {form}, relative to {result['relaimpr_base']}."


def terminal_tables(result: dict) -> list[Table]:
    """The same table as the terminal shows it, in 100 columns: the overall metrics with the
    significance marks and p-values, then the per-scenario AUCs in a table of their own (models
    as rows in both, as in the papers; `print_tables` splits the latter by scenarios when they
    are many, so each scenario's column stays whole). The Mann-Whitney column is left out
    where no model has that test (single runs)."""
    full = results_table(result, TERMINAL)
    k = _scenario_columns(result)
    overall = list(range(1 + k, len(full.header)))
    if not any((r["test"] or {}).get("mannwhitney_p") is not None for r in result["models"]):
        overall = overall[:-1]
    tables = [full.select(overall, full.title)]
    if k:
        scen = result["scenarios"]
        tables.append(full.select(range(1, 1 + k), "AUC per scenario", header=scen))
    if (rela := scenario_relaimpr_table(result)) is not None:
        tables.append(rela)
    return tables


def render_table(result: dict, console: Console) -> None:
    tables = terminal_tables(result)
    print_tables(console, *tables)
    console.print(_terminal_legend(result, mwu="MWU p" in tables[0].header), markup=False)
    if (calibration := calibration_table(result, TERMINAL)) is not None:
        console.print()
        print_tables(console, calibration)
        console.print(calibration_legend(result), markup=False)
    if result.get("missing_runs"):
        console.print(f"[bold yellow]{escape(_partial(result))}[/]", highlight=False)
    if "paper" in result:
        if result["paper"]["shown"]:
            console.print()
            print_tables(console, *paper.tables(result["paper"]))
        console.print(paper.legend(result["paper"]), highlight=False, markup=False)
        for line in paper.protocol_lines(result["paper"]):
            console.print(line, highlight=False, markup=False)


TESTS = {"welch": "two-sided Welch t-test", "mannwhitney": "two-sided Mann-Whitney U test"}


def _legend(result: dict) -> str:
    n = {len(r["seeds"]) for r in result["models"]}
    over_seeds = f"{TESTS[result.get('test', 'welch')]} over seeds"
    test = over_seeds if max(n) > 1 else "DeLong's test, single run"
    marked = "AUC differs from the best other model"
    if any("logloss_test" in r for r in result["models"]):  # every column marked
        scen = ", each scenario's AUC" if _scenario_columns(result) else ""
        marked = f"the AUC, the Logloss{scen} differs from the best other model of its column"
    return (
        f"mean ± std over seeds; * = {marked} at p < {result['alpha']} ({test}); "
        f"{relaimpr_legend(result)}"
    )


def _terminal_legend(result: dict, mwu: bool) -> str:
    """The legend, and what the terminal's short p headers stand for."""
    single = max(len(r["seeds"]) for r in result["models"]) == 1
    test = "DeLong's test" if single else "the Welch t-test"  # the p column is Welch's
    text = _legend(result) + f" p: {test}'s p-value"
    text += "; MWU p: the Mann-Whitney U test's." if mwu else "."
    return text + " report.md has the full table and each row's reference model."


def _column_significance_lines(result: dict) -> list[str]:
    """report.md's per-column tests: the Logloss and each scenario's AUC against that
    column's best baseline."""
    lines = []
    for r in result["models"]:
        columns = [("Logloss", r.get("logloss_test"))]
        columns += zip(result["scenarios"], r.get("scenario_tests") or [], strict=False)
        for name, t in columns:
            if t:
                parts = [f"{k}={v:.4g}" for k, v in t.items() if k.endswith("_p")]
                lines.append(f"- {r['model']}, {name}: vs {t['reference']}: " + ", ".join(parts))
    return (
        ["", "Per column (Logloss; each scenario's AUC on its rows):", "", *lines] if lines else []
    )


def _partial(result: dict) -> str:
    return (
        f"PARTIAL: {len(result['missing_runs'])} run(s) of the recipe are missing and left out "
        f"({', '.join(result['missing_runs'])}); statistics use the seeds listed per model."
    )


def tuning_record(recipe: Recipe) -> dict:
    """The recipe's `tuning:` (what `msctr tune` did before it, tuned.yaml carries it) with
    the models of the table it did not tune: results.json's `tuning`."""
    record = asdict(recipe.tuning)
    record["untuned"] = [m.key for m in recipe.models if m.key not in recipe.tuning.models]
    return record


def tuning_lines(result: dict) -> list[str]:
    """report.md's Tuning section: the budget each model's hyperparameters got on validation,
    so a reader sees whether the comparison was fair (every model tuned alike) or not."""
    t = result.get("tuning")
    if t is None:
        return []
    caps = [f"at most {t['trial_epochs']} epoch(s)"] if t.get("trial_epochs") else []
    caps += [f"on the first {t['trial_rows']:,} train rows"] if t.get("trial_rows") else []
    budget = f"{t['trials']} trial(s) per model" if t.get("trials") else "the sampler's default"
    if t.get("timeout"):
        budget += f", {t['timeout']:g}s at most per model"
    lines = section(
        "Tuning",
        f"Hyperparameters chosen by `msctr tune` on the validation split only ({t['sampler']} "
        f"sampler, pruner {t['pruner']}, ranked by validation {t['metric']}; budget: {budget}"
        + (f"; each trial {' '.join(caps)}" if caps else "")
        + f"). The search: `{t['results']}`.",
    )
    rows = []
    for label, m in t["models"].items():
        ended = m.get("complete", 0) + m.get("pruned", 0) + m.get("failed", 0)
        best = "" if m.get("best_value") is None else f"{m['best_value']:.4f}"
        rows.append([label, ", ".join(m.get("keys", [])), str(ended), str(m.get("complete", 0)),
                     str(m.get("pruned", 0)), str(m.get("failed", 0)), best])  # fmt: skip
    table = Table(
        ["model", "searched", "trials", "complete", "pruned", "failed", f"best val {t['metric']}"],
        rows,
    )
    lines += [table.to_markdown(), ""]
    if t["untuned"]:
        lines += [
            f"**Not tuned** (trained with the params as written): {', '.join(t['untuned'])}. "
            "A comparison is fair only when every model had the same budget.",
            "",
        ]
    return lines


def render_markdown(result: dict) -> str:
    lines = [f"# {result['recipe']}", ""]
    if result.get("mirrors"):
        lines += [f"Mirrors: {result['mirrors']}", ""]
    lines += [f"Data: `{result['data']}`, test rows: {result['test_rows']:,}", ""]
    if "setup" in result:
        lines += [f"Setup: {paper.setup_text(result['setup'])}", ""]
    lines += [results_table(result).to_markdown()]
    if (rela := scenario_relaimpr_table(result)) is not None:
        lines += ["", f"{rela.title}:", "", rela.to_markdown()]
    lines += ["", _legend(result), ""]
    if result.get("missing_runs"):
        lines += [f"**{_partial(result)}**", ""]
    for fig in result.get("figures", []):
        lines += [f"![{fig}]({fig})", ""]
    if "paper" in result:
        lines += section("Paper vs measured")
        if result["paper"]["shown"]:
            for table in paper.tables(result["paper"]):
                lines += [f"{table.title}:", "", table.to_markdown(), ""]
        lines += [paper.legend(result["paper"]), ""]
        lines += [f"- {line}" for line in paper.protocol_lines(result["paper"])]
        lines += [""] if paper.protocol_lines(result["paper"]) else []
    lines += tuning_lines(result)
    lines += section("Significance")
    for r in result["models"]:
        t = r["test"]
        if t:
            parts = [f"{k}={v:.4g}" for k, v in t.items() if k.endswith("_p") or k == "delong_z"]
            lines.append(f"- {r['model']} vs {t['reference']}: " + ", ".join(parts))
    lines += _column_significance_lines(result)
    skipped = [
        f"{r['model']}: GAUC skipped {r['gauc_skipped']['mean']:.0f} users"
        for r in result["models"]
        if "gauc_skipped" in r
    ]
    if skipped:
        lines += [
            "",
            "Groups without both labels are left out of GAUC/S-GAUC: " + "; ".join(skipped),
        ]
    return "\n".join(lines) + "\n"


# -- calibration and learning curves (docs/metrics.md, "Calibration") --------------------------

# the calibration figures and their column names; the ratio's test compares |ratio - 1|
CALIBRATION = {"calibration": "Calib.", "ece": "ECE", "ne": "NE"}
TESTS_RUN = ("welch", "mannwhitney", "paired")  # seed_tests' p-values, in report.md's order


def seed_tests(model: ModelRuns, ref: ModelRuns, metric: str, alpha: float, test: str) -> dict:
    """`model`'s per-seed values of `metric` against `ref`'s: Welch's t, Mann-Whitney U and
    paired t over shared seeds; `test` decides `significant`. Empty for single runs (for AUC
    `compare` then runs DeLong's test, which is AUC's alone). The calibration
    ratio is tested by its distance from 1, so 0.9 and 1.1 are equally good."""
    a, b = model.values(metric), ref.values(metric)
    if metric == "calibration":
        a, b = np.abs(a - 1.0), np.abs(b - 1.0)
    if len(a) < 2 or len(b) < 2:
        return {}
    out = {"welch_p": stats.welch_t(a, b), "mannwhitney_p": stats.mann_whitney(a, b)}
    shared = sorted(set(model.seeds) & set(ref.seeds))
    if len(shared) >= 2:
        ia = [model.seeds.index(s) for s in shared]
        ib = [ref.seeds.index(s) for s in shared]
        out["paired_p"] = stats.paired_t(a[ia], b[ib])
    out["significant"] = bool(out[f"{test}_p"] < alpha)
    return out


def _points(r: metrics.Reliability) -> dict:
    return {k: [None if math.isnan(v) else v for v in getattr(r, k).tolist()]
            for k in ("predicted", "observed")} | {"rows": r.rows.tolist()}  # fmt: skip


def add_calibration(
    result: dict,
    models: list[ModelRuns],
    candidates: list[ModelRuns],
    recipe: Recipe,
    schema: Schema,
    run_dir: Path,
) -> None:
    """Each row's calibration tests against its reference (the best other model by AUC), and
    result["calibration"]: the bins and each model's reliability points (first seed; the
    Bayes ceiling's too where the truth is known), drawn to calibration.png."""
    alpha, test = recipe.eval.significance, recipe.eval.test
    refs = column_references(models, candidates, ["auc"])  # the AUC column's best baseline
    for row, m, (ref,) in zip(result["models"], models, refs, strict=True):
        row["calibration_test"] = (
            None
            if ref is None
            else {"reference": ref.key}
            | {k: seed_tests(m, ref, k, alpha, test) for k in CALIBRATION}
        )
    bins = recipe.eval.calibration_bins
    curves = {}
    for m in models:
        pred = m.predictions(m.seeds[0])
        y = pred[LABEL].to_numpy()
        curves[m.key] = _points(metrics.reliability(y, pred["prob"].to_numpy(), bins))
        if schema.has_true_prob and BAYES not in curves:
            curves[BAYES] = _points(metrics.reliability(y, pred[TRUE_PROB].to_numpy(), bins))
    result["calibration"] = {"bins": bins, "reliability": curves}
    path = figures.reliability(curves, bins, RunFolder(run_dir).figure("calibration.png"))
    result["calibration"]["figure"] = path.name


def read_history(run: SeedRun) -> list[dict]:
    """A run's per-epoch lines: history.jsonl, or log.jsonl for a run trained before it."""
    path = run.history if run.history.is_file() else run.log
    if not path.is_file():
        return []
    with reading(path, "retrain this model and seed"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def add_curves(result: dict, models: list[ModelRuns], run_dir: Path) -> None:
    """curves.png: validation AUC and training loss per epoch of every model and seed, the
    best epoch (the one whose weights were kept) marked; nothing when no run has a history."""
    runs = []
    for m in models:
        for seed in m.seeds:
            lines = read_history(m.run(seed))
            if lines:
                best = [r["epoch"] for r in lines if r.get("best")]
                runs.append((m.key, seed, lines, best[-1] if best else None))
    if not runs:
        return
    path = figures.learning_curves(runs, RunFolder(run_dir).figure("curves.png"))
    result["curves"] = path.name


def _calibration_cell(row: dict, key: str, style: CellStyle) -> str:
    stars = (row.get("calibration_test") or {}).get(key, {}).get("significant")
    return _cell(row[key], style) + ("*" if stars else "")


def calibration_table(result: dict, style: CellStyle) -> Table | None:
    """The calibration figures of the recipe's eval.metrics (all of them with `style`
    REPORT), models as rows, the Bayes ceiling last; None when none is asked for."""
    shown = set(result.get("table_metrics") or ()) if style is TERMINAL else set(CALIBRATION)
    keys = [k for k in CALIBRATION if k in shown and k in result["models"][0]]
    if not keys:
        return None
    header = ["Model", *(CALIBRATION[k] for k in keys)]
    rows = [[r["model"], *(_calibration_cell(r, k, style) for k in keys)] for r in result["models"]]
    if "bayes" in result:
        rows.append([BAYES, *(_fmt(result["bayes"].get(k)) for k in keys)])
    title = "Calibration"
    styles = ["dim" if r[0] == BAYES else None for r in rows]
    return Table(header, rows, title=title, styles=styles)


def calibration_legend(result: dict) -> str:
    bins = result["calibration"]["bins"]
    test = TESTS[result.get("test", "welch")]
    return (
        "Calib. = predicted / observed clicks (1 is right); ECE = expected calibration error "
        f"over {bins} equal-mass bins of the scores; NE = logloss / entropy of the test rows' "
        "click rate (below 1 beats predicting that rate). * = differs from the same reference "
        f"as AUC at p < {result['alpha']} ({test} over seeds; the ratio by |ratio − 1|; "
        "single runs are not tested)."
    )


def calibration_markdown(result: dict) -> str:
    """report.md's calibration section: every figure with its p-values, per scenario, the
    reliability diagram; then the learning curves."""
    if "calibration" not in result:
        return ""
    table = calibration_table(result, REPORT)
    scen = result["scenarios"]
    lines = section("Calibration", table, calibration_legend(result))
    tests = [
        [r["model"], t["reference"], CALIBRATION[k], *(_p(t[k].get(f"{n}_p")) for n in TESTS_RUN)]
        for r in result["models"]
        if (t := r.get("calibration_test"))
        for k in CALIBRATION
        if t[k]
    ]
    if tests:
        header = ["Model", "vs", "figure", "Welch p", "Mann-Whitney p", "paired t p"]
        lines += [Table(header, tests).to_markdown(), ""]
    for key, what in (("calibration", "Calibration ratio"), ("ece", "ECE"), ("ne", "NE")):
        header = ["Model", *scen]
        rows = [[r["model"], *(_cell(r[f"{key}_s{k}"]) for k in range(len(scen)))]
                for r in result["models"]]  # fmt: skip
        if "bayes" in result:
            rows.append([BAYES, *(_fmt(result["bayes"][f"{key}_s{k}"]) for k in range(len(scen)))])
        lines += [f"{what} per scenario:", "", Table(header, rows).to_markdown(), ""]
    fig = result["calibration"]["figure"]
    lines += [f"![{fig}]({fig})", ""]
    if "curves" in result:
        lines += section("Learning curves", f"![{result['curves']}]({result['curves']})")
    return "\n".join(lines)

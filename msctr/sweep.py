"""`msctr sweep`: one hyperparameter of one model varied over a list of values, each value
trained over the recipe's seeds and compared with the best value (the papers' sensitivity
figures: HierRec's heads G, SFPNet's blocks L, HMDN's quantizer depth D).

    runs/<recipe>-sweep-<model>-<param>/             results.json, report.md, sweep.png
    runs/<recipe>-sweep-<model>-<param>/<value>/     an ordinary run folder per value
                                                     (recipe.yaml, results.json, <model>/seed_k)

Every value's recipe is built and checked, and its model built on the dataset's schema,
before the first value trains: a bad key or a value the model refuses is one line and
nothing is written.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from msctr.config import parse_value
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.evaluate import figures
from msctr.evaluate.report import BAYES, ModelRuns, compare, section, summarize
from msctr.io import write_json, write_text
from msctr.models.registry import TRAIN_COPIES, check_memory, check_model
from msctr.recipe import Recipe, recipe_from_dict, resolve_key, set_key
from msctr.runs import RunFolder, check_sweep_folder
from msctr.tables import Table, print_tables
from msctr.train.loop import train_recipe
from msctr.train.runtime import resolve_device

# keys whose variation makes no sweep: they name the run, not a setting of it
_NOT_SWEPT = {"name", "out", "mirrors", "paper", "prepare", "description", "models", "train.seeds"}


@dataclass
class Point:
    """One value of the sweep and the run folder it trains into."""

    text: str  # the value as the user wrote it (the table's and the figure's label)
    value: Any  # the value as YAML reads it (numbers as numbers)
    recipe: Recipe  # the recipe with the value set: one model, run folder `folder`

    @property
    def folder(self) -> Path:
        return self.recipe.run_dir


@dataclass
class Plan:
    key: str  # the key as given
    path: str  # the key inside the one-model recipe (models.0.... or train....)
    label: str  # the swept model's label
    name: str  # the swept model's registered name
    folder: Path  # the sweep's folder
    recipe_name: str
    points: list[Point]


# -- the command line's --vary KEY=V1,V2,... -----------------------------------------------------


def split_values(text: str) -> list[str]:
    """'1,2,4' -> ['1', '2', '4']; commas inside brackets stay: '[64],[64,32]' is two values."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def parse_vary(vary: str) -> tuple[str, list[str]]:
    if "=" not in vary:
        raise UserError(
            f"--vary expects KEY=V1,V2,... (e.g. models.0.params.heads=1,2,4,8), got {vary!r}"
        )
    key, values = (s.strip() for s in vary.split("=", 1))
    texts = [t for t in split_values(values) if t]
    if not key:
        raise UserError(f"--vary {vary!r} names no key; e.g. models.0.params.heads=1,2,4,8")
    if len(texts) < 2:
        raise UserError(f"--vary {key}: give at least two values, comma-separated (got {values!r})")
    seen = [parse_value(t, f"--vary {key}") for t in texts]
    twice = sorted({t for t, v in zip(texts, seen) if seen.count(v) > 1})
    if twice:
        raise UserError(f"--vary {key}: values {twice} are given more than once")
    return key, texts


# -- which model, which key --------------------------------------------------------------------


def locate(recipe: Recipe, key: str, model: str | None) -> tuple[int, str]:
    """The index of the swept model and the key's path inside a one-model recipe.

    `models.<index or label>.rest` names the model itself; any other key (train.lr) needs
    --model when the recipe lists several models."""
    parts = key.split(".")
    if key in _NOT_SWEPT or parts[0] in {"name", "out", "paper"}:
        raise UserError(f"--vary {key}: this key names the run, it is no setting to sweep")
    if parts[0] in {"data", "eval"}:
        raise UserError(
            f"--vary {key}: a sweep compares training settings on one test set and one "
            "evaluation; vary a model's params or a train key"
        )
    picked = recipe.model_index(model, "--model") if model is not None else None
    if parts[0] == "models":
        if len(parts) < 3:
            raise UserError(
                f"--vary {key}: name a model's key, e.g. models.0.params.heads or "
                "models.HierRec.params.heads"
            )
        path = resolve_key(recipe.to_dict(), key, f"--vary {key}").split(".")
        if path[2:] == ["label"]:
            raise UserError(
                f"--vary {key}: a label names the model's folder and table row, it is no "
                "setting to sweep (each value already gets a run folder of its own)"
            )
        i = int(path[1])
        if picked is not None and picked != i:
            raise UserError(
                f"--vary {key} names {recipe.models[i].key}, but --model is "
                f"{recipe.models[picked].key}; give one of them"
            )
        return i, ".".join(["models", "0", *path[2:]])
    if picked is None:
        if len(recipe.models) > 1:
            raise UserError(
                f"the recipe has {len(recipe.models)} models "
                f"({', '.join(m.key for m in recipe.models)}); name the one to sweep with "
                "--model LABEL, or vary models.<index>.<key>"
            )
        picked = 0
    return picked, key


def param_name(path: str) -> str:
    """The key as the figure's axis names it: 'heads' for models.0.params.heads, else the
    path (train.lr)."""
    return path.split(".", 3)[-1] if path.startswith("models.0.params.") else path


def _folder_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "_"


def sweep_folder(recipe: Recipe, label: str, key: str) -> tuple[str, Path]:
    """runs/<recipe>-sweep-<model>-<param> (or <out>-sweep-...): beside the recipe's own
    run folder, never it."""
    suffix = f"sweep-{_folder_name(label)}-{_folder_name(param_name(key))}"
    name = f"{recipe.name}-{suffix}"
    folder = recipe.run_dir.parent / name if recipe.out is None else Path(f"{recipe.out}-{suffix}")
    return name, folder


def plan(recipe: Recipe, vary: str, model: str | None = None) -> Plan:
    """Every value's recipe, checked, and the sweep's folder; trains nothing, writes nothing."""
    key, texts = parse_vary(vary)
    index, path = locate(recipe, key, model)
    entry = recipe.models[index]
    base = recipe.to_dict()
    base["models"] = [base["models"][index]]
    # the other models are gone: their baselines and the paper's rows go with them
    base["eval"]["baseline"], base["eval"]["baselines"], base["paper"] = None, [], None
    name, folder = sweep_folder(recipe, entry.key, path)
    folders = [_folder_name(t) for t in texts]
    clash = sorted({f for f in folders if folders.count(f) > 1})
    if clash:
        raise UserError(f"--vary {key}: values {texts} give the same folder name(s) {clash}")
    points = []
    for text, sub in zip(texts, folders):
        raw = copy.deepcopy(base)
        value = parse_value(text, f"--vary {key}")
        set_key(raw, path, value, f"--vary {key}")
        raw["name"], raw["out"] = f"{name}-{sub}", str(folder / sub)
        try:
            r = recipe_from_dict(raw, where=recipe.name)
        except UserError as e:  # named as in the user's recipe, not the one-model copy
            message = str(e).replace("models.0.", f"models.{index}.")
            raise UserError(f"--vary {key}={text}: {message}") from None
        points.append(Point(text, value, r))

    return Plan(key, path, entry.key, entry.name, folder, recipe.name, points)


def check_builds(p: Plan) -> None:
    """Check each value's model against the dataset's schema and the memory free (its shape
    on the meta device, nothing allocated): a value the model refuses only there (names
    against the data's fields, sizes) fails before any training, not after hours."""
    schemas: dict[str, Schema] = {}
    for pt in p.points:
        r = pt.recipe
        resolve_device(r.train.device)
        schema = schemas.get(r.data) or schemas.setdefault(r.data, Schema.load(r.data))
        m = r.models[0]
        try:
            check_model(m.name, schema, m.model_params)
            check_memory(m.name, schema, m.model_params, TRAIN_COPIES, r.train.device)
        except UserError as e:
            raise UserError(f"--vary {p.key}={pt.text}: {e}") from None


# -- statistics -----------------------------------------------------------------------------------


def _model_runs(point: Point, row: dict) -> ModelRuns:
    """A value's per-seed metrics (from summarize's row) as the ModelRuns `compare` reads."""
    metrics = [k for k, v in row.items() if isinstance(v, dict) and "runs" in v]
    runs = [{k: row[k]["runs"][i] for k in metrics} for i in range(len(row["seeds"]))]
    folder = RunFolder(point.folder).model(point.recipe.models[0].key)
    return ModelRuns(point.text, row["name"], list(row["seeds"]), runs, folder)


def against_best(runs: list[ModelRuns], alpha: float, test: str = "welch") -> tuple[int, list]:
    """The best value by mean test AUC, and every other value's test against it (Welch over
    seeds, DeLong's test on the shared test set when there is one seed): `compare`, as in
    `msctr eval` and `msctr ablate`."""
    best = int(np.nanargmax([np.nanmean(m.values("auc")) for m in runs]))
    tests = [None if i == best else compare(m, runs[best], alpha, test) for i, m in enumerate(runs)]
    return best, tests


def axis_kind(values: list[Any]) -> str:
    """How the figure spaces the values: 'log' for a geometric series of positive numbers
    (1,2,4,8; 1e-4,1e-3,1e-2), 'linear' for an arithmetic one (1,2,3,4), else 'categorical'
    (evenly spaced, in the order given)."""
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(nums) != len(values) or len(nums) < 2 or not all(math.isfinite(v) for v in nums):
        return "categorical"
    x = np.sort(np.asarray(nums, dtype=np.float64))
    steps = np.diff(x)
    if np.allclose(steps, steps[0], rtol=1e-6) and len(x) > 2:
        return "linear"
    if x[0] > 0:
        ratios = x[1:] / x[:-1]
        if np.allclose(ratios, ratios[0], rtol=0.02):
            return "log"
    return "linear" if len(x) == 2 else "categorical"


# -- rendering ------------------------------------------------------------------------------------


def _cell(stat: dict) -> str:
    s = f"{stat['mean']:.4f}"
    return s + (f" ±{stat['std']:.4f}" if len(stat["runs"]) > 1 else "")


def sweep_table(result: dict) -> Table:
    scen = result["scenarios"]
    header = [
        result["param"],
        *(f"AUC {s}" for s in scen),
        "AUC",
        "Δ AUC vs best",
        "Logloss",
        "p (vs best)",
        "MWU p",
    ]
    best = result["points"][result["best"]]
    rows, styles = [], []
    for i, pt in enumerate(result["points"]):
        t = pt["test"] or {}
        p = t.get("welch_p", t.get("delong_p"))
        mark = "*" if t.get("significant") else ""
        rows.append(
            [
                pt["text"] + (" (best)" if i == result["best"] else ""),
                *(f"{pt[f'auc_s{k}']['mean']:.4f}" for k in range(len(scen))),
                _cell(pt["auc"]),
                ""
                if i == result["best"]
                else f"{pt['auc']['mean'] - best['auc']['mean']:+.4f}{mark}",
                _cell(pt["logloss"]),
                "" if p is None or math.isnan(p) else f"{p:.3g}",
                "" if t.get("mannwhitney_p") is None else f"{t['mannwhitney_p']:.3g}",
            ]
        )
        styles.append("bold" if i == result["best"] else None)
    if "bayes" in result:  # planted-signal data: the true probabilities' metrics, as in eval
        b = result["bayes"]
        rows.append(
            [BAYES, *(f"{b[f'auc_s{k}']:.4f}" for k in range(len(scen)))]
            + [f"{b['auc']:.4f}", "", f"{b['logloss']:.4f}"]
        )
        styles.append("dim")
    title = (
        f"Sensitivity of {result['model']} to {result['key']} "
        f"({result['recipe']}, {result['test_rows']:,} test rows)"
    )
    return Table(header, rows, title=title, styles=styles)


def legend(result: dict) -> str:
    n = max(len(pt["seeds"]) for pt in result["points"])
    test = f"two-sided Welch t-test over {n} seeds" if n > 1 else "DeLong's test, single run"
    return (
        f"mean ± std over seeds; best = highest mean test AUC; * = AUC differs from the best "
        f"value's at p < {result['alpha']} ({test})."
    )


def render_markdown(result: dict, table: Table) -> str:
    lines = [
        f"# {result['recipe']}: sensitivity of {result['model']} to {result['key']}",
        "",
        f"Data: `{result['data']}`, test rows: {result['test_rows']:,}; "
        f"model {result['model']} ({result['model_name']}), seeds {result['seeds']}.",
        "",
        *section(
            "Sensitivity",
            table,
            legend(result),
            f"![test AUC against {result['param']}](sweep.png)",
        ),
        "Each value's own run (per-seed metrics, checkpoints, its report):",
        "",
    ]
    lines += [f"- {pt['text']}: [{pt['folder']}/report.md]({pt['folder']}/report.md)"
              for pt in result["points"]]  # fmt: skip
    return "\n".join(lines) + "\n"


# -- the command ----------------------------------------------------------------------------------


def run_sweep(
    recipe: Recipe,
    vary: str,
    model: str | None,
    console: Console,
    fresh: bool = False,
) -> dict:
    """Each value's runs (resumed as `train` resumes them; `fresh`: started over), then the
    sweep's table, figure and report."""
    p = plan(recipe, vary, model)
    check_builds(p)
    # every value's run folder, before the first value trains
    check_sweep_folder(p.folder, [pt.folder for pt in p.points], inputs=(recipe.data,))
    for pt in p.points:
        console.print(f"[bold]{escape(p.key)} = {escape(pt.text)}[/]")
        train_recipe(pt.recipe, console, fresh=fresh)
    summaries = [summarize(pt.folder) for pt in p.points]  # each value's own report too
    rows, first = [s["models"][0] for s in summaries], summaries[0]
    alpha, test = recipe.eval.significance, recipe.eval.test
    runs = [_model_runs(pt, row) for pt, row in zip(p.points, rows)]
    best, tests = against_best(runs, alpha, test)
    points = []
    for pt, row, t in zip(p.points, rows, tests):
        entry = {"text": pt.text, "value": pt.value, "folder": pt.folder.name}
        entry |= {k: v for k, v in row.items() if k not in ("model", "relaimpr", "test")}
        entry["test"] = t
        points.append(entry)
    result = {
        "run": str(p.folder),
        "recipe": p.recipe_name,
        "model": p.label,
        "model_name": p.name,
        "key": p.key,
        "param": param_name(p.path),
        "values": [pt.value for pt in p.points],
        "axis": axis_kind([pt.value for pt in p.points]),
        "data": first["data"],
        "scenarios": first["scenarios"],
        "test_rows": first["test_rows"],
        "seeds": list(recipe.train.seeds),
        "alpha": alpha,
        "test": test,
        "best": best,
        "best_value": p.points[best].text,
        "points": points,
    }
    if "bayes" in first:
        result["bayes"] = first["bayes"]
    folder = RunFolder(p.folder)
    write_json(folder.results, result)
    table = sweep_table(result)
    print_tables(console, table)
    console.print(legend(result), markup=False)
    figure = folder.figure("sweep.png")
    plotted = figures.sensitivity(result, figure)
    write_text(folder.report, render_markdown(result, table))
    wrote = f"wrote {folder.results}, {folder.report}" + (f" and {figure}" if plotted else "")
    console.print(Text(wrote + ("" if plotted else "; no figure: no value's AUC is a number")))
    return result

"""The one table renderer: the rich table and the Markdown table come from the same rows."""

import io
import re

import numpy as np
from rich.console import Console

from msctr.tables import Table, print_tables


def _text(renderable, width: int = 120) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def _markdown_cells(text: str) -> list[list[str]]:
    lines = text.splitlines()
    assert lines[1] == "|" + "---|" * (len(lines[0].split(" | ")))
    return [line[2:-2].split(" | ") for line in [lines[0], *lines[2:]]]


TABLE = Table(
    ["Model", "AUC", "Logloss"],
    [["DNN", "0.7012", "0.4511"], ["STAR", "0.7105*", "0.4480"], ["Bayes", "0.8000"]],
    title="toy: test split",
    styles=[None, None, "dim"],
)


def test_rich_and_markdown_have_the_same_header_and_cells():
    rich = TABLE.to_rich()
    # cells are rich Text (printed literally, never read as markup): compare their text
    assert [str(c.header) for c in rich.columns] == list(TABLE.header)
    by_column = [[str(x) for x in c.cells] for c in rich.columns]
    rich_rows = [list(r) for r in zip(*by_column)]
    md = _markdown_cells(TABLE.to_markdown())
    assert md[0] == list(TABLE.header)
    assert md[1:] == rich_rows == TABLE.cells()
    assert rich_rows[2] == ["Bayes", "0.8000", ""]  # a short row is padded, in both


def test_markdown_text():
    assert TABLE.to_markdown() == (
        "| Model | AUC | Logloss |\n"
        "|---|---|---|\n"
        "| DNN | 0.7012 | 0.4511 |\n"
        "| STAR | 0.7105* | 0.4480 |\n"
        "| Bayes | 0.8000 |  |"
    )


def test_rich_title_alignment_and_row_styles():
    rich = TABLE.to_rich()
    assert str(rich.title) == "toy: test split" and rich.header_style == "bold"
    assert [c.justify for c in rich.columns] == ["left", "right", "right"]
    assert [r.style for r in rich.rows] == [None, None, "dim"]
    text = _text(rich)
    assert "toy: test split" in text and "│ STAR  │ 0.7105* │  0.4480 │" in text
    two = Table(["Model", "variant", "batch"], [["DNN", "eager", "1"]], left=2).to_rich()
    assert [c.justify for c in two.columns] == ["left", "left", "right"]


def test_report_and_ablation_render_one_table_each_way():
    from msctr.ablate import ablation_table
    from msctr.evaluate.report import render_markdown, render_table, results_table

    stat = {"mean": 0.7, "std": 0.01, "runs": [0.69, 0.71]}
    row = {"auc": stat, "logloss": stat, "auc_s0": stat, "relaimpr": 0.0, "seeds": [0, 1]}
    test = {"welch_p": 0.03, "mannwhitney_p": 0.3, "significant": True, "reference": "B"}
    result = {
        "recipe": "toy",
        "data": "d",
        "scenarios": ["s0"],
        "test_rows": 1000,
        "alpha": 0.05,
        "relaimpr_base": "A",
        "table_metrics": ["scenario_auc", "auc", "logloss", "relaimpr"],
        "models": [{"model": "A", **row, "test": test}, {"model": "B", **row, "test": None}],
    }
    table = results_table(result)
    assert table.to_markdown() in render_markdown(result)
    assert table.rows[0][:3] == ["A", "0.7000 ±.0100", "0.7000 ±.0100*"]
    # the terminal: the overall table, then the per-scenario AUCs, p in scientific notation
    terminal = _text_of(render_table, result)
    overall = ["A", "0.7000±.0100*", "0.7000±.0100", "+0.00%", "3.0e-02", "3.0e-01"]
    assert _cells(terminal, "A") == overall
    assert _cells(terminal, "A", 1) == ["A", "0.7000±.0100"]
    abl = ablation_table(result, "A")
    assert abl.title == "Ablation of A (1,000 test rows)"
    assert abl.header[0] == "Variant" and _markdown_cells(abl.to_markdown())[1][0] == "A"


def _text_of(render, result) -> str:
    console = Console(width=120, record=True, file=io.StringIO(), color_system=None)
    render(result, console)
    return console.export_text()


def _cells(text: str, label: str, nth: int = 0) -> list[str]:
    """The cells of the `nth` line whose first cell is `label` (cells are 2+ spaces apart)."""
    lines = [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]
    return [cells for cells in lines if cells[0] == label][nth]


# -- a paper-sized table in 100 columns ----------------------------------------------------------

LABELS = [
    "DNN",
    "SharedBottom",
    "MMoE",
    "PLE",
    "STAR",
    "AdaSparse",
    "PEPNet",
    "HMDN(PEPNet)",
    "DeepFM",
    "HierRec",
    "SFPNet",
]
SCENARIOS = ["featured", "follow", "discover", "nearby", "live", "featured_1", "follow_1"]
P_VALUES = [0.11, 3.1e-07, 0.0669, 0.000557, 6.6e-3, 5.13e-05, 0.0436, 0.0197, 1.0, 0.0269, 0.239]


def _stat(rng, mean: float, spread: float, seeds: int = 3) -> dict:
    runs = rng.normal(mean, spread, seeds)
    return {"mean": float(runs.mean()), "std": float(runs.std(ddof=1)), "runs": runs.tolist()}


def paper_result(labels=LABELS, scenarios=SCENARIOS) -> dict:
    """What `summarize` returns for 11 models x 7 scenarios over 3 seeds, with values as wide
    as they come (std up to .1xxx, RelaImpr past -100 %, p from 3.1e-07 to 1)."""
    rng = np.random.default_rng(0)
    models = []
    for i, label in enumerate(labels):
        row = {"model": label, "name": label.lower(), "seeds": [0, 1, 2]}
        row["auc"] = _stat(rng, 0.62 + 0.01 * i, 0.01)
        row["logloss"] = _stat(rng, 0.55, 0.02)
        row["gauc"], row["sgauc"] = _stat(rng, 0.6, 0.02), _stat(rng, 0.6, 0.03)
        for k in range(len(scenarios)):
            row[f"auc_s{k}"] = _stat(rng, 0.6, 0.1 if k == 6 else 0.03)
        row["relaimpr"] = -151.52 if i == 3 else 4.4 * i
        p = P_VALUES[i % len(P_VALUES)]
        row["test"] = {
            "reference": "SFPNet" if label != "SFPNet" else "HierRec",
            "n": 3,
            "n_reference": 3,
            "welch_p": p,
            "mannwhitney_p": 0.1 if i % 2 else 0.2,
            "paired_p": p / 2,
            "significant": p < 0.05,
        }
        models.append(row)
    bayes = {"auc": 0.8481, "logloss": 0.3876, "gauc": 0.8249, "sgauc": 0.8281}
    bayes |= {f"auc_s{k}": 0.8 + 0.01 * k for k in range(len(scenarios))}
    metrics = ["scenario_auc", "auc", "logloss", "gauc", "sgauc", "relaimpr"]
    return {
        "run": "runs/paper",
        "recipe": "paper",
        "mirrors": "SFPNet Table 3, on planted-signal synthetic data",
        "data": "data/synthetic",
        "scenarios": scenarios,
        "test_rows": 123456,
        "relaimpr_base": labels[0],
        "alpha": 0.05,
        "table_metrics": metrics,
        "models": models,
        "missing_runs": [],
        "bayes": bayes,
        "figures": [],
    }


def _mean_std(stat: dict, sep: str = "") -> str:
    return f"{stat['mean']:.4f}{sep}±{stat['std']:.4f}".replace("±0.", "±.")


def assert_fits(text: str, width: int = 100) -> None:
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width


def test_paper_table_fits_100_columns_with_every_label_star_and_p_value():
    from msctr.evaluate.report import render_table

    result = paper_result()
    console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
    render_table(result, console)
    text = console.export_text()
    assert_fits(text)
    for r in result["models"]:
        t, star = r["test"], "*" if r["test"]["significant"] else ""
        overall = [r["model"], _mean_std(r["auc"]) + star]
        overall += [_mean_std(r[k]) for k in ("logloss", "gauc", "sgauc")]
        overall += [f"{r['relaimpr']:+.2f}%", f"{t['welch_p']:.1e}", f"{t['mannwhitney_p']:.1e}"]
        assert _cells(text, r["model"]) == overall  # each cell whole, on the model's line
        # the per-scenario AUCs, split in two tables (4 + 3 scenarios), each cell whole
        scen = _cells(text, r["model"], 1)[1:] + _cells(text, r["model"], 2)[1:]
        assert scen == [_mean_std(r[f"auc_s{k}"]) for k in range(len(SCENARIOS))]
    assert "3.1e-07" in _cells(text, "SharedBottom") and "-151.52%" in _cells(text, "PLE")
    assert _cells(text, "Bayes ceiling") == [
        "Bayes ceiling",
        "0.8481",
        "0.3876",
        "0.8249",
        "0.8281",
    ]
    assert "AUC per scenario (1/2)" in text and "AUC per scenario (2/2)" in text
    for name in SCENARIOS:
        assert re.search(rf"(^|\s){name}(\s|$)", text, re.M), name
    legend = " ".join(text.split())  # the legend wraps at spaces
    assert "* = AUC differs from the best other model at p < 0.05" in legend
    assert "p: the Welch t-test's p-value; MWU p: the Mann-Whitney U test's." in legend


def test_report_md_keeps_the_full_table():
    from msctr.evaluate.report import render_markdown

    result = paper_result()
    md = render_markdown(result)
    header = ["Model", *(f"AUC {s}" for s in SCENARIOS), "AUC", "Logloss", "GAUC", "S-GAUC"]
    header += ["RelaImpr", "p vs best other", "MWU p"]
    assert "| " + " | ".join(header) + " |" in md
    for r in result["models"]:
        t, star = r["test"], "*" if r["test"]["significant"] else ""
        cells = [r["model"], *(_mean_std(r[f"auc_s{k}"], " ") for k in range(len(SCENARIOS)))]
        cells += [_mean_std(r["auc"], " ") + star]
        cells += [_mean_std(r[k], " ") for k in ("logloss", "gauc", "sgauc")]
        cells += [f"{r['relaimpr']:+.2f}%", f"{t['welch_p']:.3g}", f"{t['mannwhitney_p']:.3g}"]
        assert "| " + " | ".join(cells) + " |" in md
    bayes = ["Bayes ceiling", *(f"{0.8 + 0.01 * k:.4f}" for k in range(7)), "0.8481", "0.3876"]
    assert "| " + " | ".join(bayes + ["0.8249", "0.8281", "", "", ""]) + " |" in md


def test_single_runs_drop_the_empty_mann_whitney_column():
    from msctr.evaluate.report import terminal_tables

    result = paper_result()
    for r in result["models"]:
        r["test"] = {"reference": "DNN", "delong_z": 5.0, "delong_p": 3.1e-07, "significant": True}
    overall, _ = terminal_tables(result)
    assert overall.header[-2:] == ["RelaImpr", "p"] and overall.rows[1][-1] == "3.1e-07"


def test_ablation_of_many_variants_fits_100_columns():
    from msctr.ablate import ablation_table, ablation_tables

    labels = ["SFPNet", *(f"SFPNet w/o {d}" for d in ("dap", "sam", "rtm", "sdnn", "stb"))]
    labels += ["SFPNet w/o rtm+sam", "SFPNet w/o dap+sam", "SFPNet w/o stb+sdnn"]
    result = paper_result(labels)
    result["models"][0]["test"] = None  # the full model is the reference
    console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
    print_tables(console, *ablation_tables(result, "SFPNet"))
    text = console.export_text()
    assert_fits(text)
    full_auc = result["models"][0]["auc"]["mean"]
    for r in result["models"][1:]:
        t, star = r["test"], "*" if r["test"]["significant"] else ""
        cells = _cells(text, r["model"])
        assert cells[2] == f"{r['auc']['mean'] - full_auc:+.4f}{star}"
        assert cells[-2:] == [f"{t['welch_p']:.1e}", f"{t['mannwhitney_p']:.1e}"]
        scen = _cells(text, r["model"], 1)[1:]
        assert scen == [f"{r[f'auc_s{k}']['mean']:.4f}" for k in range(len(SCENARIOS))]
    # the report's ablation table keeps every column, p-values as before
    md = ablation_table(result, "SFPNet").to_markdown()
    assert md.splitlines()[0].count("|") == len(SCENARIOS) + 8
    assert f"| {result['models'][1]['test']['welch_p']:.3g} |" in md


def test_fit_splits_columns_evenly_and_folds_what_cannot_fit():
    names = [f"scenario_{k}" for k in range(20)]
    wide = Table(["Model", *names], [["HMDN(PEPNet)", *(["0.7405±.0012"] * 20)]])
    parts = wide.fit(100)
    assert all(part.width() <= 100 for part in parts)
    # at most 6 such columns fit beside the label: 4 parts, 5 columns each rather than 6+6+6+2
    assert [len(p.header) - 1 for p in parts] == [5, 5, 5, 5]
    assert parts[0].title is None
    assert [h for p in parts for h in p.header[1:]] == names
    assert all(p.header[0] == "Model" and p.rows[0][0] == "HMDN(PEPNet)" for p in parts)
    # a cell wider than the terminal is folded onto more lines whole, never cut with "…"
    label = "a-model-label-longer-than-the-terminal-is-wide"
    console = Console(width=30, record=True, file=io.StringIO(), color_system=None)
    print_tables(console, Table(["Model", "AUC"], [[label, "0.7405±.0012*"]]))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 30
    assert label in "".join(line.strip().split(" ")[0] for line in text.splitlines())
    assert "0.7405±.0012*" in text


def test_rich_prints_user_text_literally():
    # labels and names are the user's: '[v2]' or '[/x]' is text, not rich markup
    text = _text(Table(["Model [a]", "AUC"], [["DNN [v2]", "[/x]"]], title="[bold]t").to_rich())
    assert "DNN [v2]" in text and "[/x]" in text and "Model [a]" in text and "[bold]t" in text


def test_the_legend_prints_the_reference_label_literally():
    from msctr.evaluate.report import render_table

    result = paper_result()
    result["relaimpr_base"] = "DNN [v2]"
    console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
    render_table(result, console)
    assert "relative to DNN [v2]." in " ".join(console.export_text().split())

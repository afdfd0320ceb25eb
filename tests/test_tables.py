"""The one table renderer: the rich table and the Markdown table come from the same rows."""

import io

from rich.console import Console

from msctr.tables import Table


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
    assert [c.header for c in rich.columns] == list(TABLE.header)
    by_column = [list(c.cells) for c in rich.columns]
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
    assert rich.title == "toy: test split" and rich.header_style == "bold"
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
    assert _text(table.to_rich()) in _text_of(render_table, result)
    assert table.rows[0][:3] == ["A", "0.7000 ±.0100", "0.7000 ±.0100*"]
    abl = ablation_table(result, "A")
    assert abl.title == "Ablation of A (1,000 test rows)"
    assert abl.header[0] == "Variant" and _markdown_cells(abl.to_markdown())[1][0] == "A"


def _text_of(render, result) -> str:
    console = Console(width=120, record=True, file=io.StringIO(), color_system=None)
    render(result, console)
    return console.export_text()

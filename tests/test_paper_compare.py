"""The paper-vs-measured comparison: shown only on the paper's dataset and setup, each figure
paired with ours, rank agreement as SciPy computes it; bad `paper:` blocks are one line."""

import pytest
from conftest import make_schema
from scipy import stats

from msctr.errors import UserError
from msctr.evaluate import paper
from msctr.recipe import PaperFigures, PaperRow, recipe_from_dict


def figures(**kw) -> PaperFigures:
    rows = [
        PaperRow("A", auc=0.60, logloss=0.20, scenario_auc=[0.61, 0.55]),
        PaperRow("B", name="Model B", auc=0.62, logloss=0.19, scenario_auc=[0.63, 0.56]),
        PaperRow("C", auc=0.61, scenario_auc=[0.62, 0.57]),
    ]
    base = {"source": "Paper, Table 9", "dataset": "Ali-CCP", "rows": rows}
    base |= {"scenarios": ["#B1", "#B2"], "fields": None}
    return PaperFigures(**(base | kw))


def schema(dataset="Ali-CCP", names=("#B1", "#B2")):
    s = make_schema(num_scenarios=len(names))
    s.scenario_names = list(names)
    s.info = {"dataset": dataset}
    return s


def stat(mean, std=0.001):
    return {"mean": mean, "std": std, "runs": [mean]}


def row(model, auc, logloss, s0, s1):
    means = {"auc": auc, "logloss": logloss, "auc_s0": s0, "auc_s1": s1}
    return {"model": model} | {k: stat(v) for k, v in means.items()}


ROWS = [
    row("A", 0.58, 0.21, 0.59, 0.50),
    row("B", 0.60, 0.22, 0.60, 0.52),
    row("C", 0.59, 0.20, 0.61, 0.51),
]


def test_each_figure_paired_with_ours_and_the_difference():
    cmp = paper.compare(figures(), schema(), ROWS)
    assert cmp["shown"]
    got = {(r["model"], r["metric"]): r for r in cmp["rows"]}
    assert got[("B", "AUC")]["paper"] == 0.62 and got[("B", "AUC")]["ours"] == 0.60
    assert got[("B", "AUC")]["diff"] == pytest.approx(-0.02)
    assert got[("B", "AUC")]["paper_name"] == "Model B"
    assert got[("A", "AUC #B2")]["diff"] == pytest.approx(0.50 - 0.55)
    assert ("C", "Logloss") not in got  # the paper gives none for C


def test_rank_agreement_is_scipys():
    cmp = paper.compare(figures(), schema(), ROWS)
    auc = cmp["rank"]["AUC"]
    want = stats.kendalltau([0.60, 0.62, 0.61], [0.58, 0.60, 0.59])
    assert auc["kendall_tau"] == pytest.approx(want.statistic)
    assert auc["kendall_p"] == pytest.approx(want.pvalue)
    assert auc["spearman_rho"] == pytest.approx(
        stats.spearmanr([0.60, 0.62, 0.61], [0.58, 0.60, 0.59]).statistic
    )
    assert auc["same_order"] is True
    # logloss: lower is better; the paper's order B < A, ours A < B
    assert cmp["rank"]["Logloss"]["same_order"] is False
    assert cmp["rank"]["AUC #B1"]["same_order"] is False  # paper B > C > A, ours C > B > A


def test_scenario_labels_name_the_columns():
    cmp = paper.compare(figures(scenario_labels=["sce_1", "sce_2"]), schema(), ROWS)
    assert {r["metric"] for r in cmp["rows"]} >= {"AUC sce_1", "AUC sce_2"}
    titles = [t.title for t in paper.tables(cmp)]
    assert titles[0] == "paper vs measured: overall" and "do the models rank" in titles[-1]


@pytest.mark.parametrize(
    "kw,why",
    [
        ({"dataset": "synthetic"}, "the run is on synthetic data"),
        ({"fields": 30}, "input fields"),
        ({"names": ("s0", "s1")}, "no scenario(s)"),
    ],
)
def test_not_shown_off_the_papers_data_with_the_reason(kw, why):
    fig = figures(fields=kw.get("fields"))
    s = schema(dataset=kw.get("dataset", "Ali-CCP"), names=kw.get("names", ("#B1", "#B2")))
    cmp = paper.compare(fig, s, ROWS)
    assert not cmp["shown"] and why in cmp["why"]
    assert "not shown" in paper.legend(cmp) and why in paper.legend(cmp)


def recipe(paper_block: dict) -> dict:
    return {
        "name": "r",
        "data": "d",
        "models": [{"name": "dnn", "label": "A"}],
        "paper": {"source": "P", "dataset": "Ali-CCP", **paper_block},
    }


@pytest.mark.parametrize(
    "block,needle",
    [
        ({"rows": [{"model": "Z", "auc": 0.6}]}, "not the recipe's model labels"),
        ({"rows": [{"model": "A"}, {"model": "A"}]}, "more than once"),
        (
            {"scenarios": ["#B1"], "rows": [{"model": "A", "scenario_auc": [0.6, 0.6]}]},
            "2 values for 1 scenarios",
        ),
        ({"rows": [{"model": "A", "aucc": 0.6}]}, "unknown key"),
    ],
)
def test_bad_paper_blocks_are_one_line_errors(block, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        recipe_from_dict(recipe(block))

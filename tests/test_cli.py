"""The pipeline through the command line: prepare -> train -> eval, errors, determinism."""

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import invoke, msctr_process, one_line_error, process_error, runner
from scipy import stats as sps
from sklearn.metrics import log_loss, roc_auc_score

from msctr.cli import app
from msctr.evaluate.stats import delong

RECIPE = """
name: e2e
data: {data}
out: {out}
models:
  - {{name: dnn, label: DNN, params: {{hidden: [64, 32]}}}}
  - {{name: dnn, label: Wide, params: {{hidden: [128]}}}}
train: {{batch_size: 512, epochs: 3, seeds: [0, 1, 2], lr: 0.003}}
eval: {{baseline: DNN}}
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "syn"
    invoke("prepare", "synthetic", "--out", str(out), "--rows", "12000", "--seed", "1")
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("runs")
    recipe = root / "e2e.yaml"
    recipe.write_text(RECIPE.format(data=data_dir, out=root / "run"))
    result = invoke("train", str(recipe))
    return recipe, root / "run", result.output


def test_train_prints_paper_table(trained):
    _, run, output = trained
    assert "AUC per scenario" in output and "featured" in output and "Bayes ceiling" in output
    res = json.loads((run / "results.json").read_text())
    bayes = res["bayes"]["auc"]
    for row in res["models"]:
        assert 0.6 < row["auc"]["mean"] <= bayes + 0.01
        assert len(row["auc"]["runs"]) == 3
        for k in range(len(res["scenarios"])):
            assert np.isfinite(row[f"auc_s{k}"]["mean"])
    assert (run / "report.md").read_text().startswith("# e2e")
    assert (run / "DNN" / "seed_0" / "best.pt").is_file()
    log = (run / "DNN" / "seed_0" / "log.jsonl").read_text().splitlines()
    assert "val_auc" in json.loads(log[0])
    # early stopping (recipe default: validation logloss, patience 2) as the log shows it
    for model in ("DNN", "Wide"):
        for seed in (0, 1, 2):
            folder = run / model / f"seed_{seed}"
            lines = [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines()]
            ll = [x["val_logloss"] for x in lines]
            flags = [x["best"] for x in lines]
            assert flags == [i == 0 or ll[i] < min(ll[:i]) for i in range(len(ll))]
            best = json.loads((folder / "run.json").read_text())["best_epoch"]
            assert best == 1 + max(i for i, f in enumerate(flags) if f)
            assert ll[best - 1] == min(ll)
            stopped = len(lines) < 3
            assert not stopped or len(lines) - best == 2  # stops only after 2 epochs w/o gain


def test_eval_matches_reference_libraries(trained):
    _, run, _ = trained
    invoke("eval", str(run))
    res = json.loads((run / "results.json").read_text())
    pred = pl.read_parquet(run / "DNN" / "seed_1" / "predictions.parquet")
    y, p = pred["label"].to_numpy(), pred["prob"].to_numpy()
    m = json.loads((run / "DNN" / "seed_1" / "metrics.json").read_text())
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert m["logloss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), abs=1e-9)
    # GAUC against a plain groupby reference
    num = den = 0.0
    for _, g in pred.group_by("_user"):
        if g["label"].n_unique() == 2:
            num += len(g) * roc_auc_score(g["label"], g["prob"])
            den += len(g)
    assert m["gauc"] == pytest.approx(num / den, abs=1e-9)
    s = pred["scenario"].to_numpy()
    assert m["auc_s1"] == pytest.approx(roc_auc_score(y[s == 1], p[s == 1]), abs=1e-9)
    # seed statistics equal SciPy's
    rows = {r["model"]: r for r in res["models"]}
    a, b = rows["Wide"]["auc"]["runs"], rows["DNN"]["auc"]["runs"]
    test = rows["Wide"]["test"]
    assert test["reference"] == "DNN"
    assert test["welch_p"] == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue, abs=1e-12)
    assert test["paired_p"] == pytest.approx(sps.ttest_rel(a, b).pvalue, abs=1e-12)
    mw = sps.mannwhitneyu(a, b, alternative="two-sided").pvalue
    assert test["mannwhitney_p"] == pytest.approx(mw, abs=1e-12)


def test_same_recipe_and_seed_give_identical_metrics(trained, tmp_path):
    recipe, run, _ = trained
    invoke(
        "train",
        str(recipe),
        "--set",
        f"out={tmp_path / 'again'}",
        "--set",
        "train.seeds=[1]",
        "--set",
        "models=[{name: dnn, label: DNN, params: {hidden: [64, 32]}}]",
    )
    first = json.loads((run / "DNN" / "seed_1" / "metrics.json").read_text())
    second = json.loads((tmp_path / "again" / "DNN" / "seed_1" / "metrics.json").read_text())
    assert first == second


@pytest.mark.slow
def test_misspelled_recipe_key(tmp_path, data_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(data=data_dir, out=tmp_path / "o").replace("epochs", "epochz"))
    process_error(msctr_process("train", str(recipe)), "did you mean 'epochs'")


@pytest.mark.slow
def test_missing_data_folder(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(data=tmp_path / "nope", out=tmp_path / "o"))
    process_error(msctr_process("train", str(recipe)), "does not exist")


def click_table(n: int = 3000) -> pl.DataFrame:
    """A user's own table: random clicks over 3 tabs, 50 users, 90 items and a price."""
    rng = np.random.default_rng(0)
    return pl.DataFrame(
        {
            "click": rng.integers(0, 2, n),
            "tab": rng.integers(0, 3, n),
            "user": rng.integers(0, 50, n),
            "item": rng.integers(0, 90, n),
            "price": rng.normal(size=n),
        }
    )


@pytest.mark.slow
def test_label_of_2_in_a_table(tmp_path):
    frame = click_table()
    frame[11, "click"] = 2
    frame.write_parquet(tmp_path / "t.parquet")
    proc = msctr_process(
        "prepare",
        "table",
        str(tmp_path / "t.parquet"),
        "--label",
        "click",
        "--scenario",
        "tab",
        "--sparse",
        "user,item",
        "--out",
        str(tmp_path / "p"),
    )
    process_error(proc, "outside {0, 1}")
    assert not (tmp_path / "p").exists()


def test_table_source_then_smoke_train(tmp_path):
    click_table().write_csv(tmp_path / "t.csv")
    invoke(
        "prepare",
        "table",
        str(tmp_path / "t.csv"),
        "--label",
        "click",
        "--scenario",
        "tab",
        "--sparse",
        "user,item",
        "--dense",
        "price",
        "--user",
        "user",
        "--out",
        str(tmp_path / "p"),
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(data=tmp_path / "p", out=tmp_path / "o"))
    out = invoke("train", str(recipe), "--smoke").output
    assert "DNN" in out and "DeLong" in out
    # a single run per model: DeLong's test on the shared test rows
    res = json.loads((tmp_path / "o-smoke" / "results.json").read_text())
    test = {r["model"]: r for r in res["models"]}["Wide"]["test"]
    a = pl.read_parquet(tmp_path / "o-smoke" / "Wide" / "seed_0" / "predictions.parquet")
    b = pl.read_parquet(tmp_path / "o-smoke" / "DNN" / "seed_0" / "predictions.parquet")
    ref = delong(a["label"].to_numpy(), a["prob"].to_numpy(), b["prob"].to_numpy())
    assert test["delong_p"] == pytest.approx(ref.p_value, abs=1e-12)


PAPER_MODELS = [
    ("dnn", "DNN"),
    ("shared_bottom", "SharedBottom"),
    ("mmoe", "MMoE"),
    ("ple", "PLE"),
    ("star", "STAR"),
    ("adasparse", "AdaSparse"),
    ("pepnet", "PEPNet"),
    ("hmdn", "HMDN(PEPNet)"),
    ("deepfm", "DeepFM"),
    ("hierrec", "HierRec"),
    ("sfpnet", "SFPNet"),
]


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """A finished run of 11 models x 3 seeds on 7 scenarios, its predictions made up (the true
    probability blurred more or less per model) rather than trained: only eval reads them."""
    root = tmp_path_factory.mktemp("paper")
    data = root / "data"
    invoke("prepare", "synthetic", "--out", str(data), "--rows", "8000", "--scenarios", "7")
    run = root / "run"
    models = ", ".join(f"{{name: {n}, label: '{label}'}}" for n, label in PAPER_MODELS)
    run.mkdir()
    (run / "recipe.yaml").write_text(
        f"name: paper\ndata: {data}\nmodels: [{models}]\ntrain: {{seeds: [0, 1, 2]}}\n"
    )
    test = pl.read_parquet(data / "test.parquet")
    logit = np.log(test["_true_prob"].to_numpy() / (1 - test["_true_prob"].to_numpy()))
    rng = np.random.default_rng(0)
    for i, (_, label) in enumerate(PAPER_MODELS):
        for seed in (0, 1, 2):
            noise = rng.normal(0, 0.5 + 0.15 * i, len(test))
            prob = 1 / (1 + np.exp(-(logit + noise)))
            folder = run / label / f"seed_{seed}"
            folder.mkdir(parents=True)
            cols = ["label", "scenario", "_user", "_session", "_true_prob"]
            test.select(cols).with_columns(prob=prob).write_parquet(folder / "predictions.parquet")
    return run


def test_eval_table_fits_100_columns(paper_run):
    from msctr.evaluate.report import results_table

    result = runner.invoke(app, ["eval", str(paper_run)], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = result.output
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 100
    res = json.loads((paper_run / "results.json").read_text())
    assert len(res["models"]) == 11 and len(res["scenarios"]) == 7
    lines = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]
    for r in res["models"]:
        rows = [cells for cells in lines if cells[0] == r["model"]]
        # overall, the per-scenario AUCs in two tables, RelaImpr per scenario (7 fit in one),
        # calibration (ratio, ECE)
        assert len(rows) == 5
        assert rows[3] == [r["model"], *(f"{v:+.2f}%" for v in r["scenario_relaimpr"])]
        assert len(rows[4]) == 3
        star = "*" if r["test"]["significant"] else ""
        assert rows[0][1].endswith("±" + f"{r['auc']['std']:.4f}".lstrip("0") + star)
        p = [f"{r['test'][k]:.1e}" for k in ("welch_p", "mannwhitney_p")]
        assert rows[0][-2:] == p
        assert len(rows[1]) + len(rows[2]) == 2 + 7
    assert any(r["test"]["significant"] for r in res["models"])
    # report.md keeps the whole table, every scenario's AUC beside the overall metrics
    report = (paper_run / "report.md").read_text()
    table = results_table(res).to_markdown()
    assert table in report and table.splitlines()[0].count("|") == 1 + 7 + 4 + 4


def test_nproc_under_torchrun_is_refused(capsys, monkeypatch):
    """`--nproc` starts torchrun; a process torchrun started (WORLD_SIZE set) must not start
    another."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe = Path(__file__).parents[1] / "recipes" / "synthetic" / "table.yaml"
    one_line_error(capsys, "under torchrun, leave it out", "train", str(recipe), "--nproc", "2")

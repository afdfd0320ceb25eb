"""`msctr predict`: the raw rows of a run's test split, scored by predict, give the run's own
predictions.parquet (to 1e-6) for every model of recipes/synthetic/baselines.yaml and the three
papers' models, on synthetic and on `prepare table` data; bad input is one line and writes
nothing; unseen values are counted per field."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import invoke, one_line_error, run_main

from msctr.data.prepare import split_rows
from msctr.data.sources.synthetic import generate
from msctr.data.sources.table import read_table
from msctr.predict import is_scores_file
from msctr.runs import model_folder

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ("hierrec", "sfpnet", "hmdn")
TINY_TRAIN = {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 256, "eval_batch_size": 512}


def shipped_models() -> list[dict]:
    """Every model of baselines.yaml and the papers' models of their synthetic recipes, with
    the recipes' own params: a model added there is covered here."""
    entries = yaml.safe_load((ROOT / "recipes/synthetic/baselines.yaml").read_text())["models"]
    for paper in PAPERS:
        recipe = yaml.safe_load((ROOT / f"recipes/synthetic/{paper}.yaml").read_text())
        entries += [m for m in recipe["models"] if m["name"] == paper]
    return entries


def train(tmp: Path, data: Path, models: list[dict], seeds: list[int]) -> Path:
    run = tmp / "run"
    recipe = {
        "name": "predict-test",
        "data": str(data),
        "out": str(run),
        "models": models,
        "train": {**TINY_TRAIN, "seeds": seeds},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    invoke("train", str(path), "--no-eval")
    return run


def run_predictions(run: Path, label: str, seed: int) -> np.ndarray:
    folder = run / model_folder(label) / f"seed_{seed}"
    return pl.read_parquet(folder / "predictions.parquet")["prob"].to_numpy()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("syn")
    table = generate(rows=3000, seed=5)
    data = tmp / "data"
    invoke("prepare", "synthetic", "--out", str(data), "--rows", "3000", "--seed", "5")
    raw = tmp / "test_raw.parquet"
    split_rows(table, "test", seed=5).collect().write_parquet(raw, row_group_size=100)
    models = shipped_models()
    return {"tmp": tmp, "data": data, "raw": raw, "models": models}


@pytest.fixture(scope="module")
def synthetic_run(synthetic) -> Path:
    return train(synthetic["tmp"], synthetic["data"], synthetic["models"], [0])


def test_predict_reproduces_every_shipped_models_test_predictions(synthetic, synthetic_run):
    out = synthetic["tmp"] / "scores.parquet"
    invoke(
        "predict", str(synthetic_run), "--input", str(synthetic["raw"]), "--out", str(out),
        "--chunk-rows", "70",
    )  # fmt: skip
    scores = pl.read_parquet(out)
    labels = [m["label"] for m in synthetic["models"]]
    assert {"DNN", "HierRec", "SFPNet", "HMDN(PEPNet)", "HMDN(MMoE)"} <= set(labels)
    assert scores.columns == ["row", "scenario", *(f"prob_{k}" for k in labels)]
    assert scores["row"].to_list() == list(range(len(scores)))
    for label in labels:
        want = run_predictions(synthetic_run, label, 0)
        got = scores[f"prob_{label}"].to_numpy()
        assert len(got) == len(want)
        assert np.abs(got - want).max() <= 1e-6, label
    test = pl.read_parquet(synthetic["data"] / "test.parquet")
    names = yaml.safe_load((synthetic["data"] / "schema.json").read_text())["scenario_names"]
    assert scores["scenario"].to_list() == [names[s] for s in test["scenario"].to_list()]


# -- a `prepare table` dataset: text, nulls, NaN, a CSV read back ------------------------------


def write_table(path: Path, n: int = 2400, seed: int = 0, items: int = 150) -> None:
    rng = np.random.default_rng(seed)
    tab = rng.choice(["home", "search", "feed"], n, p=[0.5, 0.3, 0.2])
    user = rng.integers(0, 60, n)
    item = rng.integers(0, items, n)
    cat = rng.choice(["a", "b", "c", "d", ""], n)
    price = rng.gamma(2.0, 10.0, n)
    price[rng.random(n) < 0.05] = np.nan
    logit = 0.04 * (item % 7) - 0.5 + 0.02 * np.nan_to_num(price) - (tab == "feed")
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pl.DataFrame(
        {
            "ts": rng.permutation(n),
            "tab": tab,
            "user": user,
            "item": item,
            "cat": pl.Series(cat).replace("", None),
            "price": price,
            "click": click,
        }
    ).with_columns(pl.when(pl.col("ts") % 17 == 0).then(None).otherwise("price").alias("price"))
    frame.write_csv(path)


TABLE_ARGS = ("--label", "click", "--scenario", "tab", "--sparse", "user,item,cat")
TABLE_ARGS += ("--dense", "price", "--user", "user", "--order", "ts", "--split", "random")


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("table")
    csv = tmp / "log.csv"
    write_table(csv)
    data = tmp / "data"
    invoke("prepare", "table", str(csv), *TABLE_ARGS, "--out", str(data), "--seed", "4")
    source = read_table(csv, "click", "tab", "user,item,cat", "price", "user", None, "ts", "random")
    raw = tmp / "test_raw.csv"
    split_rows(source, "test", seed=4).collect().write_csv(raw)
    models = [
        {"name": "dnn", "label": "DNN"},
        {"name": "hierrec", "label": "HierRec"},
        {"name": "hmdn", "label": "HMDN"},
    ]
    run = train(tmp, data, models, [0, 1])
    return {"tmp": tmp, "data": data, "raw": raw, "run": run, "csv": csv}


def test_predict_reproduces_a_table_runs_predictions_from_csv(table_run):
    out = table_run["tmp"] / "scores.parquet"
    result = invoke(
        "predict", str(table_run["run"]), "--input", str(table_run["raw"]), "--out", str(out),
        "--ensemble", "--keep", "user,ts", "--chunk-rows", "50",
    )  # fmt: skip
    scores = pl.read_parquet(out)
    raw = pl.read_csv(table_run["raw"])
    assert scores["user"].to_list() == raw["user"].to_list()
    assert scores["ts"].to_list() == raw["ts"].to_list()
    for label in ("DNN", "HierRec", "HMDN"):
        want = np.mean([run_predictions(table_run["run"], label, s) for s in (0, 1)], axis=0)
        assert np.abs(scores[f"prob_{label}"].to_numpy() - want).max() <= 1e-6, label
    one = table_run["tmp"] / "one.parquet"
    invoke(
        "predict", str(table_run["run"]), "--input", str(table_run["raw"]), "--out", str(one),
        "--model", "HierRec", "--seed", "1",
    )  # fmt: skip
    got = pl.read_parquet(one)
    assert got.columns == ["row", "scenario", "prob_HierRec"]
    want = run_predictions(table_run["run"], "HierRec", 1)
    assert np.abs(got["prob_HierRec"].to_numpy() - want).max() <= 1e-6
    assert "had only values seen in training" in result.output


def test_unseen_values_are_counted_per_field(table_run, capsys):
    """New rows with item ids and a category training never had: each field's count is the
    rows whose raw value is not in the training vocabulary, as a plain lookup finds it."""
    new = table_run["tmp"] / "new.csv"
    write_table(new, n=500, seed=9, items=400)  # items 150..399 never seen
    enc = pl.read_parquet(table_run["data"] / "encoders.parquet")
    known = set(enc.filter(pl.col("field") == "item")["value"].to_list())
    rows = pl.read_csv(new)
    want = sum(str(v) not in known for v in rows["item"].to_list())
    assert want > 0
    out = table_run["tmp"] / "new_scores.parquet"
    code, stdout, err = run_main(
        capsys, "predict", str(table_run["run"]), "--input", str(new), "--out", str(out)
    )
    assert code == 0, err
    cells = next(re.split(r"\s*│\s*", ln) for ln in stdout.splitlines() if "│ item " in ln)
    assert cells[2] == f"{want:,}" and cells[3] == f"{len(rows):,}"
    assert "2 of 3 field(s) had only values seen in training" in stdout
    assert is_scores_file(out)


# -- bad input: one line, nothing written ------------------------------------------------------


def leaves_nothing(tmp: Path, before: set[str]) -> None:
    assert {p.name for p in tmp.iterdir()} == before


@pytest.fixture
def bad_dir(tmp_path: Path) -> Path:
    return tmp_path


def refused(capsys, table_run, bad_dir: Path, needle: str, *args: str) -> None:
    before = {p.name for p in bad_dir.iterdir()}
    out = bad_dir / "scores.parquet"
    one_line_error(capsys, needle, "predict", *args, "--out", str(out))
    leaves_nothing(bad_dir, before)


def test_missing_column(capsys, table_run, bad_dir):
    path = bad_dir / "in.csv"
    pl.read_csv(table_run["raw"]).drop("cat").write_csv(path)
    refused(capsys, table_run, bad_dir, "lacks column(s) cat", str(table_run["run"]), "--input",
            str(path))  # fmt: skip


def test_wrong_typed_column(capsys, table_run, bad_dir):
    path = bad_dir / "in.parquet"
    raw = pl.read_csv(table_run["raw"])
    raw.with_columns(pl.col("user").cast(pl.String) + "u").write_parquet(path)
    refused(capsys, table_run, bad_dir, "column 'user' holds text", str(table_run["run"]),
            "--input", str(path))  # fmt: skip


def test_a_csv_value_that_does_not_parse_as_in_training(capsys, table_run, bad_dir):
    path = bad_dir / "in.csv"
    raw = pl.read_csv(table_run["raw"]).with_columns(pl.col("user").cast(pl.String))
    raw.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("x9")).otherwise("user")
                     .alias("user")).write_csv(path)  # fmt: skip
    refused(capsys, table_run, bad_dir, "unreadable", str(table_run["run"]), "--input", str(path))


def test_empty_file_and_header_only(capsys, table_run, bad_dir):
    empty = bad_dir / "empty.csv"
    empty.write_bytes(b"")
    refused(capsys, table_run, bad_dir, "empty file", str(table_run["run"]), "--input", str(empty))
    header = bad_dir / "header.csv"
    header.write_text("ts,tab,user,item,cat,price,click\n")
    refused(capsys, table_run, bad_dir, "has no rows", str(table_run["run"]), "--input",
            str(header))  # fmt: skip


def test_unseen_scenario_is_refused(capsys, table_run, bad_dir):
    path = bad_dir / "in.csv"
    pl.read_csv(table_run["raw"]).with_columns(
        pl.when(pl.int_range(pl.len()) < 2).then(pl.lit("cart")).otherwise("tab").alias("tab")
    ).write_csv(path)
    refused(capsys, table_run, bad_dir, "2 row(s)", str(table_run["run"]), "--input", str(path))


def test_run_without_checkpoints(capsys, table_run, bad_dir):
    run = bad_dir / "run"
    shutil.copytree(table_run["run"], run)
    for ckpt in run.glob("*/seed_*/best.pt"):
        ckpt.unlink()
    refused(capsys, table_run, bad_dir, "no trained checkpoint", str(run), "--input",
            str(table_run["raw"]))  # fmt: skip


def test_not_a_run_folder(capsys, table_run, bad_dir):
    refused(capsys, table_run, bad_dir, "not a training run", str(bad_dir), "--input",
            str(table_run["raw"]))  # fmt: skip


def test_dataset_prepared_again_is_refused(capsys, table_run, bad_dir):
    other = bad_dir / "other"
    invoke("prepare", "table", str(table_run["csv"]), *TABLE_ARGS, "--out", str(other), "--seed",
           "5")  # fmt: skip
    refused(capsys, table_run, bad_dir, "prepared again since", str(table_run["run"]), "--input",
            str(table_run["raw"]), "--data", str(other))  # fmt: skip


def test_seed_and_model_that_the_run_lacks(capsys, table_run, bad_dir):
    run, raw = str(table_run["run"]), str(table_run["raw"])
    refused(capsys, table_run, bad_dir, "--seed 7", run, "--input", raw, "--seed", "7")
    refused(capsys, table_run, bad_dir, "not a model of the run", run, "--input", raw,
            "--model", "STAR")  # fmt: skip


def test_a_users_parquet_file_is_not_replaced(capsys, table_run, bad_dir):
    mine = bad_dir / "scores.parquet"
    pl.DataFrame({"x": [1]}).write_parquet(mine)
    refused(capsys, table_run, bad_dir, "not a scores file msctr wrote", str(table_run["run"]),
            "--input", str(table_run["raw"]))  # fmt: skip
    assert pl.read_parquet(mine)["x"].to_list() == [1]

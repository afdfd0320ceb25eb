"""Curves and calibration end to end: history.jsonl per run (continuous across a kill -9),
curves.png and calibration.png from `msctr eval`, the calibration figures in results.json,
report.md and the terminal, and the TensorBoard / MLflow trackers of `train.log`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import invoke, one_line_error, run_main
from sklearn.metrics import log_loss
from train_hooks import HOOKS

from msctr import track

RECIPE = """
name: curves
data: {data}
out: {out}
models:
  - {{name: dnn, label: DNN, params: {{hidden: [16]}}}}
  - {{name: dnn, label: Wide, params: {{hidden: [48]}}}}
train: {{batch_size: 256, epochs: 3, seeds: [0, 1], threads: 1, max_steps_per_epoch: 12}}
"""
PNG = b"\x89PNG\r\n\x1a\n"
TIMING = ("samples_per_s", "train_seconds")  # the only figures a resumed run may change


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _loop_ece(y: np.ndarray, p: np.ndarray, bins: int) -> float:
    """docs/metrics.md's rule row by row: ascending scores, row r in bin r * bins // n, a tie
    with the previous row in that row's bin."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    members: list[list[int]] = [[] for _ in range(bins)]
    b = 0
    for r, i in enumerate(order):
        if r == 0 or p[i] != p[order[r - 1]]:
            b = r * bins // len(p)
        members[b].append(i)
    return sum(len(m) / len(p) * abs(p[m].mean() - y[m].mean()) for m in members if m)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "syn"
    invoke("prepare", "synthetic", "--out", str(out), "--rows", "20000", "--seed", "5")
    return out


def write_recipe(root: Path, data_dir: Path, out: str = "run") -> Path:
    path = root / f"{out}.yaml"
    path.write_text(RECIPE.format(data=data_dir, out=root / out))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    recipe = write_recipe(root, data_dir)
    invoke("train", str(recipe))
    return recipe, root / "run"


def test_history_holds_every_figure_of_every_epoch(trained):
    _, run = trained
    res = json.loads((run / "results.json").read_text())
    scenarios = len(res["scenarios"])
    for name in ("DNN/seed_0", "Wide/seed_1"):
        history = _lines(run / name / "history.jsonl")
        log = _lines(run / name / "log.jsonl")
        assert [h["epoch"] for h in history] == [1, 2, 3]
        for h, line in zip(history, log, strict=True):
            assert {k: h[k] for k in line} == line  # the log line is a part of it
            assert h["lr"] == 0.001 and h["train_seconds"] > 0
            for fig in ("auc", "calibration", "ece", "ne"):
                assert all(f"val_{fig}_s{k}" in h for k in range(scenarios))
            assert 0 <= h["val_ece"] <= 1 and h["val_ne"] > 0


def test_results_json_has_every_calibration_figure_checked_independently(trained):
    _, run = trained
    res = json.loads((run / "results.json").read_text())
    assert res["calibration"]["bins"] == 10
    pred = pl.read_parquet(run / "Wide" / "seed_1" / "predictions.parquet")
    y, p, s = pred["label"].to_numpy(), pred["prob"].to_numpy(), pred["scenario"].to_numpy()
    wide = next(r for r in res["models"] if r["model"] == "Wide")
    assert abs(wide["calibration"]["runs"][1] - p.sum() / y.sum()) < 1e-9
    assert abs(wide["ece"]["runs"][1] - _loop_ece(y, p, 10)) < 1e-9
    base = log_loss(y, np.full(len(y), y.mean()))
    assert abs(wide["ne"]["runs"][1] - log_loss(y, p) / base) < 1e-9
    m = s == 2
    assert abs(wide["ece_s2"]["runs"][1] - _loop_ece(y[m], p[m], 10)) < 1e-9
    runs = np.array(wide["ece"]["runs"])
    assert wide["ece"]["mean"] == pytest.approx(runs.mean())
    assert wide["ece"]["std"] == pytest.approx(runs.std(ddof=1))
    test = wide["calibration_test"]
    assert test["reference"] == "DNN"
    assert set(test["ece"]) == {"welch_p", "mannwhitney_p", "paired_p", "significant"}
    # the reliability points of the first seed, one line per model and the Bayes ceiling
    points = res["calibration"]["reliability"]
    assert set(points) == {"DNN", "Wide", "Bayes ceiling"}
    pred0 = pl.read_parquet(run / "Wide" / "seed_0" / "predictions.parquet")
    assert sum(points["Wide"]["rows"]) == pred0.height
    assert points["Wide"]["predicted"][0] <= points["Wide"]["predicted"][-1]


def test_the_bayes_row_on_planted_data_is_calibrated(trained):
    _, run = trained
    res = json.loads((run / "results.json").read_text())
    bayes = res["bayes"]
    pred = pl.read_parquet(run / "DNN" / "seed_0" / "predictions.parquet")
    y, truth = pred["label"].to_numpy(), pred["_true_prob"].to_numpy()
    assert abs(bayes["ece"] - _loop_ece(y, truth, 10)) < 1e-9
    # labels drawn from the true probabilities: predicted clicks match within sampling noise
    # (2,000 test rows), the bins' gaps are noise only, and logloss beats the base rate's
    assert abs(bayes["calibration"] - 1) < 0.08
    assert bayes["ece"] < 0.04
    assert bayes["ne"] < 0.95
    # the same rows with the truth overstated by half are far off
    assert _loop_ece(y, np.clip(truth * 1.5, 0, 1), 10) > 3 * bayes["ece"]


def test_report_figures_and_the_terminal_table(trained, capsys):
    _, run = trained
    report = (run / "report.md").read_text()
    for part in ("## Calibration", "| Model | Calib. | ECE | NE |", "ECE per scenario:",
                 "![calibration.png](calibration.png)", "![curves.png](curves.png)"):  # fmt: skip
        assert part in report, part
    for name in ("calibration.png", "curves.png"):
        assert (run / name).read_bytes()[:8] == PNG
    os.environ["COLUMNS"] = "100"
    try:
        code, out, err = run_main(capsys, "eval", str(run))
    finally:
        del os.environ["COLUMNS"]
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 100
    table = out[out.index("Calibration") :]
    header = next(line for line in table.splitlines() if "Calib." in line and "Model" in line)
    assert "ECE" in header and "NE" not in header.split()  # NE: report.md only, by default
    assert "Bayes ceiling" in table


def test_table_metrics_choose_the_calibration_columns(trained, capsys):
    recipe, run = trained
    code, out, _ = run_main(capsys, "eval", str(run))
    assert code == 0
    # the run folder's recipe decides; eval keys may change without retraining
    text = (run / "recipe.yaml").read_text()
    (run / "recipe.yaml").write_text(text.replace("- ece\n", "- ece\n  - ne\n"))
    code, out, _ = run_main(capsys, "eval", str(run))
    assert code == 0
    header = next(line for line in out.splitlines() if "Calib." in line and "Model" in line)
    assert header.split()[-1] == "NE"
    (run / "recipe.yaml").write_text(text)


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--log", "wandb"), "train.log.0 must be one of 'tensorboard', 'mlflow'"),
        (("--log", "mlflow,mlflow"), "train.log lists ['mlflow'] more than once"),
        (("--set", "eval.calibration_bins=0"), "eval.calibration_bins"),
    ],
)
def test_bad_tracking_and_calibration_keys_are_one_line_errors(
    capsys, tmp_path, data_dir, args, needle
):
    one_line_error(capsys, needle, "train", str(write_recipe(tmp_path, data_dir)), *args)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["tensorboard", "mlflow"])
def test_a_missing_extra_is_one_line_naming_it(capsys, monkeypatch, tmp_path, data_dir, kind):
    monkeypatch.setitem(track._EXTRAS, kind, "msctr_no_such_package")
    line = one_line_error(
        capsys, f"pip install 'msctr[{kind}]'", "train", str(write_recipe(tmp_path, data_dir)),
        "--log", kind,
    )  # fmt: skip
    assert "train.log" in line
    assert not (tmp_path / "run").exists()  # refused before anything is written


def _tensorboard_steps(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _mlflow_runs(run: Path, tag: str):
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("curves")
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.`msctr.run` = '{tag}'")
    return client, found


@pytest.mark.slow
def test_killed_run_resumes_to_one_continuous_history_and_tracked_curve(
    capsys, tmp_path, data_dir, trained
):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    _, reference = trained
    recipe = write_recipe(tmp_path, data_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MSCTR_TEST_SIGNAL_AT": "KILL:Wide:1:3:4"}
    cmd = [sys.executable, HOOKS, "train", str(recipe), "--no-eval"]
    proc = subprocess.run([*cmd, "--log", "tensorboard,mlflow"], capture_output=True, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run = tmp_path / "run"
    seed = run / "Wide" / "seed_1"
    assert [h["epoch"] for h in _lines(seed / "history.jsonl")] == [1, 2]
    # an epoch the killed process wrote past its resume state (killed between the two writes)
    # must not survive the resume
    with (seed / "history.jsonl").open("a") as fh:
        fh.write(json.dumps({"epoch": 3, "val_auc": 0.0}) + "\n")
    code, _, err = run_main(capsys, "train", str(recipe), "--log", "tensorboard", "--log", "mlflow")
    assert code == 0, err
    for name in ("DNN/seed_0", "Wide/seed_1"):
        got, ref = _lines(run / name / "history.jsonl"), _lines(reference / name / "history.jsonl")
        strip = [{k: v for k, v in h.items() if k not in TIMING} for h in (*got, *ref)]
        assert strip[: len(got)] == strip[len(got) :], name  # the same as never stopped
    history = _lines(seed / "history.jsonl")
    # TensorBoard: one point per epoch, the restored ones written again and the old hidden
    points = _tensorboard_steps(run / "tensorboard" / "Wide" / "seed_1", "val_auc")
    assert points == [(h["epoch"], pytest.approx(h["val_auc"], rel=1e-6)) for h in history]
    # MLflow: the same run continued, each epoch once, finished; eval's test figures on it
    client, found = _mlflow_runs(run, "Wide/seed_1")
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    steps = [(m.step, m.value) for m in client.get_metric_history(found[0].info.run_id, "val_auc")]
    assert sorted(steps) == [(h["epoch"], pytest.approx(h["val_auc"])) for h in history]
    res = json.loads((run / "results.json").read_text())
    wide = next(r for r in res["models"] if r["model"] == "Wide")
    assert found[0].data.metrics["test_ece"] == pytest.approx(wide["ece"]["runs"][1])
    assert found[0].data.params["run"] == "Wide/seed_1"
    _, evals = _mlflow_runs(run, "eval")
    names = {a.path for a in client.list_artifacts(evals[0].info.run_id)}
    assert {"report.md", "results.json", "calibration.png", "curves.png"} <= names


def test_eval_of_a_tracked_folder_without_mlflow_is_one_line_before_writing(
    capsys, monkeypatch, tmp_path, trained
):
    _, reference = trained
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    text = (run / "recipe.yaml").read_text()
    (run / "recipe.yaml").write_text(text.replace("train:\n", "train:\n  log:\n  - mlflow\n", 1))
    before = (run / "results.json").read_bytes()
    monkeypatch.setitem(track._EXTRAS, "mlflow", "msctr_no_such_package")
    one_line_error(capsys, "pip install 'msctr[mlflow]'", "eval", str(run))
    assert (run / "results.json").read_bytes() == before

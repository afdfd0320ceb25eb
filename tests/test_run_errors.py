"""Bad recipes, damaged run folders and faults during train/eval: one line, non-zero exit,
nothing half-written, nothing mixed (docs/errors.md lists every case)."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import invoke, one_line_error, run_main

RECIPE = """
name: errs
data: {data}
out: {out}
models:
  - {{name: dnn, label: DNN, params: {{hidden: [16]}}}}
train: {{batch_size: 512, epochs: 2, seeds: [0, 1, 2]}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    recipe = root / "r.yaml"
    recipe.write_text(RECIPE.format(data=data_dir, out=root / "run"))
    invoke("train", str(recipe), "--no-eval")
    return recipe, root / "run"


def recipe_with(tmp_path: Path, data_dir: Path, text: str = RECIPE) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text.format(data=data_dir, out=tmp_path / "run"))
    return path


# -- model params out of range --------------------------------------------------------------


@pytest.mark.parametrize(
    "model, key, value, needle",
    [
        ("dnn", "dropout", 1.5, "dropout must be in [0, 1)"),
        ("sfpnet", "dropout", 1.5, "dropout must be in [0, 1)"),
        ("hierrec", "dropout", 1.5, "dropout must be in [0, 1)"),
        ("adasparse", "dropout", 1.5, "dropout must be in [0, 1)"),
        ("pepnet", "dropout", 1.5, "dropout must be in [0, 1)"),
        ("hmdn", "dropout", 1.5, "dropout must be in [0, 1)"),
        ("hierrec", "attention_dropout", 2, "attention_dropout must be in [0, 1)"),
        ("dnn", "embed_dim", 0, "embed_dim must be at least 1"),
        ("dnn", "hidden", [-4], "hidden: sizes must be positive"),
        ("sfpnet", "num_blocks", -1, "num_blocks must be at least 1"),
        ("sfpnet", "dap_eps", -1, "dap_eps must be positive"),
        ("mmoe", "num_experts", 0, "num_experts must be at least 1"),
    ],
)
def test_model_param_out_of_range(capsys, tmp_path, data_dir, model, key, value, needle):
    recipe = recipe_with(tmp_path, data_dir)
    models = f"models=[{{name: {model}, params: {{{key}: {value}}}}}]"
    one_line_error(capsys, needle, "train", str(recipe), "--set", models)
    assert not (tmp_path / "run").exists()


# -- train keys out of range, and --smoke checks the recipe as written ----------------------


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.weight_decay=-0.1", "weight_decay must be >= 0"),
        ("train.threads=-3", "threads must be at least 1"),
        ("train.eval_rows=0", "eval_rows must be at least 1"),
        ("train.device=gpu", "device must be cpu, cuda, cuda:N or mps"),
        ("train.seeds=[0,0]", "more than once"),
        ("train.seeds=[-1]", "seeds must be integers in [0, 2**32)"),
        ("train.early_stopping.patience=0", "patience must be at least 1"),
        ("train.lr=.inf", "lr must be a finite number"),
    ],
)
def test_train_key_out_of_range(capsys, tmp_path, data_dir, override, needle):
    one_line_error(capsys, needle, "train", str(recipe_with(tmp_path, data_dir)), "--set", override)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.epochs=0", "epochs must be a positive number"),
        ("train.seeds=[]", "seeds is empty"),
        ("train.batch_size=big", "batch_size must be an integer, got 'big'"),
    ],
)
def test_smoke_refuses_what_the_real_run_refuses(capsys, tmp_path, data_dir, override, needle):
    recipe = recipe_with(tmp_path, data_dir)
    one_line_error(capsys, needle, "train", str(recipe), "--smoke", "--set", override)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_failed_train_leaves_the_run_folder_as_it_was(capsys, trained):
    recipe, run = trained
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    one_line_error(capsys, "no CUDA device", "train", str(recipe), "--set", "train.device=cuda")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


# -- eval: missing, corrupt or moved run outputs ---------------------------------------------


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained[1], run)
    return run


def test_eval_refuses_missing_seed_then_partial_says_so(capsys, run_copy):
    (run_copy / "DNN" / "seed_1" / "predictions.parquet").unlink()
    one_line_error(capsys, "DNN seed 1", "eval", str(run_copy))
    assert not (run_copy / "results.json").exists()
    code, out, err = run_main(capsys, "eval", str(run_copy), "--partial")
    assert code == 0, err
    assert "PARTIAL" in out and "DNN seed 1" in out
    res = json.loads((run_copy / "results.json").read_text())
    assert res["missing_runs"] == ["DNN seed 1"]
    assert res["models"][0]["seeds"] == [0, 2]
    assert len(res["models"][0]["auc"]["runs"]) == 2
    assert "PARTIAL" in (run_copy / "report.md").read_text()


def test_eval_names_a_corrupt_predictions_file(capsys, run_copy):
    pred = run_copy / "DNN" / "seed_2" / "predictions.parquet"
    pred.write_bytes(pred.read_bytes()[:200])
    one_line_error(capsys, "seed_2/predictions.parquet' is unreadable", "eval", str(run_copy))


def test_eval_refuses_runs_scored_on_different_test_sets(capsys, run_copy):
    pred = run_copy / "DNN" / "seed_2" / "predictions.parquet"
    pl.read_parquet(pred).head(100).write_parquet(pred)
    one_line_error(capsys, "scored different test sets", "eval", str(run_copy))


def test_eval_names_a_corrupt_recipe(capsys, run_copy):
    (run_copy / "recipe.yaml").write_text("name: [unclosed\n")
    one_line_error(capsys, "recipe.yaml' is unreadable", "eval", str(run_copy))


def test_eval_from_another_folder_and_after_the_data_moved(capsys, tmp_path, data_dir, monkeypatch):
    # trained with a relative data path, evaluated from elsewhere
    project = tmp_path / "project"
    shutil.copytree(data_dir, project / "data" / "syn")
    (project / "r.yaml").write_text(RECIPE.format(data="data/syn", out="runs/x"))
    monkeypatch.chdir(project)
    code, _, err = run_main(capsys, "train", "r.yaml", "--smoke", "--no-eval")
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "eval", "project/runs/x-smoke")
    assert code == 0, err
    assert "AUC per scenario" in out and "featured" in out
    # the dataset moved: named, with the fix; --data points at its new place
    (project / "data").rename(tmp_path / "moved")
    one_line_error(capsys, "give --data PATH", "eval", "project/runs/x-smoke")
    code, _, err = run_main(
        capsys, "eval", "project/runs/x-smoke", "--data", str(tmp_path / "moved" / "syn")
    )
    assert code == 0, err


# -- damaged prepared data ------------------------------------------------------------------


@pytest.fixture
def data_copy(data_dir, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    return data


@pytest.mark.parametrize("split", ["train", "test"])
def test_truncated_split(capsys, tmp_path, data_copy, split):
    path = data_copy / f"{split}.parquet"
    path.write_bytes(path.read_bytes()[:1000])
    recipe = recipe_with(tmp_path, data_copy)
    one_line_error(capsys, f"{split}.parquet' is unreadable", "train", str(recipe), "--smoke")
    assert not (tmp_path / "run-smoke").exists()


def test_truncated_split_streamed(capsys, tmp_path, data_copy):
    path = data_copy / "train.parquet"
    path.write_bytes(path.read_bytes()[:1000])
    recipe = recipe_with(tmp_path, data_copy)
    one_line_error(
        capsys, "train.parquet' is unreadable", "train", str(recipe), "--smoke",
        "--set", "train.loader=stream",
    )  # fmt: skip


@pytest.mark.parametrize(
    "text, needle",
    [("{not json", "schema.json' is unreadable"), ('{"version": 1}', "not a valid msctr schema")],
)
def test_invalid_schema_json(capsys, tmp_path, data_copy, text, needle):
    (data_copy / "schema.json").write_text(text)
    one_line_error(capsys, needle, "train", str(recipe_with(tmp_path, data_copy)), "--smoke")


# -- faults: stale temp files, full disk, no permission, Ctrl-C, file modes -------------------


def test_stale_checkpoint_temp_of_a_dead_process_is_swept(capsys, tmp_path, data_dir):
    recipe = recipe_with(tmp_path, data_dir)
    seed_dir = tmp_path / "run-smoke" / "DNN" / "seed_0"
    seed_dir.mkdir(parents=True)
    # as a killed train leaves it: the manifest (msctr.runs) is written before model folders
    (tmp_path / "run-smoke" / ".msctr-run.json").write_text('{"models": ["DNN"]}')
    dead = seed_dir / ".best.pt.9999999-0badc0de.tmp"  # pid above Linux's pid_max
    dead.write_bytes(b"half a checkpoint")
    mine = seed_dir / f".best.pt.{os.getpid()}-0badc0de.tmp"  # a live process's: kept
    mine.write_bytes(b"in progress")
    code, _, err = run_main(capsys, "train", str(recipe), "--smoke", "--no-eval")
    assert code == 0, err
    assert not dead.exists() and mine.exists()


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


@pytest.mark.slow
def test_disk_full_while_training(tmp_path, data_dir):
    recipe = recipe_with(tmp_path, data_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "msctr.cli", "train", str(recipe), "--smoke"],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,  # the checkpoint (~40 KB) is the first large write
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "no space left to write" in proc.stderr and "best.pt" in proc.stderr
    assert not [p for p in (tmp_path / "run-smoke").rglob("*.tmp")]


def test_no_permission_to_write(capsys, tmp_path, data_dir, monkeypatch):
    # root (as in CI) may write anywhere, so the refusal is simulated where the file is written
    def refuse(path, text):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("msctr.train.loop.write_text", refuse)
    recipe = recipe_with(tmp_path, data_dir)
    one_line_error(capsys, "no permission to write", "train", str(recipe), "--smoke")


@pytest.mark.slow
def test_ctrl_c_during_training_says_so_and_leaves_no_temp(capsys, tmp_path, data_dir):
    recipe = recipe_with(tmp_path, data_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "msctr.cli", "train", str(recipe)]
        + ["--set", "train.epochs=500", "--set", "train.batch_size=64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = tmp_path / "run" / "DNN" / "seed_0" / "log.jsonl"
    deadline = time.monotonic() + 60
    while not (log.is_file() and log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until an epoch has ended, so training is under way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip() == (
        "interrupted (SIGINT): no file was left half-written; resume with: msctr train "
        f"{recipe} --set train.epochs=500 --set train.batch_size=64"
    )
    assert not list((tmp_path / "run").rglob("*.tmp"))
    # what was interrupted is not evaluated as if it were the recipe's result
    one_line_error(capsys, "no finished runs", "eval", str(tmp_path / "run"))


def test_outputs_follow_the_umask(capsys, tmp_path, data_dir):
    old = os.umask(0o022)
    try:
        code, _, err = run_main(capsys, "train", str(recipe_with(tmp_path, data_dir)), "--smoke")
    finally:
        os.umask(old)
    assert code == 0, err
    run = tmp_path / "run-smoke"
    for name in ("recipe.yaml", "results.json", "report.md", "DNN/seed_0/best.pt"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name
    assert (run / "DNN" / "seed_0" / "predictions.parquet").stat().st_mode & 0o777 == 0o644


# -- bench-inference finds the checkpoint of a label the folder rule rewrites ------------------


def test_bench_uses_the_trained_checkpoint_of_a_label_with_a_space(capsys, tmp_path, data_dir):
    text = RECIPE.replace("label: DNN", "label: My DNN/v2")
    recipe = recipe_with(tmp_path, data_dir, text)
    code, _, err = run_main(capsys, "train", str(recipe), "--set", "train.seeds=[0]", "--no-eval")
    assert code == 0, err
    assert (tmp_path / "run" / "My_DNN_v2" / "seed_0" / "best.pt").is_file()
    code, _, err = run_main(
        capsys, "bench-inference", str(recipe), "--batch-sizes", "256", "--repeats", "1",
        "--min-time", "0", "--set", "train.seeds=[0]",
    )  # fmt: skip
    assert code == 0, err
    bench = json.loads((tmp_path / "run" / "bench.json").read_text())
    (row,) = bench["models"]
    assert row["trained"] is True, row["weights"]


def test_auc_early_stopping_on_a_one_class_validation_split_is_refused(tmp_path, capsys):
    """A validation split without a click has no AUC: early stopping on it would keep epoch 1
    silently; it is a one-line error before anything is trained."""
    n = 400
    table = pl.DataFrame(
        {
            "label": [int(i % 3 == 0) if i < 0.8 * n or i >= 0.9 * n else 0 for i in range(n)],
            "scenario": [i % 2 for i in range(n)],
            "f": [i % 7 for i in range(n)],
        }
    )
    table.write_csv(tmp_path / "t.csv")
    data = tmp_path / "data"
    invoke(
        "prepare", "table", str(tmp_path / "t.csv"), "--out", str(data), "--label", "label",
        "--scenario", "scenario", "--sparse", "f",
    )  # fmt: skip
    recipe = tmp_path / "r.yaml"
    out = tmp_path / "run"
    train = "train: {batch_size: 512, epochs: 2, seeds: [0], early_stopping: {metric: auc}}"
    recipe.write_text(
        RECIPE.format(data=data, out=out).replace(
            "train: {batch_size: 512, epochs: 2, seeds: [0, 1, 2]}", train
        )
    )
    code, out_text, err = run_main(capsys, "train", str(recipe))
    assert code == 1
    line = (out_text + err).strip()
    assert "only label 0" in line and "early_stopping.metric: logloss" in line
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert not out.exists() or not any(out.rglob("*.parquet"))

"""Runs that survive: a killed or interrupted `msctr train` resumes to the very same metrics,
a changed recipe is refused instead of mixed into old results, one train per run folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import invoke, one_line_error, run_main
from train_hooks import HOOKS, install

from msctr.errors import UserError
from msctr.io import exclusive_lock

RECIPE = """
name: rs
data: {data}
out: {out}
models:
  - {{name: dnn, label: DNN, params: {{hidden: [16]}}}}
  - {{name: mmoe, label: MMoE, params: {{expert_hidden: [16], tower_hidden: [8]}}}}
train: {{batch_size: 256, epochs: 3, seeds: [0], threads: 1}}
"""
RUNS = ("DNN/seed_0", "MMoE/seed_0")


def write_recipe(root: Path, data_dir: Path, out: str = "run") -> Path:
    path = root / f"{out}.yaml"
    path.write_text(RECIPE.format(data=data_dir, out=root / out))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir) -> Path:
    """An uninterrupted run of the recipe, evaluated (metrics.json per run)."""
    root = tmp_path_factory.mktemp("ref")
    invoke("train", str(write_recipe(root, data_dir)))
    return root / "run"


def train_proc(recipe: Path, *args: str, signal_at: str | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MSCTR_TEST_SIGNAL_AT", None)
    if signal_at:
        env["MSCTR_TEST_SIGNAL_AT"] = signal_at
    return subprocess.run(
        [sys.executable, HOOKS, "train", str(recipe), *args],
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["KILL", "INT"])
def test_killed_mid_epoch_of_the_second_model_resumes_to_identical_metrics(
    capsys, tmp_path, data_dir, reference, sig
):
    recipe = write_recipe(tmp_path, data_dir)
    # the test hook sends the signal just before step 3 of epoch 2 of MMoE (docs/testing.md)
    proc = train_proc(recipe, "--no-eval", signal_at=f"{sig}:MMoE:0:2:3")
    run = tmp_path / "run"
    if sig == "KILL":
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    else:
        assert proc.returncode == 130, proc.stderr
        assert proc.stderr.strip() == (
            "interrupted (SIGINT): no file was left half-written; resume with: "
            f"msctr train {recipe} --no-eval"
        )
        assert not list(run.rglob("*.tmp"))
    assert (run / "DNN" / "seed_0" / "run.json").is_file()  # the first model finished
    state = run / "MMoE" / "seed_0"
    assert (state / "last.pt").is_file() and not (state / "predictions.parquet").exists()
    assert len((state / "log.jsonl").read_text().splitlines()) == 1  # one epoch finished
    # the same command again: DNN kept as it is, MMoE continues from its first epoch
    first_dnn = (run / "DNN" / "seed_0" / "predictions.parquet").stat().st_mtime_ns
    code, out, err = run_main(capsys, "train", str(recipe))  # in-process: faster
    assert code == 0, err
    assert "kept DNN seed 0: finished earlier" in out
    assert "resumed and trained MMoE seed 0" in out
    assert (run / "DNN" / "seed_0" / "predictions.parquet").stat().st_mtime_ns == first_dnn
    assert not (state / "last.pt").exists()
    for name in RUNS:
        got = (run / name / "metrics.json").read_bytes()
        assert got == (reference / name / "metrics.json").read_bytes(), name
    ref_log = [
        json.loads(x) for x in (reference / "MMoE/seed_0/log.jsonl").read_text().splitlines()
    ]
    log = [json.loads(x) for x in (state / "log.jsonl").read_text().splitlines()]
    assert [x["val_auc"] for x in log] == [x["val_auc"] for x in ref_log]


def test_a_changed_recipe_is_refused_never_mixed(
    capsys, monkeypatch, tmp_path, data_dir, reference
):
    # the case: trained at lr 0.001, rerun at lr 0.02 and stopped after the first model
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    recipe = write_recipe(tmp_path, data_dir)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    line = one_line_error(
        capsys, "train.lr changed", "train", str(recipe), "--set", "train.lr=0.02"
    )
    assert "0.001 there" in line and "0.02 now" in line and "--fresh" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    line = one_line_error(
        capsys, "'MMoE' params.expert_hidden changed", "train", str(recipe),
        "--set", "models.1.params.expert_hidden=[32]",
    )  # fmt: skip
    # --fresh starts over; stopped after the first model, the folder holds only the new
    # recipe's runs: eval refuses the missing one instead of reporting a mixture
    with monkeypatch.context() as mp:
        install(mp.setattr, signal_at="INT:MMoE:0:1:2")
        code, _, err = run_main(capsys, "train", str(recipe), "--fresh", "--set", "train.lr=0.02")
    assert code == 130, err
    assert "resume with:" in err and "--fresh" not in err
    assert "lr: 0.02" in (run / "recipe.yaml").read_text()
    assert not (run / "results.json").exists()
    one_line_error(capsys, "MMoE seed 0", "eval", str(run))
    code, out, err = run_main(capsys, "eval", str(run), "--partial")
    assert code == 0, err
    res = json.loads((run / "results.json").read_text())
    assert [m["model"] for m in res["models"]] == ["DNN"]
    assert res["models"][0]["auc"]["runs"] != [
        json.loads((reference / "DNN/seed_0/metrics.json").read_text())["auc"]
    ]


def test_eval_refuses_a_folder_that_mixes_recipes(capsys, tmp_path, reference):
    # a run whose fingerprint disagrees with the recorded recipe (as an older msctr could
    # leave behind) is named, not averaged in
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    fp_path = run / "DNN" / "seed_0" / "fingerprint.json"
    fp = json.loads(fp_path.read_text())
    fp["train"]["lr"] = 0.02
    fp_path.write_text(json.dumps(fp))
    one_line_error(capsys, "mixes recipes", "eval", str(run))


def test_changes_that_cannot_affect_results_are_allowed(capsys, tmp_path, data_dir, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    recipe = write_recipe(tmp_path, data_dir)
    kept = (run / "MMoE" / "seed_0" / "predictions.parquet").read_bytes()
    code, out, err = run_main(
        capsys, "train", str(recipe), "--no-eval",
        "--set", "eval.significance=0.01",
        "--set", "models.0.label=Base DNN",  # a label alone: the folder is renamed
        "--set", "train.seeds=[0, 1]",  # an added seed: trained, the others kept
    )  # fmt: skip
    assert code == 0, err
    assert "renamed DNN -> Base_DNN" in out
    assert "kept Base DNN seed 0" in out and "kept MMoE seed 0" in out
    assert "trained MMoE seed 1" in out
    assert not (run / "DNN").exists()
    assert (run / "MMoE" / "seed_0" / "predictions.parquet").read_bytes() == kept
    code, _, err = run_main(capsys, "eval", str(run))
    assert code == 0, err
    base = run / "Base_DNN" / "seed_0" / "metrics.json"
    assert base.read_bytes() == (reference / "DNN" / "seed_0" / "metrics.json").read_bytes()


@pytest.mark.slow
def test_a_second_train_on_the_same_folder_stops_with_one_line(capsys, tmp_path, data_dir):
    recipe = write_recipe(tmp_path, data_dir)
    run = tmp_path / "run"
    run.mkdir()
    with exclusive_lock(run / ".lock", "busy {pid}"):  # as a running `msctr train` holds it
        line = one_line_error(capsys, "is training into", "train", str(recipe))
    assert f"pid {os.getpid()}" in line
    assert not (run / "recipe.yaml").exists()
    # a holder that was killed leaves the file but not the lock
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom msctr.io import exclusive_lock\n"
         f"with exclusive_lock({str(run / '.lock')!r}, 'x'):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    one_line_error(capsys, "is training into", "train", str(recipe))
    holder.kill()
    holder.wait()
    code, _, err = run_main(capsys, "train", str(recipe), "--no-eval", "--set", "train.epochs=1")
    assert code == 0, err


def test_the_busy_message_keeps_a_path_with_braces(tmp_path):
    lock = tmp_path / "run{0}{x}" / ".lock"
    lock.parent.mkdir()
    busy = f"{{holder}} is training into '{lock.parent}' now; kill -INT {{pid}}"
    with exclusive_lock(lock, busy), pytest.raises(UserError) as held:
        with exclusive_lock(lock, busy):  # a second open file: flock refuses it
            pass
    assert f"'{lock.parent}' now; kill -INT {os.getpid()}" in str(held.value)


def test_fresh_starts_over(capsys, tmp_path, data_dir, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "notes.txt").write_text("mine")
    recipe = write_recipe(tmp_path, data_dir)
    code, out, err = run_main(
        capsys, "train", str(recipe), "--fresh", "--no-eval",
        "--set", "models=[{name: dnn, label: DNN, params: {hidden: [8]}}]",
    )  # fmt: skip
    assert code == 0, err
    assert "trained DNN seed 0" in out
    assert not (run / "MMoE").exists() and (run / "notes.txt").read_text() == "mine"

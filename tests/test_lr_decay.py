"""`train.lr_decay`: the learning rate of epoch e is lr * lr_decay**e (SFPNet's decay of 0.9),
written to log.jsonl per epoch, kept by a resumed run, and out of the fingerprint when 1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_line_error, run_main
from train_hooks import HOOKS

from msctr.data.schema import Schema
from msctr.recipe import load_recipe, run_fingerprint

ROOT = Path(__file__).parent.parent
RECIPE = """
name: lrd
data: {data}
out: {out}
models: [{{name: dnn, label: DNN, params: {{hidden: [8]}}}}]
train: {{batch_size: 256, epochs: 3, seeds: [0], threads: 1, max_steps_per_epoch: 3,
         lr: 0.01, lr_decay: 0.5, early_stopping: {{patience: 5}}}}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("lrd")
    path = root / "lrd.yaml"
    path.write_text(RECIPE.format(data=data_dir, out=root / "run"))
    return path


def lrs(recipe: Path) -> list[float]:
    log = recipe.parent / "run" / "DNN" / "seed_0" / "log.jsonl"
    return [json.loads(line)["lr"] for line in log.read_text().splitlines()]


def test_each_epoch_trains_at_its_decayed_rate(capsys, recipe):
    code, out, err = run_main(capsys, "train", str(recipe), "--no-eval", "--fresh")
    assert code == 0, err
    assert lrs(recipe) == [0.01, 0.005, 0.0025]


def test_a_resumed_run_goes_on_at_its_epochs_rate(capsys, recipe):
    """Killed in its third epoch: the rerun restores the state after epoch 2 and trains epoch
    3 at lr * 0.5**2, as an uninterrupted run does (the rate is a function of the epoch)."""
    env = {**os.environ, "MSCTR_TEST_SIGNAL_AT": "KILL:DNN:0:3:2", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, HOOKS, "train", str(recipe), "--no-eval", "--fresh"]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert lrs(recipe) == [0.01, 0.005]
    code, out, err = run_main(capsys, "train", str(recipe), "--no-eval")
    assert code == 0, err
    assert lrs(recipe) == [0.01, 0.005, 0.0025]


def test_constant_rate_keeps_old_fingerprints(recipe):
    r = load_recipe(recipe, ["train.lr_decay=1.0"])
    fp = run_fingerprint(r, r.models[0], Schema.load(r.data))
    assert "lr_decay" not in fp["train"]
    r = load_recipe(recipe, [])
    assert run_fingerprint(r, r.models[0], Schema.load(r.data))["train"]["lr_decay"] == 0.5


@pytest.mark.parametrize("value", ["0", "1.5", "-0.9"])
def test_a_decay_outside_0_1_is_one_line(capsys, recipe, value):
    args = ["train", str(recipe), "--set", f"train.lr_decay={value}"]
    line = one_line_error(capsys, "lr_decay must be in (0, 1]", *args)
    assert line.startswith("error: ")

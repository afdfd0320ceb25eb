"""`msctr tune`: the search space is checked before any trial, grid tries exactly the space,
tuning reads only train and validation, the study survives a kill and a rerun continues it,
one tune per folder, tuned.yaml is a recipe `train` runs, Optuna is an optional extra."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import invoke, one_line_error, run_main
from train_hooks import HOOKS, install

from msctr.io import exclusive_lock
from msctr.recipe import load_recipe
from msctr.search import parse_space

optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).parent.parent
RECIPE = """
name: tn
data: {data}
out: {out}
search:
  params.dropout: {{choice: [0.0, 0.2]}}
models:
  - name: dnn
    label: DNN
    search:
      params.hidden: {{layers: {{depth: [1, 2], width: [8, 16]}}}}
  - name: mmoe
    label: MMoE
    params: {{expert_hidden: [16], tower_hidden: [8]}}
    search:
      params.expert_hidden: {{layers: {{depth: [1, 2], width: [8, 16]}}}}
train: {{batch_size: 256, epochs: 2, seeds: [3, 4], threads: 1, max_steps_per_epoch: 3}}
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "syn"
    invoke("prepare", "synthetic", "--out", str(out), "--rows", "3000", "--seed", "1")
    return out


def write_recipe(root: Path, data: Path) -> Path:
    path = root / "tn.yaml"
    path.write_text(RECIPE.format(data=data, out=root / "run"))
    return path


def trials(folder: Path, label: str) -> list:
    study = optuna.load_study(study_name=label, storage=f"sqlite:///{folder / 'tune.db'}")
    return study.get_trials(deepcopy=False)


def test_optuna_missing_is_one_line(capsys, monkeypatch, tmp_path, data_dir):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    line = one_line_error(capsys, "Optuna", "tune", str(write_recipe(tmp_path, data_dir)))
    assert line == "error: msctr tune needs Optuna: pip install 'msctr[tune]'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tn.yaml"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "search={params.dropout: {choice: []}}"], "choice needs a non-empty list"),
        (["--set", "search={params.dropout: {float: [0.5, 0.1]}}"], "low 0.5 is above high 0.1"),
        (["--set", "search={params.dropout: {uniform: [0, 1]}}"], "unknown spec kind 'uniform'"),
        (["--set", "search={params.dropout: {float: [0, 0.5], log: true}}"], "needs low > 0"),
        (["--set", "search={train.seeds: {choice: [[0], [1]]}}"], "a search key is a model param"),
        (
            ["--set", "models.1.search={params.hidden: {layers: {depth: [0, 2], width: [8]}}}"],
            "depth [0, 2] needs 1 <= low <= high",
        ),
        # a key the model does not have, and a value out of its range: the recipe's own checks
        # on the trial recipe, named by model and key
        (["--set", "search={params.dropot: {choice: [0.1]}}"], "search of DNN, params.dropot=0.1"),
        (
            ["--set", "models.1.search={params.hidden: {layers: {depth: [1, 2], width: [8]}}}"],
            "unknown key 'models.1.params.hidden'",
        ),
        (["--set", "search={params.dropout: {float: [0.0, 1.5]}}"], "params.dropout=1.5"),
        (["--set", "search={train.lr: {float: [0.001, 0.01]}}"], "one value for all 2 models"),
        (
            ["--sampler", "grid", "--set", "search={params.dropout: {float: [0.0, 0.5]}}"],
            "--sampler grid tries every value",
        ),
        (["--sampler", "random"], "--sampler must be one of tpe, grid"),
        (["--model", "Nope"], "'Nope' is not in the recipe"),
        (["--pruner", "asha"], "--pruner must be one of median, halving, none"),
        (["--trial-epochs", "0"], "--trial-epochs must be at least 1, got 0"),
        (["--trial-rows", "0"], "--trial-rows must be at least 1, got 0"),
        (["--trial-rows", "100", "--set", "train.loader=stream"], "streams it"),
        (
            ["--set", "models.0.search={}", "--set", "search={}", "--model", "DNN"],
            "model DNN has no search space",
        ),
        (
            ["--set", "models.0.search={}", "--set", "models.1.search={}", "--set", "search={}"],
            "no model of the recipe has a search space",
        ),
    ],
)
def test_bad_space_is_one_line_and_writes_nothing(capsys, tmp_path, data_dir, args, needle):
    recipe = write_recipe(tmp_path, data_dir)
    line = one_line_error(capsys, needle, "tune", str(recipe), *args)
    if "search of" in needle:
        assert "params.dropot" in line or "params.dropout" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tn.yaml"]


def test_space_shapes():
    space = parse_space(
        {
            "params.hidden": {"layers": {"depth": [1, 3], "width": [16, 64]}},
            "params.embed_dim": {"int": [8, 32], "step": 8},
            "params.dropout": {"choice": [0.0, 0.1]},
            "params.tower_hidden": {"choice": [[64], [64, 32]]},
        },
        "search",
    )
    assert space["params.hidden"].grid("s") == {
        "params.hidden.depth": [1, 2, 3],
        "params.hidden.width": [16, 64],
    }
    assert space["params.hidden"].value({"params.hidden.depth": 3, "params.hidden.width": 16}) == [
        16,
        16,
        16,
    ]
    assert space["params.embed_dim"].grid("s") == {"params.embed_dim": [8, 16, 24, 32]}
    # a list choice goes to Optuna as JSON text and comes back as the list
    tower = space["params.tower_hidden"]
    assert tower.grid("s") == {"params.tower_hidden": ["[64]", "[64, 32]"]}
    assert tower.value({"params.tower_hidden": "[64, 32]"}) == [64, 32]
    assert space["params.hidden"].probes() == [[16], [64], [16, 16, 16], [64, 64, 64]]


def test_a_second_tune_on_the_folder_is_refused(capsys, tmp_path, data_dir):
    recipe = write_recipe(tmp_path, data_dir)
    folder = tmp_path / "run-smoke-tune"
    folder.mkdir()
    with exclusive_lock(folder / ".lock", "busy {pid}"):  # as a running `msctr tune` holds it
        line = one_line_error(capsys, "is tuning into", "tune", str(recipe), "--smoke")
    assert f"pid {os.getpid()}" in line
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]


def test_the_shipped_search_recipe_checks_on_synthetic_data(capsys, data_dir, monkeypatch):
    """recipes/synthetic/tune.yaml: HierRec §4.1's space, every depth and width checked
    against the data's schema (a wrong key would be refused here, before any trial)."""
    from msctr.tune import plan

    recipe = load_recipe(ROOT / "recipes/synthetic/tune.yaml", [f"data={data_dir}"])
    targets = plan(recipe, None, "grid")
    assert [t.label for t in targets] == ["DNN", "MMoE"]
    assert targets[0].grid == {
        "params.dropout": [0.0, 0.1, 0.2],
        "params.hidden.depth": [1, 2, 3, 4, 5],
        "params.hidden.width": [16, 32, 64, 128],
    }


@pytest.mark.slow
def test_smoke_tune_writes_tuned_yaml_that_train_runs(capsys, tmp_path, data_dir):
    recipe = write_recipe(tmp_path, data_dir)
    code, out, err = run_main(capsys, "tune", str(recipe), "--smoke")
    assert code == 0, err
    folder = tmp_path / "run-smoke-tune"
    assert "DNN: 2 finished trial(s), tpe sampler, validation logloss" in out
    assert "MMoE: 2 finished trial(s)" in out and "best DNN: trial" in out
    res = json.loads((folder / "results.json").read_text())
    assert res["sampler"] == "tpe" and res["metric"] == "logloss" and res["train_seed"] == 3
    assert res["budget"] == {
        "trials": 2, "timeout": None, "sampler_seed": 0, "smoke": True,
        "pruner": "median", "trial_epochs": None, "trial_rows": None,
    }  # fmt: skip
    for label in ("DNN", "MMoE"):
        m = res["models"][label]
        assert m["trials"] == {"complete": 2, "pruned": 0, "failed": 0}
        done = trials(folder, label)
        assert m["best_value"] == min(t.value for t in done)
    tuned = load_recipe(folder / "tuned.yaml")  # a valid recipe
    assert tuned.name == "tn-smoke-tuned" and tuned.out == f"{tmp_path / 'run-smoke'}-tuned"
    assert not tuned.search and not any(m.search for m in tuned.models)
    best = res["models"]["DNN"]["best_params"]
    assert tuned.models[0].params["hidden"] == best["params.hidden"]
    assert tuned.models[0].params["dropout"] == best["params.dropout"]
    assert (
        tuned.models[1].params["expert_hidden"]
        == res["models"]["MMoE"]["best_params"]["params.expert_hidden"]
    )
    assert tuned.models[1].params["tower_hidden"] == [8]  # untuned params kept
    code, out, err = run_main(capsys, "train", str(folder / "tuned.yaml"), "--no-eval")
    assert code == 0, err
    assert "trained DNN seed 3" in out and "trained MMoE seed 3" in out


def test_tuning_never_opens_the_test_split(capsys, tmp_path, data_dir):
    """A copy of the dataset whose test.parquet is garbage: any read of it fails. Tuning
    works on it; train, which scores test, fails on it."""
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    tests = sorted(data.rglob("test*.parquet"))
    assert tests
    for t in tests:
        t.write_bytes(b"not a parquet file")
    root = tmp_path / "r"
    root.mkdir()
    recipe = write_recipe(root, data)
    code, out, err = run_main(capsys, "tune", str(recipe), "--smoke", "--model", "DNN")
    assert code == 0, err
    assert (root / "run-smoke-tune" / "tuned.yaml").is_file()
    code, out, err = run_main(capsys, "train", str(recipe), "--smoke", "--no-eval")
    assert code == 1 and "test" in err and len(err.strip().splitlines()) == 1, err


def test_grid_tries_exactly_the_space_once(capsys, tmp_path, data_dir):
    """Grid: every point of the space once, a point a killed tune left RUNNING included
    (the grid sampler alone would count it visited), and nothing more on a rerun."""
    recipe = write_recipe(tmp_path, data_dir)
    args = ["tune", str(recipe), "--sampler", "grid", "--model", "DNN", "--set", "search={}"]
    code, out, err = run_main(capsys, *args, "--trials", "2")
    assert code == 0, err
    db = f"sqlite:///{tmp_path / 'run-tune' / 'tune.db'}"
    grid = {"params.hidden.depth": [1, 2], "params.hidden.width": [8, 16]}
    study = optuna.load_study(
        study_name="DNN", storage=db, sampler=optuna.samplers.GridSampler(grid, seed=0)
    )
    space = parse_space({"params.hidden": {"layers": {"depth": [1, 2], "width": [8, 16]}}}, "s")
    killed = study.ask()  # as a tune killed in its third trial leaves it: RUNNING
    space["params.hidden"].suggest(killed)
    study.ask()  # and one killed before its values were drawn: its grid point only
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    assert "trial 2 of DNN was left running" in out
    assert "trial 3 of DNN was left running" in out
    done = trials(tmp_path / "run-tune", "DNN")
    names = ("params.hidden.depth", "params.hidden.width")
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
    points = sorted(tuple(t.params[n] for n in names) for t in complete)
    assert points == [(1, 8), (1, 16), (2, 8), (2, 16)]
    assert [t.state.name for t in done].count("FAIL") == 2 and len(done) == 6
    code, out, err = run_main(capsys, *args)  # the grid is done: nothing is trained again
    assert code == 0, err
    assert "kept DNN: 4 trial(s) ended earlier" in out and "trial 6 of DNN" not in out
    assert len(trials(tmp_path / "run-tune", "DNN")) == 6


@pytest.mark.slow
def test_a_killed_tune_resumes_its_study(capsys, tmp_path, data_dir):
    """SIGKILL in the middle of a trial's epoch (the training loop's test hook): the rerun keeps the
    finished trials, marks the one left RUNNING failed and tries its point again, and goes on
    to the budget; a changed space is then refused in one line."""
    recipe = write_recipe(tmp_path, data_dir)
    args = ["tune", str(recipe), "--model", "DNN", "--smoke"]
    code, out, err = run_main(capsys, *args, "--trials", "2")
    assert code == 0, err
    folder = tmp_path / "run-smoke-tune"
    first = [(t.number, t.params, t.value) for t in trials(folder, "DNN")]
    env = {**os.environ, "MSCTR_TEST_SIGNAL_AT": "KILL:DNN:3:1:2", "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(
        [sys.executable, HOOKS, *args, "--trials", "4"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    left = trials(folder, "DNN")
    assert [t.state.name for t in left] == ["COMPLETE", "COMPLETE", "RUNNING"]
    stale = left[2]
    code, out, err = run_main(capsys, *args, "--trials", "4")
    assert code == 0, err
    assert "trial 2 of DNN was left running by a tune that stopped" in out
    after = trials(folder, "DNN")
    assert [(t.number, t.params, t.value) for t in after[:2]] == first  # not redone
    assert after[2].state.name == "FAIL"
    assert after[3].params == stale.params  # its point, tried again
    assert [t.state.name for t in after[3:]] == ["COMPLETE", "COMPLETE"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # its trial folder
    res = json.loads((folder / "results.json").read_text())
    assert res["models"]["DNN"]["trials"] == {"complete": 4, "pruned": 0, "failed": 1}
    # another space is another study: refused, not mixed in
    line = one_line_error(capsys, "changed since the study of DNN", *args, "--set", "search={}")
    assert "--fresh" in line
    code, out, err = run_main(capsys, *args, "--set", "search={}", "--fresh")
    assert code == 0, err
    assert len(trials(folder, "DNN")) == 2


@pytest.mark.slow
def test_a_diverging_trial_fails_and_the_search_goes_on(capsys, tmp_path, data_dir):
    """A loss that becomes NaN/inf is a trial's outcome (failed, "diverged"), not the end of
    the tune; it counts toward the budget, so a rerun does not try it again."""
    recipe = write_recipe(tmp_path, data_dir)
    args = [
        "tune", str(recipe), "--sampler", "grid", "--smoke",
        "--set", "models=[{name: dnn, label: DNN, params: {hidden: [8]}}]",
        "--set", "search={train.lr: {choice: [1.0e+38, 0.001]}}",
    ]  # fmt: skip
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    assert "train.lr=1e+38 diverged (loss NaN/inf); recorded as failed" in out
    assert "fail: diverged" in out and "best DNN: trial" in out
    folder = tmp_path / "run-smoke-tune"
    res = json.loads((folder / "results.json").read_text())
    assert res["models"]["DNN"]["trials"] == {"complete": 1, "pruned": 0, "failed": 1}
    assert load_recipe(folder / "tuned.yaml").train.lr == 0.001
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    assert "kept DNN: 2 trial(s) ended earlier" in out


def scripted_fit(monkeypatch, loglosses: list[float]) -> list[Path]:
    """`fit_one` replaced by one that reports, at every epoch of call i, the validation
    logloss `loglosses[i]` (0.5 past the list) through tune's per-epoch callback, as the
    training loop does; returns the trial folders it was given. Pruning without training."""
    folders: list[Path] = []

    def fit_one(recipe, entry, seed, data, run_dir, progress=None, on_epoch=None, **tracking):
        value = loglosses[len(folders)] if len(folders) < len(loglosses) else 0.5
        folders.append(Path(run_dir))
        for epoch in range(1, recipe.train.epochs + 1):
            assert Path(run_dir).is_dir()
            on_epoch(epoch, {"auc": 0.6, "logloss": value})
        return {"model": entry.key, "seed": seed, "best_epoch": 1, "epochs": recipe.train.epochs,
                "val_auc": 0.6, "val_logloss": value, "train_seconds": 0.0}  # fmt: skip

    monkeypatch.setattr("msctr.tune.fit_one", fit_one)
    return folders


# 7 dropout values: the grid has 7 points, as many as the tpe runs below
SEVEN = ["--set", "models.0.search={}", "--set", "search={params.dropout: {choice: "
         "[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}}", "--set", "train.epochs=3"]  # fmt: skip


@pytest.mark.parametrize(
    "sampler",
    [
        pytest.param(["--sampler", "tpe"], marks=pytest.mark.slow),  # three tunes, ~4 s
        ["--sampler", "grid", "--pruner", "median"],
    ],
)
def test_a_lagging_trial_is_pruned_and_counts(capsys, monkeypatch, tmp_path, data_dir, sampler):
    """The median pruner (tpe's default) stops the sixth trial, whose validation logloss at
    epoch 1 is far above the median of the five before it: PRUNED in tune.db, the table and
    results.json, its folder gone, counted toward the budget, so a rerun adds nothing and a
    grid does not try its point again."""
    folders = scripted_fit(monkeypatch, [0.5] * 5 + [2.0])
    args = ["tune", str(write_recipe(tmp_path, data_dir)), "--model", "DNN", *sampler, *SEVEN]
    code, out, err = run_main(capsys, *args, "--trials", "7")
    assert code == 0, err
    assert "budget per model: 7 trial(s)" in out and "pruner median" in out
    assert "params.dropout=" in out and "pruned, val logloss 2.0000 after epoch 1" in out
    assert "pruned after epoch 1" in out  # the table's state
    folder = tmp_path / "run-tune"
    done = trials(folder, "DNN")
    assert [t.state.name for t in done] == ["COMPLETE"] * 5 + ["PRUNED", "COMPLETE"]
    assert done[5].intermediate_values == {1: 2.0} and done[4].intermediate_values == {
        1: 0.5, 2: 0.5, 3: 0.5
    }  # fmt: skip
    if "grid" in sampler:  # every point once, the pruned one included
        assert len({t.params["params.dropout"] for t in done}) == 7
    assert len(folders) == 7 and not any(f.exists() for f in folders)
    assert sorted(p.name for p in folder.iterdir()) == [
        ".claim",
        ".lock",
        "history_DNN.png",  # no importance figure: every finished trial has the same value
        "results.json",
        "tune.db",
        "tuned.yaml",
    ]
    res = json.loads((folder / "results.json").read_text())
    assert res["models"]["DNN"]["trials"] == {"complete": 6, "pruned": 1, "failed": 0}
    assert res["budget"]["pruner"] == "median"
    code, out, err = run_main(capsys, *args, "--trials", "7")  # resumed: pruned counted
    assert code == 0, err
    assert "kept DNN: 7 trial(s) ended earlier" in out and len(folders) == 7
    if "tpe" in sampler:  # continued past a pruned trial
        code, out, err = run_main(capsys, *args, "--trials", "8")
        assert code == 0, err
        assert [t.state.name for t in trials(folder, "DNN")][5:] == ["PRUNED"] + ["COMPLETE"] * 2


@pytest.mark.parametrize("sampler", [["--pruner", "none"], ["--sampler", "grid"]])
def test_no_pruner_never_prunes(capsys, monkeypatch, tmp_path, data_dir, sampler):
    """--pruner none, and grid's default (a grid wants every point's full value)."""
    scripted_fit(monkeypatch, [0.5] * 5 + [2.0])
    args = ["tune", str(write_recipe(tmp_path, data_dir)), "--model", "DNN", *sampler, *SEVEN]
    code, out, err = run_main(capsys, *args, "--trials", "7")
    assert code == 0, err
    assert "pruner none" in out and "pruned" not in out
    done = trials(tmp_path / "run-tune", "DNN")
    assert [t.state.name for t in done] == ["COMPLETE"] * 7
    assert done[5].value == 2.0


def test_trial_caps_reach_the_trials_and_bind_the_study(capsys, monkeypatch, tmp_path, data_dir):
    """--trial-epochs and --trial-rows on the real training loop: each trial trains 1 epoch (of the
    recipe's 2) on the first 300 train rows (recorded by the training loop's batch hook) and reports
    that epoch to the pruner; tuned.yaml keeps the recipe's epochs; another cap on a rerun is
    refused in one line."""
    shards = tmp_path / "shards"
    shards.mkdir()
    install(monkeypatch.setattr, shards=shards)
    recipe = write_recipe(tmp_path, data_dir)
    args = ["tune", str(recipe), "--model", "DNN", "--trials", "2", "--trial-epochs", "1"]
    code, out, err = run_main(capsys, *args, "--trial-rows", "300")
    assert code == 0, err
    assert "each trial: at most 1 epoch(s) on the first 300 train rows" in out
    folder = tmp_path / "run-tune"
    done = trials(folder, "DNN")
    assert [t.state.name for t in done] == ["COMPLETE"] * 2
    for t in done:
        assert t.user_attrs["epochs"] == 1
        assert t.intermediate_values == {1: t.user_attrs["val_logloss"]} == {1: t.value}
    steps = [json.loads(line) for line in (shards / "part_0_of_1.jsonl").read_text().splitlines()]
    assert {s["epoch"] for s in steps} == {0} and len(steps) == 4  # 2 trials x 2 batches of 256
    rows = [r for s in steps for r in s["rows"]]
    assert sorted(set(rows)) == list(range(300)) and len(rows) == 600
    res = json.loads((folder / "results.json").read_text())
    assert res["budget"]["trial_epochs"] == 1 and res["budget"]["trial_rows"] == 300
    assert load_recipe(folder / "tuned.yaml").train.epochs == 2
    line = one_line_error(capsys, "--trial-rows changed since the study of DNN", *args)
    assert "(300 there, null now)" in line and "--fresh" in line
    line = one_line_error(capsys, "(1 there, 2 now)", *args[:-1], "2", "--trial-rows", "300")
    assert line.startswith("error: --trial-epochs changed")
    assert sorted(p.name for p in folder.iterdir()) == [
        ".claim",
        ".lock",
        "history_DNN.png",
        "importance_DNN.png",
        "results.json",
        "tune.db",
        "tuned.yaml",
    ]


@pytest.mark.slow
def test_jobs_share_the_studies_and_start_exactly_the_budget(capsys, tmp_path, data_dir):
    """--jobs 2: two worker processes on the same studies. The grid's every point is tried
    once between them (none twice, none missed) and a TPE budget of 3 gives 3 trials, not 4:
    a trial is taken under the folder's claim lock after counting the others' trials."""
    recipe = write_recipe(tmp_path, data_dir)
    grid = ["tune", str(recipe), "--sampler", "grid", "--set", "search={}", "--jobs", "2"]
    code, out, err = run_main(capsys, *grid)
    assert code == 0, err
    names = ("params.hidden.depth", "params.hidden.width")
    for label, key in (("DNN", "params.hidden"), ("MMoE", "params.expert_hidden")):
        done = trials(tmp_path / "run-tune", label)
        assert [t.state.name for t in done] == ["COMPLETE"] * 4, label
        names = (f"{key}.depth", f"{key}.width")
        points = sorted(tuple(t.params[n] for n in names) for t in done)
        assert points == [(1, 8), (1, 16), (2, 8), (2, 16)], label
    assert "best DNN: trial" in out and "best MMoE: trial" in out
    tpe = ["tune", str(recipe), "--model", "DNN", "--trials", "3", "--jobs", "2"]
    code, out, err = run_main(capsys, *tpe, "--set", "out=" + str(tmp_path / "tpe"))
    assert code == 0, err
    assert len(trials(tmp_path / "tpe-tune", "DNN")) == 3


@pytest.mark.slow
def test_ctrl_c_stops_every_job_and_the_rerun_finishes(tmp_path):
    """SIGINT to the tune alone (not its workers, which run in sessions of their own): it
    hands the signal on, the workers stop at a step boundary, their trials are recorded
    failed and enqueued again; exit 130 with the resume line, and the rerun ends the grid."""
    data = tmp_path / "big"  # trials of seconds, so both workers are in one when it comes
    invoke("prepare", "synthetic", "--out", str(data), "--rows", "40000", "--seed", "1")
    recipe = write_recipe(tmp_path, data)
    args = ["tune", str(recipe), "--sampler", "grid", "--model", "DNN", "--set", "search={}"]
    args += ["--jobs", "2", "--set", "train.max_steps_per_epoch=null"]
    args += ["--set", "train.epochs=6", "--set", "train.early_stopping.patience=6"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "msctr", *args], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    db = tmp_path / "run-tune" / "tune.db"
    while proc.poll() is None:  # both workers in a trial
        if db.exists() and _states(db).count("RUNNING") == 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the tune ended before both workers were in a trial"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted (SIGINT)" in err and "Traceback" not in err
    states = _states(db)
    assert "RUNNING" not in states and states.count("FAIL") == 2
    code = subprocess.run([sys.executable, "-m", "msctr", *args], env=env, timeout=600,
                          capture_output=True, text=True)  # fmt: skip
    assert code.returncode == 0, code.stderr
    done = trials(tmp_path / "run-tune", "DNN")
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
    names = ("params.hidden.depth", "params.hidden.width")
    assert sorted(tuple(t.params[n] for n in names) for t in complete) == [
        (1, 8), (1, 16), (2, 8), (2, 16)
    ]  # fmt: skip


def _states(db: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as c:
        try:
            return [s for (s,) in c.execute("select state from trials")]
        except sqlite3.OperationalError:  # the tables are not there yet
            return []


@pytest.mark.slow
def test_tuned_report_says_which_budget_each_model_got(capsys, tmp_path, data_dir):
    """`--model` tunes one model at a time into one folder; tuned.yaml keeps every model tuned
    there, and report.md of `msctr train tuned.yaml` has a Tuning section with each model's
    trials, naming a model that was not tuned. The figures are written beside the study."""
    recipe = write_recipe(tmp_path, data_dir)
    args = ["tune", str(recipe), "--smoke"]
    code, out, err = run_main(capsys, *args, "--model", "DNN")
    assert code == 0, err
    folder = tmp_path / "run-smoke-tune"
    assert (folder / "history_DNN.png").stat().st_size > 0
    assert (folder / "importance_DNN.png").stat().st_size > 0
    tuned = load_recipe(folder / "tuned.yaml")
    assert list(tuned.tuning.models) == ["DNN"] and tuned.tuning.sampler == "tpe"
    code, out, err = run_main(capsys, "train", str(folder / "tuned.yaml"))
    assert code == 0, err
    report = (Path(f"{tmp_path / 'run-smoke'}-tuned") / "report.md").read_text()
    assert "## Tuning" in report and "tpe sampler, pruner median" in report
    assert "| DNN | params.dropout, params.hidden | 2 | 2 | 0 | 0 |" in report
    assert "**Not tuned** (trained with the params as written): MMoE." in report
    code, out, err = run_main(capsys, *args, "--model", "MMoE")
    assert code == 0, err
    tuned = load_recipe(folder / "tuned.yaml")
    assert sorted(tuned.tuning.models) == ["DNN", "MMoE"]  # DNN's best is kept
    res = json.loads((folder / "results.json").read_text())
    assert tuned.models[0].params["hidden"] == res["models"]["DNN"]["best_params"]["params.hidden"]
    code, out, err = run_main(capsys, "train", str(folder / "tuned.yaml"), "--fresh")
    assert code == 0, err
    report = (Path(f"{tmp_path / 'run-smoke'}-tuned") / "report.md").read_text()
    assert "| MMoE | params.dropout, params.expert_hidden | 2 |" in report
    assert "Not tuned" not in report


def test_trials_reach_the_trackers_each_as_its_own_run(capsys, tmp_path, data_dir):
    """train.log in a tuned recipe: every trial's epochs go to the tune folder's TensorBoard
    store as a run of its own, <label>/trial_<n> (its checkpoints' folder is scratch)."""
    pytest.importorskip("tensorboard")
    recipe = write_recipe(tmp_path, data_dir)
    args = ["tune", str(recipe), "--smoke", "--model", "DNN", "--set", "train.log=[tensorboard]"]
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    runs = tmp_path / "run-smoke-tune" / "tensorboard" / "DNN"
    assert sorted(p.name for p in runs.iterdir()) == ["trial_0", "trial_1"]
    for trial in runs.iterdir():
        assert any(p.name.startswith("events.out.tfevents") for p in trial.iterdir())

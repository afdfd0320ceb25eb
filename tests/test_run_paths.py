"""Where msctr writes and what it deletes (docs/errors.md, "What each command may write and
delete"): through the real entry point, one test per class of the promise.

- `--fresh` removes only what msctr wrote, by name; a user's copies, notes, images stay;
- a run folder is never the current folder, `..`, home, the data, a file, or a folder of
  the user's files;
- an `--out FILE` is replaced only when msctr wrote it;
- model labels that collide or leave the run folder are refused before anything is written;
- a dataset prepared again under a streamed run stops it; eval and train name changed data
  as changed data, not as "mixed recipes".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import one_line_error, run_main

from msctr.data.prepare import prepare
from msctr.data.sources.synthetic import generate

RECIPE = """
name: paths
data: {data}
out: {out}
models:
  - {{name: dnn, label: DNN, params: {{hidden: [8]}}}}
train: {{batch_size: 512, epochs: 1, max_steps_per_epoch: 2, eval_rows: 400}}
"""


def write_recipe(tmp_path: Path, data: Path, out: Path | str, text: str = RECIPE) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text.format(data=data, out=out))
    return path


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


# -- 1. --fresh removes what msctr wrote, by name ---------------------------------------------


def test_fresh_keeps_the_users_files(capsys, tmp_path, data_dir):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path, data_dir, run)
    assert run_main(capsys, "train", str(recipe))[0] == 0
    mine = {
        "DNN_backup": None,  # the user's copy of a model folder, a seed run in it
        "DNN_backup/seed_0": None,
        "DNN_backup/seed_0/run.json": (run / "DNN/seed_0/run.json").read_bytes(),
        "DNN_backup/seed_0/fingerprint.json": (run / "DNN/seed_0/fingerprint.json").read_bytes(),
        "plot.png": b"my figure",
        "head_weights_DNN_old.png": b"an earlier figure, renamed",  # msctr's prefix, not its name
        "DNN/seed_0/loss.png": b"my figure, in a run's folder",
        "bench.json": b'{"mine": true}',  # not a benchmark msctr wrote
        "notes.txt": b"keep me",
        "DNN/notes.txt": b"mine, in a model folder",
        "DNN/seed_0_old": None,
        "DNN/seed_0_old/run.json": b"{}",
    }
    for name, content in mine.items():
        if content is None:
            (run / name).mkdir()
        else:
            (run / name).write_bytes(content)
    old_report = (run / "report.md").read_text()

    code, out, err = run_main(capsys, "train", str(recipe), "--fresh", "--no-eval")
    assert code == 0, err
    assert "trained DNN seed 0" in out and "kept" not in out  # retrained, not taken as done
    now = snapshot(run)
    assert {k: now.get(k, "gone") for k in mine} == mine
    assert not (run / "report.md").exists() and not (run / "results.json").exists()
    assert old_report and (run / "DNN" / "seed_0" / "run.json").is_file()
    # the copy is no model of the recipe: never checked, renamed or trained into
    assert json.loads((run / ".msctr-run.json").read_text())["models"] == ["DNN"]


# -- 2. a run folder is a folder of its own ----------------------------------------------------


@pytest.mark.parametrize(
    "out, needle",
    [
        (".", "is the current folder"),
        ("..", "contains the current folder"),
        ("HOME", "is your home folder"),
        ("DATA", "is the input"),
        ("user", "holds files msctr did not write (e.g. 'thesis.txt')"),
        ("a_file", "is a file"),
        ("a_file/run", "is a file, not a folder"),
    ],
)
def test_run_folder_is_refused(capsys, monkeypatch, tmp_path, data_dir, out, needle):
    work = tmp_path / "work"
    work.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    (work / "user").mkdir()
    (work / "user" / "thesis.txt").write_text("years of work")
    (work / "a_file").write_text("a file")
    (home / "photo.png").write_bytes(b"png")
    out = {"HOME": str(home), "DATA": str(data_dir)}.get(out, out)
    recipe = write_recipe(tmp_path, data_dir, out)
    before = snapshot(tmp_path), snapshot(data_dir)
    line = one_line_error(capsys, needle, "train", str(recipe))
    assert "--set out=" in line
    assert (snapshot(tmp_path), snapshot(data_dir)) == before
    # --fresh changes nothing of that rule
    one_line_error(capsys, needle, "train", str(recipe), "--fresh")
    assert (snapshot(tmp_path), snapshot(data_dir)) == before


def test_recipe_name_dotdot_is_the_current_folder(capsys, monkeypatch, tmp_path, data_dir):
    monkeypatch.chdir(tmp_path)
    text = RECIPE.replace("name: paths", 'name: ".."').replace("out: {out}\n", "")
    recipe = write_recipe(tmp_path, data_dir, "", text)
    before = snapshot(tmp_path)
    # refused as the current folder (or, where recipe names are checked, as a name)
    one_line_error(capsys, "..'", "train", str(recipe))
    assert snapshot(tmp_path) == before


# -- 3. --out FILE is replaced only when msctr wrote it ----------------------------------------

BENCH = ["--batch-sizes", "4", "--repeats", "1", "--min-time", "0", "--rows", "64"]


def test_bench_out_replaces_only_its_own_file(capsys, tmp_path, data_dir):
    recipe = write_recipe(tmp_path, data_dir, tmp_path / "run")
    table = tmp_path / "clicks.csv"
    table.write_text("click,tab\n1,a\n")
    line = one_line_error(capsys, "is not a bench.json msctr wrote", "bench-inference",
                          str(recipe), *BENCH, "--out", str(table))  # fmt: skip
    assert "remove that file yourself" in line and table.read_text() == "click,tab\n1,a\n"
    one_line_error(capsys, "is a folder, and --out names a file", "bench-inference",
                   str(recipe), *BENCH, "--out", str(tmp_path))  # fmt: skip
    one_line_error(capsys, "is a file, not a folder", "bench-inference",
                   str(recipe), *BENCH, "--out", str(table / "bench.json"))  # fmt: skip
    one_line_error(capsys, "is the input", "bench-inference",
                   str(recipe), *BENCH, "--out", str(data_dir))  # fmt: skip
    # the default place: a run folder's bench.json that msctr did not write
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".msctr-run.json").write_text('{"models": []}')  # a run folder
    (tmp_path / "run" / "bench.json").write_text("my notes")
    one_line_error(capsys, "is not a bench.json msctr wrote", "bench-inference", str(recipe),
                   *BENCH)  # fmt: skip
    assert (tmp_path / "run" / "bench.json").read_text() == "my notes"
    # a bench.json msctr wrote is replaced, as rerunning a benchmark should
    out = tmp_path / "b" / "bench.json"
    for _ in range(2):
        code, _, err = run_main(capsys, "bench-inference", str(recipe), *BENCH, "--out", str(out))
        assert code == 0, err
    assert json.loads(out.read_text())["recipe"] == "paths"


# -- 4. model labels that collide or leave the run folder -------------------------------------


@pytest.mark.parametrize(
    "labels, needle",
    [
        (["My Model", "My_Model"], "both become the folder 'My_Model'"),
        (["A/B", "A_B"], "both become the folder 'A_B'"),
        (["dnn", "DNN"], "both become the folder"),
        (["."], "would be the folder '.'"),
        ([".."], "would be the folder '..'"),
        (["recipe.yaml"], "would be the folder 'recipe.yaml'"),
    ],
)
def test_colliding_labels_are_refused(capsys, tmp_path, data_dir, labels, needle):
    models = "\n".join(f"  - {{{{name: dnn, label: {json.dumps(k)}}}}}" for k in labels)
    text = RECIPE.split("models:")[0] + "models:\n" + models + "\ntrain: {{epochs: 1}}\n"
    recipe = write_recipe(tmp_path, data_dir, tmp_path / "run", text)
    one_line_error(capsys, needle, "train", str(recipe))
    one_line_error(capsys, needle, "train", str(recipe), "--fresh")
    assert not (tmp_path / "run").exists()


def test_sweeping_a_label_is_refused(capsys, monkeypatch, tmp_path, data_dir):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path, data_dir, tmp_path / "run")
    before = snapshot(tmp_path)
    one_line_error(capsys, "a label names the model's folder", "sweep", str(recipe),
                   "--vary", "models.DNN.label=..,x")  # fmt: skip
    assert snapshot(tmp_path) == before


def test_a_users_folder_under_a_new_label_is_refused(capsys, tmp_path, data_dir):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path, data_dir, run)
    assert run_main(capsys, "train", str(recipe), "--no-eval")[0] == 0
    # the user's copy of DNN, under the name a new model's label gives
    shutil.copytree(run / "DNN", run / "Copy")
    before = snapshot(run / "Copy")
    more = "[{name: dnn, label: DNN, params: {hidden: [8]}}, {name: dnn, label: Copy}]"
    one_line_error(capsys, "msctr did not make it there", "train", str(recipe), "--no-eval",
                   "--set", f"models={more}")  # fmt: skip
    assert snapshot(run / "Copy") == before


# -- 5. the data changed -----------------------------------------------------------------------


def test_data_prepared_again_under_a_streamed_run(capsys, monkeypatch, tmp_path):
    data = tmp_path / "data"
    prepare(generate(rows=3000, scenarios=5, seed=1), data, seed=1)
    text = RECIPE.replace("epochs: 1", "epochs: 3, loader: stream, shuffle_buffer: 1000")
    recipe = write_recipe(tmp_path, data, tmp_path / "run", text)
    import msctr.train.loop as loop

    train_epoch = loop.train_epoch

    def and_prepare_again(*args, **kwargs):  # the user re-prepares while epoch 1 trains
        out = train_epoch(*args, **kwargs)
        prepare(generate(rows=3000, scenarios=5, seed=2), data, seed=2)
        return out

    monkeypatch.setattr(loop, "train_epoch", and_prepare_again)
    line = one_line_error(capsys, "changed while training read it", "train", str(recipe))
    assert "in epoch 1 of DNN seed 0" in line and "--fresh" in line
    seed_run = tmp_path / "run" / "DNN" / "seed_0"
    assert (seed_run / "log.jsonl").read_text() == ""  # the epoch on mixed data is not kept
    assert not (seed_run / "last.pt").exists() and not (seed_run / "best.pt").exists()
    monkeypatch.setattr(loop, "train_epoch", train_epoch)
    # the next train names the data, not a mix of recipes
    line = one_line_error(capsys, "is not the one", "train", str(recipe))
    assert f"the dataset '{data}'" in line and "prepared again" in line


def test_eval_on_other_data_says_so(capsys, tmp_path, data_dir):
    recipe = write_recipe(tmp_path, data_dir, tmp_path / "run")
    assert run_main(capsys, "train", str(recipe), "--no-eval")[0] == 0
    other = tmp_path / "other"
    prepare(generate(rows=3000, scenarios=5, seed=4), other, seed=4)
    before = snapshot(tmp_path / "run")
    line = one_line_error(capsys, "was trained on other data", "eval", str(tmp_path / "run"),
                          "--data", str(other))  # fmt: skip
    assert "--data points at another one" in line
    assert "mixes recipes" not in line and "--fresh" not in line
    assert snapshot(tmp_path / "run") == before

"""Values msctr used to trust unchecked, and causes that ended in a traceback: each is one
`error:` line, exit 1, nothing written (docs/errors.md). Through the real entry point."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import invoke, one_line_error, run_main

from msctr.evaluate.figures import auc_axis

RECIPE = """
name: tv
data: {data}
out: {out}
models:
  - {{name: dnn, label: DNN, params: {{hidden: [16]}}}}
train: {{batch_size: 512, epochs: 1, seeds: [0]}}
"""
HUGE = "100000000000"  # 1e11


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "syn"
    invoke("prepare", "synthetic", "--out", str(out), "--rows", "4000", "--seed", "3")
    return out


@pytest.fixture
def recipe(tmp_path, data_dir) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(data=data_dir, out=tmp_path / "run"))
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("table") / "t.parquet"
    n = 200
    pl.DataFrame(
        {
            "click": [i % 2 for i in range(n)],
            "tab": ["a", "b"] * (n // 2),
            "user": [f"u{i % 7}" for i in range(n)],
            "tags": [[i % 3, 1] for i in range(n)],
        }
    ).write_parquet(path)
    return path


# -- the command line: usage errors and user text printed literally ---------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["prepare", "synthetic", "--rows", "abc"], "'--rows'"),
        (["prepare", "table"], "Missing argument"),
        (["prepare", "synthetic", "--bogus"], "No such option: --bogus"),
        (["train", "r.yaml", "--nproc", "x"], "'--nproc'"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_usage_errors_are_one_line_exit_1(capsys, args, needle):
    line = one_line_error(capsys, needle, *args)
    assert line.endswith("--help")  # names where to read the fix


def test_help_still_exits_0(capsys):
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0 and "Usage" in out


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("--sparse", "[user]", "missing column(s) [user];"),
        ("--label", "[bold]click", "missing column(s) [bold]click;"),
        ("--label", "[/x]", "missing column(s) [/x];"),
    ],
)
def test_user_text_is_printed_literally(capsys, tmp_path, table, option, value, needle):
    args = {"--label": "click", "--scenario": "tab", "--sparse": "user", option: value}
    flat = [x for kv in args.items() for x in kv]
    one_line_error(
        capsys, needle, "prepare", "table", str(table), *flat, "--out", str(tmp_path / "o")
    )


# -- prepare -----------------------------------------------------------------------------------


def test_negative_seed_is_a_bad_option(capsys, tmp_path, table):
    args = ["--label", "click", "--scenario", "tab", "--sparse", "user", "--split", "random"]
    out = tmp_path / "o"
    one_line_error(
        capsys, "'--seed'", "prepare", "table", str(table), *args, "--seed", "-1", "--out", str(out)
    )
    assert not out.exists()


@pytest.mark.parametrize("role", ["--sparse", "--dense", "--scenario"])
def test_a_list_column_cannot_take_a_one_value_role(capsys, tmp_path, table, role):
    args = {"--label": "click", "--scenario": "tab", "--sparse": "user", role: "tags"}
    flat = [x for kv in args.items() for x in kv]
    out = tmp_path / "o"
    one_line_error(
        capsys, "column 'tags' holds List", "prepare", "table", str(table), *flat, "--out", str(out)
    )
    assert not out.exists()


def test_synthetic_rows_beyond_memory(capsys, tmp_path):
    out = tmp_path / "o"
    one_line_error(
        capsys,
        f"--rows {HUGE} needs at least",
        "prepare",
        "synthetic",
        "--rows",
        HUGE,
        "--out",
        str(out),
    )
    assert not out.exists()


# -- recipes -----------------------------------------------------------------------------------


def test_recipe_not_utf8(capsys, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: x\ndata: \xff\xfe\n")
    one_line_error(capsys, "is not UTF-8 text (byte 0xff at line 2)", "train", str(path))


def test_a_key_given_twice_is_refused(capsys, recipe, tmp_path):
    recipe.write_text(recipe.read_text() + "train: {epochs: 3}\n")
    one_line_error(capsys, "key 'train' is given twice (first at line 7)", "train", str(recipe))
    assert not (tmp_path / "run").exists()


def test_a_nested_key_given_twice_is_refused(capsys, recipe):
    recipe.write_text(recipe.read_text().replace("epochs: 1,", "epochs: 1, epochs: 5,"))
    one_line_error(capsys, "key 'epochs' is given twice", "train", str(recipe))


@pytest.mark.parametrize(
    "override, needle",
    [
        ("eval.significance=5", "significance is the p-value"),
        ("eval.significance=1", "must be in (0, 1)"),
        ("eval.significance=0", "must be in (0, 1)"),
        ("eval.significance=.nan", "significance must be a finite number"),
        ("eval.metrics=[auc,auc]", "metrics lists ['auc'] more than once"),
        ("train.lr=.nan", "lr must be a finite number, got nan"),
        ("train.weight_decay=.inf", "weight_decay must be a finite number, got inf"),
    ],
)
def test_train_and_eval_keys_are_range_checked(capsys, recipe, tmp_path, override, needle):
    one_line_error(capsys, needle, "train", str(recipe), "--set", override)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "model, key, value, needle",
    [
        ("hmdn", "gamma", ".nan", "gamma must be a finite number, got nan"),
        ("hmdn", "gamma", "0", "gamma must be > 0, got 0.0"),
        ("hmdn", "alpha", ".inf", "alpha must be a finite number, got inf"),
        ("hmdn", "beta", ".nan", "beta must be a finite number"),
        ("pepnet", "gamma", ".inf", "gamma must be a finite number"),
        ("aesm2", "gate_noise", ".nan", "gate_noise must be a finite number"),
        ("maria", "tau", ".inf", "tau must be a finite number"),
        ("sfpnet", "dap_eps", ".nan", "dap_eps must be a finite number"),
        ("star", "pn_eps", ".inf", "pn_eps must be a finite number"),
        ("adasparse", "alpha_max", ".inf", "alpha_max must be a finite number"),
        ("dnn", "dropout", ".nan", "dropout must be a finite number"),
    ],
)
def test_every_float_param_is_finite(capsys, recipe, tmp_path, model, key, value, needle):
    models = f"models=[{{name: {model}, params: {{{key}: {value}}}}}]"
    one_line_error(capsys, needle, "train", str(recipe), "--set", models)
    assert not (tmp_path / "run").exists()


def test_ablate_drop_naming_no_switch(capsys, recipe, tmp_path):
    one_line_error(
        capsys,
        "--drop '+' names no switch",
        "ablate",
        str(recipe),
        "--set",
        "models=[hmdn]",
        "--drop",
        "+",
    )
    assert not list(tmp_path.glob("run*"))


def test_one_class_test_rows_are_refused_before_training(capsys, recipe, tmp_path):
    one_line_error(
        capsys, "have only label 0, so no AUC", "train", str(recipe), "--set", "train.eval_rows=1"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_mps_without_mps_is_refused_before_the_run_folder(capsys, recipe, tmp_path):
    one_line_error(capsys, "no MPS", "train", str(recipe), "--set", "train.device=mps")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, needle",
    [
        (f"models.0.params.embed_dim={HUGE}", "parameters, trained with Adam) needs at least"),
        (f"models.0.params.hidden=[{HUGE}]", "lower embed_dim or the layer sizes"),
        ("train.threads=100000", "train.threads 100000 needs at least"),
    ],
)
def test_sizes_beyond_memory_are_refused_before_allocating(
    capsys, recipe, tmp_path, override, needle
):
    one_line_error(capsys, needle, "train", str(recipe), "--set", override)
    assert not (tmp_path / "run").exists()


# -- damaged prepared data -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, needle",
    [
        (
            lambda d: d["sparse"][0].update(vocab_size="21"),
            "sparse.0.vocab_size must be an integer",
        ),
        (lambda d: d["rows"].update(train="many"), "schema.rows.train must be an integer"),
        (lambda d: d.update(num_scenarios=2), "scenario_names for num_scenarios 2"),
        (lambda d: d["sparse"][0].update(vocab_size=0), "vocab_size must be at least 1"),
    ],
)
def test_hand_edited_schema_is_one_line(capsys, tmp_path, data_dir, edit, needle):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    schema = json.loads((data / "schema.json").read_text())
    edit(schema)
    (data / "schema.json").write_text(json.dumps(schema))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(data=data, out=tmp_path / "run"))
    line = one_line_error(capsys, needle, "train", str(recipe))
    assert "is not a valid msctr schema" in line and "re-run `msctr prepare`" in line


# -- bench-inference -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--min-time", "inf"], "--min-time must be a finite number of seconds"),
        (["--batch-sizes", HUGE], f"--batch-sizes {HUGE} needs at least"),
        (["--threads", "100000"], "--threads 100000 needs at least"),
    ],
)
def test_bench_options_beyond_reason(capsys, recipe, tmp_path, args, needle):
    one_line_error(
        capsys, needle, "bench-inference", str(recipe), "--out", str(tmp_path / "b.json"), *args
    )
    assert not (tmp_path / "b.json").exists()


# -- figures on results without a finite AUC -------------------------------------------------------


def test_auc_axis_uses_finite_values_and_none_without_any():
    assert auc_axis([math.nan, math.nan], [math.nan, math.nan], pad=0.3) is None
    lo, hi = auc_axis([0.70, math.nan, 0.72], [0.01, math.nan, 0.0], pad=0.0)
    assert (lo, hi) == pytest.approx((0.69, 0.72))

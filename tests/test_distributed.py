"""Data-parallel training (docs/distributed.md): `torchrun --nproc-per-node 2` on gloo trains
each run on disjoint, complete shares of the same batches as one process, rank 0 alone writes,
the test AUC matches the one-process run at the same global batch, and an interrupted
two-process run resumes on every rank to the very same predictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import invoke, one_line_error
from train_hooks import HOOKS, install

from msctr.data.loader import load_columns, share, stream_batches
from msctr.data.schema import Schema
from msctr.models.kernels import keep_mask
from msctr.train.distributed import Shares, part_bounds

ROOT = Path(__file__).resolve().parents[1]

# DNN: no BatchNorm, no dropout, so that one process and two differ by the order of float
# sums alone (the bar: 1e-3 test AUC). DNN-BN (BatchNorm over the global batch, dropout drawn
# per process) is trained alongside for the resume check. Tables row-sparse (LazyAdam), so the
# touched-row exchange of msctr.train.distributed.SparseRows is what keeps them in step.
RECIPE = """
name: ddp
data: {data}
out: {out}
models:
  - {{name: dnn, label: DNN, params: {{hidden: [16], dropout: 0.0, batch_norm: false}}}}
  - {{name: dnn, label: DNN-BN, params: {{hidden: [16]}}}}
train: {{batch_size: 256, epochs: 2, seeds: [0], threads: 1, sparse_embeddings: true}}
"""

# Loaded at start-up by every Python process that has this folder on PYTHONPATH: under
# torchrun each worker (RANK set) logs the paths under MSCTR_TEST_AUDIT_ROOT it opens for
# writing, renames onto, removes or creates (Python's audit events; polars' Parquet writer
# writes a temporary name that msctr.io then renames, which is seen).
AUDIT = """
import os, sys

_root = os.environ.get("MSCTR_TEST_AUDIT_ROOT")
_rank = os.environ.get("RANK")
if _root and _rank is not None:
    _log = os.path.join(os.environ["MSCTR_TEST_AUDIT_LOG"], f"rank{_rank}.txt")
    _write = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _hook(event, args):
        if event == "open":
            path, flags = args[0], args[2]
            if not (isinstance(flags, int) and flags & _write):
                return
        elif event in ("os.rename", "os.remove", "os.mkdir"):
            path = args[1] if event == "os.rename" else args[0]
        else:
            return
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(_root):
                with open(_log, "a") as fh:
                    fh.write(f"{event} {path}\\n")

    sys.addaudithook(_hook)
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "syn"
    invoke("prepare", "synthetic", "--out", str(out), "--rows", "4000", "--seed", "3")
    return out


def write_recipe(root: Path, data_dir: Path, out: str) -> Path:
    path = root / f"{out}.yaml"
    path.write_text(RECIPE.format(data=data_dir, out=root / out))
    return path


def torchrun(recipe: Path, tmp: Path, *args: str, env: dict | None = None):
    audit = tmp / "audit"
    audit.mkdir(exist_ok=True)
    (audit / "sitecustomize.py").write_text(AUDIT)
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join([str(audit), str(ROOT)])
    if "MSCTR_TEST_SIGNAL_AT" not in (env or {}):
        full.pop("MSCTR_TEST_SIGNAL_AT", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", "2", HOOKS, "train", str(recipe), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=full, cwd=ROOT)


def shard_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def probs(run: Path, label: str) -> np.ndarray:
    return pl.read_parquet(run / label / "seed_0" / "predictions.parquet")["prob"].to_numpy()


@pytest.fixture(scope="module")
def two(tmp_path_factory, data_dir) -> dict:
    """One process and two (torchrun, gloo) on the same recipe, each process recording the
    rows it trained on; the two-process workers audited for the files they write."""
    tmp = tmp_path_factory.mktemp("ddp")
    mp = pytest.MonkeyPatch()
    one_rows = tmp / "rows1"
    one_rows.mkdir()
    install(mp.setattr, shards=one_rows)
    try:
        invoke("train", str(write_recipe(tmp, data_dir, "one")))
    finally:
        mp.undo()
    two_rows, writes = tmp / "rows2", tmp / "writes"
    two_rows.mkdir()
    writes.mkdir()
    run = tmp / "two"
    env = {
        "MSCTR_TEST_SHARDS": str(two_rows),
        "MSCTR_TEST_AUDIT_ROOT": str(run),
        "MSCTR_TEST_AUDIT_LOG": str(writes),
    }
    proc = torchrun(write_recipe(tmp, data_dir, "two"), tmp, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        "tmp": tmp,
        "one": tmp / "one",
        "two": run,
        "proc": proc,
        "rows": (one_rows, two_rows),
        "writes": writes,
    }


@pytest.mark.slow
def test_torchrun_two_processes_match_one(two):
    one_rows, two_rows = two["rows"]
    # each rank's shares: disjoint, together each step's batch of one process, the same steps
    one = shard_log(one_rows / "part_0_of_1.jsonl")
    ranks = [shard_log(two_rows / f"part_{r}_of_2.jsonl") for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 2 * 2 * 13  # models x epochs x steps
    train_rows = 3200
    for epoch_start in range(0, len(one), 13):
        covered = []
        for i in range(epoch_start, epoch_start + 13):
            a, b = ranks[0][i], ranks[1][i]
            assert a["epoch"] == b["epoch"] == one[i]["epoch"]
            assert a["step"] == b["step"] == one[i]["step"]
            assert not set(a["rows"]) & set(b["rows"])
            assert abs(len(a["rows"]) - len(b["rows"])) <= 1
            assert sorted(a["rows"] + b["rows"]) == sorted(one[i]["rows"])
            covered += a["rows"] + b["rows"]
        assert sorted(covered) == list(range(train_rows))  # every row once per epoch
    # rank 0 alone wrote the run folder's files; rank 1 none
    writes = two["writes"]
    assert not (writes / "rank1.txt").exists(), (writes / "rank1.txt").read_text()[:2000]
    written = (writes / "rank0.txt").read_text()
    for name in ("best.pt", "last.pt", "predictions.parquet", "run.json", "log.jsonl"):
        assert f"/DNN/seed_0/{name}" in written, name
    out = two["proc"].stdout
    assert out.count("trained DNN seed 0") == 1 and out.count("runs in") == 1  # rank 0 speaks
    # the same test AUC as one process at the same global batch
    for label, bar in (("DNN", 1e-3),):
        a = json.loads((two["one"] / label / "seed_0" / "metrics.json").read_text())["auc"]
        b = json.loads((two["two"] / label / "seed_0" / "metrics.json").read_text())["auc"]
        assert abs(a - b) < bar, (label, a, b)
    for label in ("DNN", "DNN-BN"):
        log = shard_log(two["two"] / label / "seed_0" / "log.jsonl")
        ref = shard_log(two["one"] / label / "seed_0" / "log.jsonl")
        assert [x["samples"] for x in log] == [train_rows, train_rows]
        assert all(x["processes"] == 2 for x in log)
        # the first epoch's training loss: the same steps on the same rows, BatchNorm over the
        # global batch, each row's dropout mask as in one process; only float sums differ
        assert log[0]["train_loss"] == pytest.approx(ref[0]["train_loss"], rel=1e-5), label


@pytest.mark.slow
def test_an_interrupted_two_process_run_resumes_on_every_rank(capsys, two, data_dir):
    tmp = two["tmp"]
    recipe = write_recipe(tmp, data_dir, "again")
    # every rank gets SIGINT before step 3 of epoch 2 of DNN-BN, as a Ctrl-C would send it
    proc = torchrun(recipe, tmp, "--no-eval", env={"MSCTR_TEST_SIGNAL_AT": "INT:DNN-BN:0:2:3"})
    assert proc.returncode != 0
    assert proc.stderr.count("interrupted (SIGINT)") == 1, proc.stderr[-3000:]
    assert f"resume with: msctr train {recipe} --no-eval --nproc 2" in proc.stderr
    state = tmp / "again" / "DNN-BN" / "seed_0"
    assert (state / "last.pt").is_file()
    # the rank 1 dropout stream is in last.pt: one process cannot take it up
    one_line_error(capsys, "written by a run of 2 process(es)", "train", str(recipe))
    proc = torchrun(recipe, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed and trained DNN-BN seed 0" in proc.stdout
    for label in ("DNN", "DNN-BN"):
        assert np.array_equal(probs(tmp / "again", label), probs(two["two"], label)), label


@pytest.mark.parametrize("parts", [2, 3])
def test_shares_of_each_batch_are_disjoint_and_complete(data_dir, parts):
    schema = Schema.load(data_dir)
    cols = load_columns(data_dir, "train", schema)
    whole = list(cols.batch_rows(300, shuffle=True, seed=4, epoch=1))
    split = [list(cols.batch_rows(300, True, 4, 1, part=(r, parts))) for r in range(parts)]
    for step, rows in enumerate(whole):
        got = torch.cat([split[r][step] for r in range(parts)])
        assert torch.equal(got, rows)  # contiguous shares, in rank order: the batch itself
    # streamed: the same rows (each batch's shares, concatenated, are its rows)
    kw = dict(shuffle=True, seed=4, epoch=1, buffer_rows=700)
    full = list(stream_batches(data_dir, "train", schema, 300, **kw))
    shares = [
        list(stream_batches(data_dir, "train", schema, 300, part=(r, parts), **kw))
        for r in range(parts)
    ]
    assert all(len(s) == len(full) for s in shares)
    for step, batch in enumerate(full):
        for name in ("sparse", "dense", "label", "scenario"):
            got = torch.cat([getattr(shares[r][step], name) for r in range(parts)])
            assert torch.equal(got, getattr(batch, name)), (step, name)


def test_a_share_weights_its_loss_so_the_step_is_the_whole_batch_mean():
    # 1000 rows, batch 300: steps of 300, 300, 300, 100 rows; 3 processes
    for step, total in enumerate((300, 300, 300, 100)):
        got = [Shares(1000, 300, r, 3).at(step) for r in range(3)]
        assert sum(n for n, _ in got) == total
        # DDP averages the 3 gradients: weights n_r * 3 / total make it the batch mean's
        assert sum(wt for _, wt in got) / 3 == pytest.approx(1.0)
        assert all(wt == pytest.approx(3 * n / total) for n, wt in got)
    # a batch of 2 rows among 3 processes: the first has an empty share, so it trains on a
    # stand-in (the batch's first row) with weight 0
    assert [part_bounds(2, r, 3) for r in range(3)] == [(0, 0), (0, 1), (1, 2)]
    assert share(10, 12, (0, 3)) == (10, 11)
    assert Shares(2, 10, 0, 3).at(0) == (0, 0.0)


def test_a_shares_dropout_mask_is_those_rows_of_the_whole_batchs_mask():
    x = torch.zeros(1001, 3, 7)  # rows of 21 elements: shares start mid-way through a draw
    torch.manual_seed(5)
    whole = keep_mask(x, 0.3)
    for r in range(3):
        lo, hi = part_bounds(1001, r, 3)
        torch.manual_seed(5)
        assert torch.equal(keep_mask(x[lo:hi], 0.3, (lo, hi - lo, 1001)), whole[lo:hi])

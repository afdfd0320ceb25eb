"""The CPU side of the CUDA paths (issue 31): benchmarks/gpu_check.py, the GPU check, runs end
to end with `--device cpu --quick`; a missing GPU is one line everywhere a device is named;
device placement and autocast follow the device asked for. What needs a GPU runs in
gpu_check.py on one (docs/bench.md, "GPU")."""

import json
import math
import os
import subprocess
import sys
import warnings
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, invoke, make_batch, make_schema, one_line_error

from msctr.data.batch import Batch
from msctr.errors import UserError
from msctr.train.distributed import ALONE, World
from msctr.train.runtime import autocast, resolve_device

ROOT = Path(__file__).parents[1]
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.py"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")


def gpu_check(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    return subprocess.run(
        [sys.executable, str(GPU_CHECK), *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_gpu_check_runs_every_item_end_to_end_on_the_cpu(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = gpu_check("--device", "cpu", "--quick", "--out", str(out), "--work", str(work))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads((out / "gpu_check.json").read_text())
    assert set(rec["items"]) == {"1", "2", "3", "4"}
    steps = [s for item in rec["items"].values() for s in item["steps"]]
    assert steps and all(s["status"] == "ok" for s in steps), steps
    log = (out / "gpu_check.log").read_text()
    assert all(f"== item {n}" in log for n in (1, 2, 3, 4)) and "----- output of" in log

    # 1: the main job and each paper recipe on the device and on the CPU, side by side
    train = rec["items"]["1"]
    main = train["main"]["auc"]
    assert list(main) == ["DNN", "SharedBottom", "MMoE", "PLE", "STAR"]
    for row in main.values():
        assert 0 < row["auc_device"] < 1 and 0 < row["auc_cpu"] < 1 and row["seeds"] == 2
        assert row["diff"] == pytest.approx(row["auc_device"] - row["auc_cpu"])
        assert row["within_noise"] in (True, False) and row["samples_per_s_device"]
    for paper in train["papers"].values():
        assert paper["trained"] == paper["models"] and paper["models"]
        assert all(r["within_noise"] is None for r in paper["auc"].values())  # one seed
    assert set(train["papers"]) == {"kuairand/hierrec.yaml", "aliccp/hmdn.yaml"}

    # 2: bench-inference's whole-split time per model at the paper recipes' batch sizes
    bench = rec["items"]["2"]["bench"]
    table3 = bench["HierRec Table 3"]
    assert [m["model"] for m in table3["models"]][-1] == "HierRec"
    assert table3["config"]["batch_sizes"] == [1, 512, 2000, 4096]
    assert all(m["trained"] for m in bench["main recipe"]["models"])  # item 1's checkpoints

    # 3: two processes (gloo here) against one: the same files, AUC per model
    nproc = rec["items"]["3"]
    assert nproc["nproc"] == 2 and nproc["gpus"] == 0
    assert nproc["compare"]["same_files"] and set(nproc["compare"]["diff"]) == set(main)

    # 4: samples/s per model and precision, and the whole table projected from them
    proj = rec["items"]["4"]["projection"]
    assert set(proj["by_precision"]) == {"fp32", "bf16"} and proj["seeds"] == 10
    hierrec = proj["by_precision"]["fp32"]["HierRec"]
    assert hierrec["epoch_s"] == pytest.approx(proj["train_rows"] / hierrec["samples_per_s"])
    total = sum(m["table_h"] for m in proj["by_precision"]["fp32"].values())
    assert math.isfinite(total) and proj["total_h"]["fp32"] == pytest.approx(total)
    assert "summary (" in proc.stdout and "whole table" in proc.stdout


def test_gpu_check_skips_the_steps_of_an_item_whose_budget_is_spent(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = gpu_check(
        "--device", "cpu", "--quick", "--items", "3", "--budgets", "240,120,0,90",
        "--out", str(out), "--work", str(work), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped prepare synthetic: item 3's budget of 0 s is spent" in proc.stdout
    steps = json.loads((out / "gpu_check.json").read_text())["items"]["3"]["steps"]
    assert [s["name"] for s in steps] == ["prepare synthetic", "one process", "--nproc 2"]
    assert {s["status"] for s in steps} == {"skipped"}
    assert not (work / "runs").exists()


@NO_CUDA
@pytest.mark.parametrize(
    "script, args",
    [
        (GPU_CHECK, ["--out", "OUTDIR"]),
        (ROOT / "benchmarks" / "train_throughput.py", ["--data", "unused"]),
    ],
)
def test_benchmarks_on_cuda_without_a_gpu_end_in_one_line(script, args, tmp_path):
    args = [str(tmp_path / "out") if a == "OUTDIR" else a for a in args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script), "--device", "cuda", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, "no CUDA device")
    assert not (tmp_path / "out").exists()


@NO_CUDA
@pytest.mark.parametrize(
    "name, option, needle",
    [
        ("cuda", "train.device", "train.device is 'cuda' but no CUDA device"),
        ("cuda:1", "--device", "--device is 'cuda:1' but no CUDA device"),
    ],
)
def test_a_missing_gpu_is_named_by_the_option_that_asked_for_it(name, option, needle):
    with pytest.raises(UserError, match=needle):
        resolve_device(name, option)
    assert resolve_device("cpu", option) == torch.device("cpu")


@NO_CUDA
def test_predict_on_cuda_without_a_gpu_names_its_option(data_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: r\ndata: {data_dir}\nout: {tmp_path / 'run'}\n"
        "models: [{name: dnn, label: DNN, params: {hidden: [8]}}]\n"
        "train: {batch_size: 256, epochs: 1, seeds: [0]}\n"
    )
    invoke("train", str(recipe), "--no-eval")
    line = one_line_error(
        capsys, "--device is 'cuda' but no CUDA device is available",
        "predict", str(tmp_path / "run"), "--input", str(data_dir / "test.parquet"),
        "--out", str(tmp_path / "scores.parquet"), "--device", "cuda",
    )  # fmt: skip
    assert "train.device" not in line
    assert not (tmp_path / "scores.parquet").exists()


def test_bf16_autocast_runs_on_the_device_it_is_given():
    cpu = autocast(torch.device("cpu"), "bf16")
    assert cpu.device == "cpu" and cpu.fast_dtype == torch.bfloat16
    with warnings.catch_warnings():  # torch warns that CUDA is absent, and keeps the type
        warnings.simplefilter("ignore")
        cuda = autocast(torch.device("cuda", 0), "bf16")
    assert cuda.device == "cuda" and cuda.fast_dtype == torch.bfloat16
    assert not isinstance(autocast(torch.device("cuda"), "fp32"), torch.autocast)


def test_a_batch_moves_every_tensor_to_the_device():
    # the meta device stands in for a GPU: placement only, no values are read
    batch = make_batch(make_schema(with_sequence=True), 16)
    moved = batch.to(torch.device("meta"))

    def tensors(b: Batch) -> list[torch.Tensor]:
        values = [getattr(b, f.name) for f in fields(b)]
        return [t for v in values for t in (v if isinstance(v, tuple) else (v,))]

    assert moved.seq_ids and moved.seq_mask  # the sequences' tuples too
    assert len(tensors(moved)) == len(tensors(batch))
    assert all(t.device.type == "meta" for t in tensors(moved))
    assert [t.shape for t in tensors(moved)] == [t.shape for t in tensors(batch)]
    assert all(t.device.type == "cpu" for t in tensors(batch))  # a copy, not a move


def test_each_data_parallel_process_trains_on_the_gpu_of_its_local_rank():
    assert World(rank=3, size=4, local_rank=1).local_device("cuda") == "cuda:1"
    assert World(rank=1, size=2, local_rank=1).local_device("cpu") == "cpu"
    assert ALONE.local_device("cuda") == "cuda" and ALONE.local_device("cuda:2") == "cuda:2"

"""`msctr export`: each exported model, loaded without msctr (TorchScript by torch.jit.load,
ONNX by ONNX Runtime), scores the prepared test rows as the run scored them (to 1e-5); a model
that cannot be exported is listed with its reason, never written; bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import invoke, one_line_error, run_main

from msctr.runs import model_folder

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ("hierrec", "sfpnet", "hmdn")
TINY_TRAIN = {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 256, "seeds": [0]}

# scores a prepared split with an export, in a process where msctr cannot be imported: what a
# serving team runs (argv: export folder, format, split parquet, output json)
SERVE = r"""
import json, sys
sys.modules["msctr"] = None  # any import of msctr fails: the export must not need it
import numpy as np, pyarrow.parquet as pq
folder, fmt, split, out = sys.argv[1:]
contract = json.load(open(f"{folder}/contract.json"))
table = pq.read_table(split)
def col(name, dtype):
    return table.column(name).to_numpy().astype(dtype)
inputs = {}
for spec in contract["inputs"]:
    name = spec["name"]
    if name == "scenario":
        x = col("scenario", np.int64)
    elif name == "partition":
        x = col("_partition", np.int64)
    elif name == "sparse":
        x = np.stack([col(f["name"], np.int64) for f in spec["fields"]], 1)
    elif name == "dense":
        x = np.stack([col(f["name"], np.float32) for f in spec["fields"]], 1)
    elif name.endswith("_ids"):
        L = spec["shape"][1]
        x = np.stack([np.stack(table.column(f["column"]).to_numpy(zero_copy_only=False))
                      .reshape(-1, L).astype(np.int64) for f in spec["fields"]], -1)
    else:
        x = col(name, np.int64)
    inputs[name] = x
probs = {}
for m in contract["models"]:
    path = f"{folder}/{m['file']}"
    if fmt == "onnx":
        import onnxruntime as ort
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {i.name: inputs[i.name] for i in s.get_inputs()}
        p = s.run(["prob"], feed)[0]
    else:
        import torch
        net = torch.jit.load(path)
        with torch.no_grad():
            p = net(*[torch.from_numpy(inputs[s["name"]]) for s in contract["inputs"]]).numpy()
    probs[m["model"]] = p.astype(float).tolist()
json.dump(probs, open(out, "w"))
"""


def shipped_models() -> list[dict]:
    entries = yaml.safe_load((ROOT / "recipes/synthetic/baselines.yaml").read_text())["models"]
    for paper in PAPERS:
        recipe = yaml.safe_load((ROOT / f"recipes/synthetic/{paper}.yaml").read_text())
        entries += [m for m in recipe["models"] if m["name"] == paper]
    return entries


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    recipe = {
        "name": "export-test",
        "data": str(data_dir),
        "out": str(tmp / "run"),
        "models": shipped_models(),
        "train": TINY_TRAIN,
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    invoke("train", str(path), "--no-eval")
    return tmp / "run"


def served(folder: Path, fmt: str, split: Path, tmp: Path) -> dict[str, np.ndarray]:
    out = tmp / f"served_{fmt}.json"
    subprocess.run(
        [sys.executable, "-c", SERVE, str(folder), fmt, str(split), str(out)],
        check=True,
        cwd=tmp,
        timeout=600,
    )
    return {k: np.array(v) for k, v in json.loads(out.read_text()).items()}


def check_export(run: Path, fmt: str, tmp: Path, models: list[str]) -> dict:
    out = tmp / f"export_{fmt}"
    args = [a for m in models for a in ("--model", m)]
    invoke("export", str(run), "--format", fmt, "--out", str(out), *args)
    contract = json.loads((out / "contract.json").read_text())
    exported = {m["model"] for m in contract["models"]}
    failed = {m["model"]: m["reason"] for m in contract["not_exported"]}
    assert exported | set(failed) == set(models) and not exported & set(failed)
    assert all(reason for reason in failed.values())
    for key in failed:  # listed, never written
        assert not list(out.glob(f"{model_folder(key)}.*"))
    assert {p.name for p in out.iterdir()} == {
        "contract.json",
        "encoders.parquet",
        *(m["file"] for m in contract["models"]),
    }
    data = Path(yaml.safe_load((run / "recipe.yaml").read_text())["data"])
    got = served(out, fmt, data / "test.parquet", tmp)
    for m in contract["models"]:
        assert m["max_abs_diff"] <= 1e-5
        want = pl.read_parquet(run / model_folder(m["model"]) / "seed_0/predictions.parquet")
        assert np.abs(got[m["model"]] - want["prob"].to_numpy()).max() <= 1e-5, m["model"]
    return contract


def test_torchscript_export_of_the_papers_models_scores_without_msctr(run, tmp_path):
    models = ["DNN", "HierRec", "SFPNet", "HMDN(PEPNet)"]
    contract = check_export(run, "torchscript", tmp_path, models)
    assert [m["model"] for m in contract["models"]] == models
    names = [s["name"] for s in contract["inputs"]]
    assert names == ["scenario", "sparse", "dense", "partition", "hist_ids", "hist_len"]
    schema = json.loads((Path(contract["dataset"]) / "schema.json").read_text())
    sparse = next(s for s in contract["inputs"] if s["name"] == "sparse")
    assert [f["range"][1] + 1 for f in sparse["fields"]] == [
        f["vocab_size"] for f in schema["sparse"]
    ]
    dense = next(s for s in contract["inputs"] if s["name"] == "dense")
    assert [(f["mean"], f["std"]) for f in dense["fields"]] == [
        (f["mean"], f["std"]) for f in schema["dense"]
    ]


@pytest.mark.slow
def test_torchscript_export_of_every_shipped_model(run, tmp_path):
    models = [m.get("label") or m["name"] for m in shipped_models()]
    contract = check_export(run, "torchscript", tmp_path, models)
    assert not contract["not_exported"], contract["not_exported"]


@pytest.mark.slow
def test_onnx_export_of_every_shipped_model(run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    models = [m.get("label") or m["name"] for m in shipped_models()]
    contract = check_export(run, "onnx", tmp_path, models)
    # the papers' models and DNN must export; a baseline that cannot is listed with its reason
    assert {"DNN", "HierRec", "SFPNet", "HMDN(PEPNet)", "HMDN(MMoE)"} <= {
        m["model"] for m in contract["models"]
    }


def test_onnx_export_of_dnn_and_hierrec(run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    contract = check_export(run, "onnx", tmp_path, ["DNN", "HierRec"])
    assert [m["model"] for m in contract["models"]] == ["DNN", "HierRec"]


def test_onnx_without_the_extra_is_one_line(capsys, run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    one_line_error(
        capsys, "pip install 'msctr[export]'", "export", str(run), "--format", "onnx", "--out",
        str(tmp_path / "x"),
    )  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_bad_export_requests_are_one_line_and_write_nothing(capsys, run, tmp_path):
    out = tmp_path / "x"
    one_line_error(capsys, "--format must be one of", "export", str(run), "--format", "tflite",
                   "--out", str(out))  # fmt: skip
    one_line_error(capsys, "not a model of the run", "export", str(run), "--format",
                   "torchscript", "--out", str(out), "--model", "Nope")  # fmt: skip
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    one_line_error(capsys, "not an export msctr wrote", "export", str(run), "--format",
                   "torchscript", "--out", str(mine), "--model", "DNN")  # fmt: skip
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_second_export_replaces_the_first(capsys, run, tmp_path):
    out = tmp_path / "x"
    for model in ("DNN", "HierRec"):
        code, _, err = run_main(
            capsys, "export", str(run), "--format", "torchscript", "--out", str(out), "--model",
            model,
        )  # fmt: skip
        assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "HierRec.pt",
        "contract.json",
        "encoders.parquet",
    ]


def test_bench_inference_backends_are_columns_checked_against_eager(run, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    result = invoke(
        "bench-inference", str(run / "recipe.yaml"), "--models", "DNN,HierRec", "--backend",
        "torch,torchscript,onnxruntime", "--batch-sizes", "64", "--repeats", "1", "--min-time",
        "0", "--out", str(out),
    )  # fmt: skip
    bench = json.loads(out.read_text())
    assert bench["config"]["variants"] == ["eager", "torchscript", "onnxruntime"]
    for m in bench["models"]:
        for backend in ("torchscript", "onnxruntime"):
            v = m["variants"][backend]
            assert v["auc_ok"], (m["model"], backend, v["auc_diff_vs_eager"])
    assert "torchscript s" in result.output and "onnxruntime s" in result.output


def test_an_unknown_backend_is_one_line(capsys, run):
    one_line_error(capsys, "unknown backend(s) ['tensorrt']", "bench-inference",
                   str(run / "recipe.yaml"), "--backend", "torch,tensorrt")  # fmt: skip

"""bench-inference's results as dataclasses: bench.json's structure kept exactly, the tables
rendered as before, and one machine() for msctr and benchmarks/.

The fixtures are files the dict-based bench.py wrote before the split: `fresh.json` is its
bench.json of two fresh models (DNN, STAR) on `prepare synthetic --rows 4000`, `fresh.txt`
what it printed for it (80 columns); `failed_compile.json` adds a `compile` variant that
failed for DNN and ran for STAR (so failed variants, AUC checks and notes are covered).
"""

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import invoke
from rich.console import Console

from msctr.bench import BenchResult, ModelBench, VariantBench, VariantFailed, machine, render
from msctr.bench.render import forward_table, inference_table

FIXTURES = Path(__file__).parent / "fixtures" / "bench"
CASES = ["fresh", "failed_compile"]


def _load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.mark.parametrize("name", CASES)
def test_dataclasses_round_trip_bench_json_exactly(name):
    text = (FIXTURES / f"{name}.json").read_text()
    result = BenchResult.from_dict(json.loads(text))
    assert json.dumps(result.to_dict(), indent=2) + "\n" == text  # keys, order and values
    assert all(isinstance(m, ModelBench) for m in result.models)
    kinds = {type(v) for m in result.models for v in m.variants.values()}
    assert kinds == ({VariantBench, VariantFailed} if name == "failed_compile" else {VariantBench})


@pytest.mark.parametrize("name", CASES)
def test_render_prints_what_the_old_renderer_printed(name):
    for result in (BenchResult.from_dict(_load(name)), _load(name)):
        if isinstance(result, dict):
            result["path"] = "/x/bench.json"
        else:
            result.path = "/x/bench.json"
        console = Console(width=80, record=True, file=io.StringIO(), color_system=None)
        render(result, console)
        assert console.export_text() == (FIXTURES / f"{name}.txt").read_text()


def test_bench_tables_also_render_as_markdown():
    result = BenchResult.from_dict(_load("failed_compile"))
    table, notes = inference_table(result)
    md = table.to_markdown().splitlines()
    assert md[0].startswith("| Model | params | MACs/sample | AUC | eager s | vs fastest |")
    assert md[2].startswith("| DNN | 182,753 | 0.18M |") and "| failed | - |" in md[2]
    assert notes[0] == "DNN compile: BackendCompilerFailed: no compiler"
    fwd = forward_table(result).to_markdown().splitlines()
    assert len(fwd) == 2 + 6  # header, rule; DNN eager x2, STAR eager x2, STAR compile x2


RECIPE = """
name: synthetic-table
data: {data}
out: {out}
models:
  - {{name: dnn, label: DNN}}
  - {{name: star, label: STAR}}
"""


def test_a_run_writes_the_same_structure_as_before(tmp_path):
    data = tmp_path / "syn"
    invoke("prepare", "synthetic", "--rows", "4000", "--out", str(data))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(data=data, out=tmp_path / "nothing"))
    out = tmp_path / "bench.json"
    args = ["--batch-sizes", "1,64", "--repeats", "1", "--min-time", "0", "--out", str(out)]
    invoke("bench-inference", str(recipe), *args)
    new, old = json.loads(out.read_text()), _load("fresh")

    def paths(obj, prefix=()):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from paths(v, (*prefix, k))
        elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
            for i, v in enumerate(obj):
                yield from paths(v, (*prefix, i))
        else:
            yield prefix, type(obj).__name__

    assert list(paths(new)) == list(paths(old))  # every key, in order, with its value's type
    same = ("test_rows", "seed", "config")
    assert {k: new[k] for k in same} == {k: old[k] for k in same}
    for m_new, m_old in zip(new["models"], old["models"], strict=True):
        for k in ("model", "name", "trained", "parameters", "weight_bytes"):
            assert m_new[k] == m_old[k], k


def test_one_machine_for_bench_and_train_throughput():
    info = machine(torch.device("cpu"))
    assert list(info)[:6] == ["cpu", "logical_cores", "threads", "torch", "device", "date"]
    assert info["device"] == "cpu" and info["torch"] == torch.__version__
    assert "device" not in machine()
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        import train_throughput
    finally:
        sys.path.pop(0)
    t = train_throughput.machine_info()
    assert list(t) == ["cpu", "logical_cores", "torch", "threads", "date", "loadavg_start"]
    assert t["cpu"] == info["cpu"] and t["logical_cores"] == info["logical_cores"]
    assert t["date"][-3] == ":" and len(t["date"]) == len("2026-01-01T00:00:00+00:00")

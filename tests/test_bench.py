"""bench-inference: the command, its one-line errors, the live-tensor memory meter and the
step_ops benchmark. The optimizer, the embedding, the multiply-add counter and the speed
options have files of their own (test_optim, test_embedding, test_flops, test_speed_options)."""

import json
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import THREE_MODELS_RECIPE, invoke, msctr_process, process_error
from sklearn.metrics import roc_auc_score

from msctr.bench import LiveTensorBytes

# -- memory --------------------------------------------------------------------------------


def test_live_tensor_bytes_tracks_the_peak():
    x = torch.ones(1000)
    with LiveTensorBytes() as mode:
        a = x * 2  # 4 kB
        b = a + 1  # 8 kB alive
        del a
        c = b * 3  # a is freed: still 8 kB
        del b, c
        d = torch.ones(3000)  # 12 kB alone
        del d
    assert mode.peak == 12000


# -- the command ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = root / "data"
    invoke("prepare", "synthetic", "--out", str(data), "--rows", "8000", "--seed", "3")
    path = root / "r.yaml"
    path.write_text(THREE_MODELS_RECIPE.format(data=data, out=root / "run"))
    return path


def test_bench_fresh_models_then_trained(recipe_path, tmp_path):
    args = ["--batch-sizes", "1,64", "--repeats", "2", "--variants", "eager,bf16"]
    args += ["--min-time", "0.02"]
    out = tmp_path / "fresh.json"
    res = invoke("bench-inference", str(recipe_path), *args, "--out", str(out))
    assert "freshly initialised" in res.output and "whole test split" in res.output
    fresh = json.loads(out.read_text())
    assert [m["model"] for m in fresh["models"]] == ["DNN", "SB", "PLE"]
    for m in fresh["models"]:
        assert not m["trained"] and m["parameters"] > 0
        assert m["macs_per_sample"]["64"] > 0
        for v in ("eager", "bf16"):
            r = m["variants"][v]
            assert r["test_rows"] == fresh["test_rows"] > 0
            assert len(r["test_seconds"]["runs"]) == 2
            assert 0 < r["read_seconds"]["mean"] < r["test_seconds"]["mean"]
            sizes = [x["batch_size"] for x in r["by_batch_size"]]
            assert sizes == [1, 64]
            for x in r["by_batch_size"]:
                lat = x["latency_ms"]
                assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
                assert x["samples_per_s"] > 0 and x["peak_bytes"] > m["weight_bytes"]
    fastest = min(m["variants"]["eager"]["test_seconds"]["mean"] for m in fresh["models"])
    pcts = [m["variants"]["eager"]["increase_vs_fastest"]["pct"] for m in fresh["models"]]
    assert min(pcts) == 0.0 and fastest > 0

    only_dnn = "models=[{name: dnn, label: DNN, params: {hidden: [32, 16]}}]"
    invoke("train", str(recipe_path), "--no-eval", "--set", only_dnn)
    res = invoke("bench-inference", str(recipe_path), *args, "--models", "DNN")
    assert "freshly initialised" not in res.output
    bench = json.loads((recipe_path.parent / "run" / "bench.json").read_text())
    (m,) = bench["models"]
    assert m["trained"]
    # eager scores exactly what training predicted for the test split
    pred = pl.read_parquet(recipe_path.parent / "run" / "DNN" / "seed_0" / "predictions.parquet")
    want = roc_auc_score(pred["label"].to_numpy(), pred["prob"].to_numpy())
    assert m["variants"]["eager"]["auc"] == pytest.approx(want, abs=1e-6)
    # a trained model: bf16 gives the same test AUC as fp32 to 1e-3
    assert m["variants"]["eager"]["auc"] > 0.6
    assert m["variants"]["bf16"]["auc_ok"], m["variants"]["bf16"]["auc_diff_vs_eager"]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_unavailable_is_a_one_line_error(recipe_path):
    process_error(msctr_process("bench-inference", str(recipe_path), "--device", "cuda"), "no CUDA")


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--variants", "eager,fp8"], "unknown variant"),
        (["--models", "DNN,Nope"], "'Nope' is not in the recipe"),
        (["--batch-sizes", "1,x"], "--batch-sizes"),
    ],
)
def test_bad_options_are_one_line_errors(recipe_path, args, needle):
    process_error(msctr_process("bench-inference", str(recipe_path), *args), needle)


def test_step_ops_benchmark_times_the_ops_of_a_step(recipe_path, capsys):
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    threads = torch.get_num_threads()
    try:
        import step_ops

        data = str(recipe_path.parent / "data")
        args = ["dnn", "--data", data, "--steps", "2", "--warmup", "1", "--batch-size", "256"]
        assert step_ops.main([*args, "--threads", "1", "--set", "hidden=[32, 16]"]) == 0
        out = capsys.readouterr().out
        with pytest.raises(SystemExit):
            step_ops.main([*args, "--set", "hiden=[32]"])
    finally:
        torch.set_num_threads(threads)
        sys.path.pop(0)
    header, _, *ops = out.splitlines()
    assert "hidden=[32, 16]" in header and " fwd " in header and " bwd " in header
    # the first layer's forward (32 units, batch 256), as an op line with its input shapes
    assert any(" fwd aten.addmm (32,) (256, " in line for line in ops)
    assert "unknown key 'model.params.hiden'" in capsys.readouterr().err

"""bench-inference, the multiply-add counter, and the training loop's speed options (lazy Adam for
row-sparse embedding tables, bf16 autocast, fused sequence pooling)."""

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import invoke, make_batch, make_schema, planted_batch
from sklearn.metrics import roc_auc_score

from msctr import flops
from msctr.bench import LiveTensorBytes
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import build, split_output
from msctr.models.scenario import ScenarioGroups
from msctr.recipe import TrainConfig
from msctr.train.optim import SPARSE_AUTO_ROWS, LazyAdam, make_optimizer
from msctr.train.runtime import autocast

# -- lazy Adam against dense Adam ------------------------------------------------------------


def _twin_tables(rows: int, dim: int, seed: int = 0):
    torch.manual_seed(seed)
    dense = torch.nn.Embedding(rows, dim)
    sparse = torch.nn.Embedding(rows, dim, sparse=True)
    sparse.weight.data.copy_(dense.weight.data)
    return dense, sparse


def test_lazy_adam_equals_adam_when_every_row_is_touched():
    rows, dim = 12, 4
    dense, sparse = _twin_tables(rows, dim)
    opt_d = torch.optim.Adam(dense.parameters(), lr=0.05, weight_decay=0.01, foreach=False)
    opt_s = LazyAdam(sparse.parameters(), lr=0.05, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    for _ in range(15):
        # every row at least once, some several times (duplicates must be summed)
        ids = torch.cat(
            [torch.randperm(rows, generator=g), torch.randint(0, rows, (9,), generator=g)]
        )
        target = torch.randn(len(ids), dim, generator=g)
        for table, opt in ((dense, opt_d), (sparse, opt_s)):
            opt.zero_grad()
            ((table(ids) - target) ** 2).sum().backward()
            opt.step()
    assert sparse.weight.grad.is_sparse
    torch.testing.assert_close(sparse.weight, dense.weight, rtol=1e-5, atol=1e-6)


def test_lazy_adam_leaves_untouched_rows_alone_and_matches_sparse_adam():
    rows, dim = 50, 3
    ref, lazy = _twin_tables(rows, dim)
    ref.sparse = True  # torch's SparseAdam needs sparse gradients too
    start = lazy.weight.detach().clone()
    opt_ref = torch.optim.SparseAdam(ref.parameters(), lr=0.1)
    opt = LazyAdam(lazy.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(2)
    for _ in range(10):
        ids = torch.randint(0, 25, (30,), generator=g)  # rows 25.. never touched
        target = torch.randn(30, dim, generator=g)
        for table, o in ((ref, opt_ref), (lazy, opt)):
            o.zero_grad()
            ((table(ids) - target) ** 2).sum().backward()
            o.step()
    torch.testing.assert_close(lazy.weight, ref.weight, rtol=1e-5, atol=1e-6)
    assert torch.equal(lazy.weight[25:], start[25:])
    assert not torch.equal(lazy.weight[:25], start[:25])
    # the moments exist only where rows were touched
    assert opt.state[lazy.weight]["exp_avg"][25:].abs().sum() == 0


def test_lazy_adam_dense_gradient_is_plain_adam():
    dense, other = _twin_tables(8, 3)
    other.sparse = False
    opt_d = torch.optim.Adam(dense.parameters(), lr=0.02, weight_decay=0.1, foreach=False)
    opt_l = LazyAdam(other.parameters(), lr=0.02, weight_decay=0.1)
    ids = torch.arange(8)
    for _ in range(5):
        for table, o in ((dense, opt_d), (other, opt_l)):
            o.zero_grad()
            table(ids).pow(3).sum().backward()
            o.step()
    torch.testing.assert_close(other.weight, dense.weight, rtol=1e-5, atol=1e-6)


def test_make_optimizer_switches_tables_and_trains_like_dense_adam():
    schema = make_schema(vocab=40)
    aucs = {}
    for mode in (False, True):
        torch.manual_seed(0)
        model = build("dnn", schema, {"embed_dim": 8, "hidden": [32], "dropout": 0.0})
        opt = make_optimizer(model, TrainConfig(lr=3e-3, sparse_embeddings=mode))
        assert model.embedding.table.sparse is mode
        kinds = {type(o).__name__ for o in opt.optimizers}
        assert kinds == ({"Adam", "LazyAdam"} if mode else {"Adam"})
        for step in range(120):
            b = planted_batch(schema, 256, seed=step)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.label)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if mode:
            assert model.embedding.table.weight.grad.is_sparse
        test = planted_batch(schema, 4000, seed=10_000)
        model.eval()
        with torch.no_grad():
            p = model(test)
        aucs[mode] = roc_auc_score(test.label.numpy(), p.numpy())
    assert aucs[False] > 0.65 and abs(aucs[True] - aucs[False]) < 0.02, aucs
    # "auto" keeps small tables dense and makes big ones row-sparse
    model = build("dnn", schema, {})
    make_optimizer(model, TrainConfig())
    assert model.embedding.table.sparse is False
    model = build("dnn", make_schema(vocab=SPARSE_AUTO_ROWS // 6 + 1), {"embed_dim": 2})
    make_optimizer(model, TrainConfig())
    assert model.embedding.table.sparse is True


# -- the fused sequence pooling ----------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True])
def test_pooled_sequence_is_masked_mean_of_attribute_means(sparse):
    schema = make_schema()
    b = make_batch(schema, 64)
    emb = FeatureEmbedding(schema, 8, sparse_grad=sparse)
    got = emb.pooled_sequence(b)
    e, mask = emb.sequence(b)  # [B, L, d] mean over attributes, [B, L]
    m = mask.unsqueeze(-1).float()
    want = (e * m).sum(1) / m.sum(1).clamp_min(1.0)
    torch.testing.assert_close(got, want)
    assert (mask.sum(1) == 0).any()  # rows without behaviors are covered (pooled = 0)
    g = torch.autograd.grad(got.square().sum(), emb.table.weight)[0]
    g_ref = torch.autograd.grad(want.square().sum(), emb.table.weight)[0]
    torch.testing.assert_close(g.to_dense() if sparse else g, g_ref.to_dense())


def test_row_sparse_lookups_match_dense_ones():
    schema = make_schema()
    b = make_batch(schema, 64)
    torch.manual_seed(0)
    dense = FeatureEmbedding(schema, 8)
    sparse = FeatureEmbedding(schema, 8, sparse_grad=True)
    sparse.load_state_dict(dense.state_dict())
    grads = []
    for emb in (dense, sparse):
        out = emb.fields(b)  # look-ups of sparse fields and the pooled sequence
        seq, _ = emb.sequence(b)  # a second use of the table in the same step
        (out.square().sum() + seq.sum()).backward()
        grads.append(emb.table.weight.grad)
    assert grads[1].is_sparse and not grads[0].is_sparse
    torch.testing.assert_close(grads[1].to_dense(), grads[0])
    torch.testing.assert_close(sparse.fields(b), dense.fields(b))


# -- bf16 autocast -------------------------------------------------------------------------


def test_bf16_autocast_runs_matmuls_in_bf16_and_keeps_fp32_weights():
    schema = make_schema()
    model = build("dnn", schema, {"hidden": [32]})
    b = make_batch(schema, 32)
    with autocast(torch.device("cpu"), "bf16"):
        out = model(b)
    assert out.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with autocast(torch.device("cpu"), "fp32"):
        assert model(b).dtype == torch.float32


# -- multiply-adds and memory ----------------------------------------------------------------


def test_flop_counter_matches_the_dnn_layer_sizes():
    schema = make_schema()
    model = build("dnn", schema, {"embed_dim": 8, "hidden": [32, 16]})
    b = make_batch(schema, 50)
    n_in = model.embedding.num_fields * 8
    want = n_in * 32 + 32 * 16 + 16 * 1
    fwd = flops.forward_flops(model, b)
    assert fwd.macs_per_sample == want
    assert fwd.by_module == {"mlp": 2 * want * 50}
    train = flops.train_step_flops(model, b)
    assert train.flops == 3 * fwd.flops  # backward: grads of inputs and weights
    assert all(p.grad is None for p in model.parameters())  # the count leaves no gradients


def test_flop_counter_sees_cpu_attention():
    q = torch.randn(6, 5, 4)  # [N, L, E] as HierRec's field attention passes it
    count = flops.count(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q), 6)
    assert count.flops == 2 * (2 * 6 * 5 * 5 * 4)  # QK^T and PV, 2 FLOPs per multiply-add


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


RECIPE = """
name: benchtest
data: {data}
out: {out}
models:
  - {{name: dnn, label: DNN, params: {{hidden: [32, 16]}}}}
  - {{name: shared_bottom, label: SB, params: {{bottom_hidden: [32], tower_hidden: [16]}}}}
  - {{name: ple, label: PLE, params: {{expert_hidden: [16], tower_hidden: [8]}}}}
train: {{batch_size: 256, epochs: 2, seeds: [0], lr: 0.003, eval_batch_size: 700}}
"""


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = root / "data"
    invoke("prepare", "synthetic", "--out", str(data), "--rows", "8000", "--seed", "3")
    path = root / "r.yaml"
    path.write_text(RECIPE.format(data=data, out=root / "run"))
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


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "msctr.cli", *args], capture_output=True, text=True
    )


def _clean_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_unavailable_is_a_one_line_error(recipe_path):
    _clean_error(_cli("bench-inference", str(recipe_path), "--device", "cuda"), "no CUDA")


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
    _clean_error(_cli("bench-inference", str(recipe_path), *args), needle)


def test_training_options_bf16_and_sparse_embeddings(recipe_path, tmp_path):
    invoke(
        "train", str(recipe_path), "--smoke", "--no-eval",
        "--set", f"out={tmp_path / 'o'}",
        "--set", "train.precision=bf16",
        "--set", "train.sparse_embeddings=true",
    )  # fmt: skip
    log = (tmp_path / "o-smoke" / "DNN" / "seed_0" / "log.jsonl").read_text().splitlines()
    assert json.loads(log[0])["val_auc"] > 0.5


def test_model_output_through_autocast_is_finite():
    schema = make_schema()
    model = build("hierrec", schema, {})
    b = make_batch(schema, 16)
    with autocast(torch.device("cpu"), "bf16"):
        logit, _ = split_output(model(b))
    assert torch.isfinite(logit.float()).all()


def test_flop_counter_sees_the_grouped_per_scenario_matmul():
    S, B = 3, 90
    groups = ScenarioGroups(torch.arange(B) % S, S)
    assert groups.grouped  # CPU, eager: one grouped_mm
    x = torch.randn(B, 16, requires_grad=True)
    w = torch.randn(S, 16, 200, requires_grad=True)
    b = torch.zeros(S, 200, requires_grad=True)
    assert flops.count(lambda: groups.linear(x, w, b), B).macs_per_sample == 16 * 200
    train = flops.count(lambda: groups.linear(x, w, b).sum().backward(), B)
    assert train.macs_per_sample == 3 * 16 * 200  # input and weight gradients


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

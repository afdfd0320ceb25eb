"""Every hand-written kernel of models/kernels.py against its plain PyTorch reference: the
outputs and the gradients with respect to every differentiable input, in float64 where the
kernel runs in it, and in the dtypes of its dtype-specific paths (grouped_mm: fp32, and bf16
with every scenario's block padded to 32 rows)."""

import pytest
import torch

from msctr.models.kernels import (
    _MaskScale,
    _ScenarioBatchNorm,
    _TouchedRows,
    _WeightedBag,
    chunked_linear,
    dense_select_linear,
    grouped_linear,
    grouped_linear_reference,
    keep_mask,
    mask_scale_reference,
    padded_layout,
    scenario_batch_norm_reference,
    touched_rows_reference,
    weighted_bag_reference,
)
from msctr.models.scenario import ScenarioGroups

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def compare(kernel, reference, args, diff, dtype=F64, bf16_autocast=False, **tol):
    """kernel(*args) with its floating inputs in `dtype` (under bf16 autocast if asked) against
    reference(*args) in float64: the outputs, and for one random upstream gradient the
    gradients with respect to args[i] for every i in `diff` (sparse ones densified). Under
    autocast the reference sees the inputs and upstream gradient rounded to bf16 as well."""
    low = torch.bfloat16 if bf16_autocast else F64

    def inputs(dt):
        return [
            t.detach().to(low).to(dt).requires_grad_(i in diff)
            if torch.is_tensor(t) and t.is_floating_point()
            else t
            for i, t in enumerate(args)
        ]

    got_in, want_in = inputs(dtype), inputs(F64)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast):
        got = kernel(*got_in)
    want = reference(*want_in)
    g = torch.randn(want.shape, dtype=F64, generator=_gen(1)).to(low).double()
    got_g = torch.autograd.grad(got, [got_in[i] for i in diff], g.to(got.dtype))
    want_g = torch.autograd.grad(want, [want_in[i] for i in diff], g)
    torch.testing.assert_close(got.double(), want, **tol)
    for i, a, b in zip(diff, got_g, want_g):
        a = a.to_dense() if a.is_sparse else a
        torch.testing.assert_close(a.double(), b, **tol, msg=lambda m, i=i: f"grad {i}: {m}")
    return got, got_g


# -- embedding look-ups -------------------------------------------------------------------------


def test_weighted_bag_matches_its_reference():
    V, d, B, n = 40, 6, 25, 9
    g = _gen(0)
    table = torch.randn(V, d, dtype=F64, generator=g)
    ids = torch.randint(0, V, (B, n), generator=g)  # repeated ids within and across rows
    w = torch.rand(B, n, dtype=F64, generator=g)
    w[3] = 0.0  # a row without weight (an empty behavior sequence)
    compare(_WeightedBag.apply, weighted_bag_reference, [table, ids, w], diff=[0])


def test_touched_rows_match_their_reference_with_a_coalesced_sparse_gradient():
    V, d = 30, 5
    g = _gen(0)
    table = torch.randn(V, d, dtype=F64, generator=g)
    rows = torch.unique(torch.randint(0, V, (20,), generator=g))  # sorted, unique
    _, (grad,) = compare(_TouchedRows.apply, touched_rows_reference, [table, rows], diff=[0])
    assert grad.is_sparse and grad.is_coalesced()
    assert torch.equal(grad.indices()[0], rows)
    # two uses in one step accumulate into one table gradient, as the reference's do
    other = torch.tensor([0, 7, V - 1])
    grads = []
    for op in (_TouchedRows.apply, touched_rows_reference):
        t = table.clone().requires_grad_(True)
        (op(t, rows).square().sum() + op(t, other).sum()).backward()
        grads.append(t.grad.to_dense() if t.grad.is_sparse else t.grad)
    torch.testing.assert_close(grads[0], grads[1])


# -- dropout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("relu", [False, True], ids=["mask", "relu+mask"])
@pytest.mark.parametrize("dtype", [F64, torch.bfloat16], ids=["f64", "bf16"])
def test_mask_scale_matches_its_reference(relu, dtype):
    x = torch.randn(60, 33, dtype=F64, generator=_gen(0))
    torch.manual_seed(0)
    keep = keep_mask(x, 0.3)
    scale = 1.0 / 0.7
    args = [x.to(dtype), keep, scale, relu]

    def leaf():
        return args[0].clone().requires_grad_(True)

    # the same ops in the same dtype: equal to the last bit, output and gradient
    got_x, want_x = leaf(), leaf()
    got, want = _MaskScale.apply(got_x, *args[1:]), mask_scale_reference(want_x, *args[1:])
    assert torch.equal(got, want)
    g = torch.randn(got.shape, generator=_gen(1)).to(dtype)
    assert torch.equal(
        torch.autograd.grad(got, got_x, g)[0], torch.autograd.grad(want, want_x, g)[0]
    )
    compare(_MaskScale.apply, mask_scale_reference, args, diff=[0], dtype=dtype,
            **({} if dtype == F64 else {"rtol": 1e-2, "atol": 1e-2}))  # fmt: skip


def test_keep_mask_is_a_seeded_uint8_draw_at_rate_one_minus_p():
    # a random draw has no output to compare; its reference is the Bernoulli(1 - p) law
    x = torch.empty(300, 301)  # an element count that is not a multiple of 4
    torch.manual_seed(0)
    keep = keep_mask(x, 0.25)
    assert keep.dtype == torch.uint8 and keep.shape == x.shape
    assert set(keep.unique().tolist()) == {0, 1}
    assert abs(keep.double().mean().item() - 0.75) < 0.005  # 90k draws: sd 0.0015
    torch.manual_seed(0)
    assert torch.equal(keep_mask(x, 0.25), keep)
    assert not torch.equal(keep_mask(x, 0.25), keep)


# -- STAR's partitioned normalization -----------------------------------------------------------


def test_scenario_batch_norm_matches_the_textbook_formula():
    S, D = 4, 7
    scenario = torch.tensor([0] * 9 + [1] * 6 + [2])  # 2: one row, 3: none -> fallback stats
    scenario = scenario[torch.randperm(len(scenario), generator=_gen(0))]
    g = _gen(1)
    x = torch.randn(len(scenario), D, dtype=F64, generator=g) * 3 + 1
    fallback_mean = torch.randn(S, D, dtype=F64, generator=g)
    fallback_var = torch.rand(S, D, dtype=F64, generator=g) + 0.5
    scale = torch.randn(S, D, dtype=F64, generator=g)
    shift = torch.randn(S, D, dtype=F64, generator=g)
    counts = torch.zeros(S, dtype=F64).index_add_(0, scenario, torch.ones(len(scenario), dtype=F64))
    n, ok = counts.clamp_min(1.0).unsqueeze(1), (counts >= 2).unsqueeze(1)
    eps = 1e-5

    def kernel(x, scale, shift):
        return _ScenarioBatchNorm.apply(
            x, scenario, n, ok, fallback_mean, fallback_var, eps, scale, shift
        )

    def reference(x, scale, shift):
        return scenario_batch_norm_reference(
            x, scenario, ok, fallback_mean, fallback_var, eps, scale, shift
        )

    compare(lambda *a: kernel(*a)[0], lambda *a: reference(*a)[0], [x, scale, shift], [0, 1, 2])
    # the batch statistics the running statistics are updated from, where there are any
    _, mean, var = kernel(x, scale, shift)
    _, want_mean, want_var = reference(x, scale, shift)
    rows = ok.squeeze(1)
    torch.testing.assert_close(mean[rows], want_mean[rows])
    torch.testing.assert_close(var[rows], want_var[rows])
    torch.testing.assert_close(mean[~rows], fallback_mean[~rows])


# -- per-scenario linears -----------------------------------------------------------------------

SIZES = [45, 0, 1, 33, 70]  # an empty scenario, a single row, blocks off multiples of 32


def _scenarios() -> torch.Tensor:
    s = torch.cat([torch.full((k,), i) for i, k in enumerate(SIZES)])
    return s[torch.randperm(len(s), generator=_gen(0))]


def _linear_args(scenario, a, b, experts=None):
    S, B, E = len(SIZES), len(scenario), () if experts is None else (experts,)
    g = _gen(2)
    x = torch.randn(B, *E, a, dtype=F64, generator=g)
    w = torch.randn(S, *E, a, b, dtype=F64, generator=g) / a**0.5
    bias = torch.randn(S, *E, b, dtype=F64, generator=g)
    return [x, w, bias, scenario]


# in x out: aligned, and padded to grouped_mm's 16-byte rows on both sides
SHAPES = [(16, 24), (13, 10)]


@pytest.mark.parametrize("experts", [None, 3], ids=["plain", "experts"])
@pytest.mark.parametrize("a,b", SHAPES, ids=["aligned", "padded"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_grouped_linear_matches_its_reference(a, b, experts, dtype):
    scenario = _scenarios()
    groups = ScenarioGroups(scenario, len(SIZES))
    assert groups.grouped  # CPU, eager

    def layout(quantum):
        g = groups
        return padded_layout(g.order, g.counts, g.rank, g.sorted_scenario, quantum)

    def kernel(x, w, bias, scenario):
        return grouped_linear(x, w, bias, scenario, groups.order, layout)

    bf16 = dtype == "bf16"
    tol = {"rtol": 1.6e-2, "atol": 1e-2} if bf16 else {"rtol": 1e-5, "atol": 1e-5}
    args = _linear_args(scenario, a, b, experts)
    got, _ = compare(kernel, grouped_linear_reference, args, [0, 1, 2], dtype=torch.float32,
                     bf16_autocast=bf16, **tol)  # fmt: skip
    assert got.dtype == (torch.bfloat16 if bf16 else torch.float32)
    if bf16:  # the padded layout: every scenario's block a multiple of 32 rows
        slot, ends, slots = layout(32)
        assert slots == sum(-(-k // 32) * 32 for k in SIZES) and (ends % 32 == 0).all()
        assert len(set(slot.tolist())) == len(scenario)


@pytest.mark.parametrize("experts", [None, 3], ids=["plain", "experts"])
def test_chunked_linear_matches_its_reference(experts):
    scenario = _scenarios()
    groups = ScenarioGroups(scenario, len(SIZES), chunk=8)
    assert not groups.grouped

    def kernel(x, w, bias, scenario):
        return chunked_linear(
            x, w, bias, groups.chunk_scenario, groups.row_chunk, groups.row_slot,
            groups.num_chunks, groups.chunk,
        )  # fmt: skip

    compare(kernel, grouped_linear_reference, _linear_args(scenario, 13, 10, experts), [0, 1, 2])


def test_dense_select_linear_matches_its_reference():
    scenario = _scenarios()
    compare(dense_select_linear, grouped_linear_reference, _linear_args(scenario, 13, 4), [0, 1, 2])

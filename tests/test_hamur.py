"""HAMUR: shapes, gradients, the adapter against per-sample weight matrices, each switch, the
domain norm's per-scenario statistics, batch independence at eval, parameter checks,
planted signal."""

import pytest
import torch
from conftest import (
    SMALL,
    assert_learns_planted,
    assert_rows_alone_match,
    assert_trains,
    load_shared,
    make_batch,
    spread_embeddings,
    warmed_up,
)

from msctr.errors import UserError
from msctr.models.registry import build
from msctr.models.scenario import ScenarioGroups

P = SMALL["hamur"]
SWITCHES = ["adapter", "hyper", "norm"]


def n_params(m: torch.nn.Module | None) -> int:
    return 0 if m is None else sum(p.numel() for p in m.parameters())


def warmed(model: torch.nn.Module, schema) -> torch.nn.Module:
    """Embeddings at std 0.5 (the hyper-network then sees distinct inputs) and one training
    forward, so the running statistics leave their init; returned in eval mode."""
    return warmed_up(spread_embeddings(model), schema, rows=96, seed=5)


@pytest.mark.parametrize("drop", [[], *([s] for s in SWITCHES), ["hyper", "norm"]], ids=str)
def test_shapes_and_every_parameter_gets_gradient(drop, schema, batch):
    torch.manual_seed(0)
    model = build("hamur", schema, {**P, "drop": drop}).train()
    assert_trains(model, batch)
    S = schema.num_scenarios
    for n, p in model.named_parameters():  # every scenario's slice is trained
        if not n.startswith(("embedding.", "hyper.")):
            assert (p.grad.reshape(S, -1).abs().sum(1) > 0).all(), n


def test_adapter_matches_per_sample_weights(schema, batch):
    """The cell computed the paper's way: W = U_s H(x) V_s built for every sample, then
    h W + b, sigmoid, up the same way, the domain norm with the scenario's running
    statistics, shortcut."""
    torch.manual_seed(0)
    model = warmed(build("hamur", schema, {**P, "adapters": 2}), schema)
    s = batch.scenario
    groups = ScenarioGroups(s, schema.num_scenarios)
    with torch.no_grad():
        x = model.embedding.fields(batch).flatten(1)
        H = model.instance_matrix(x)
        assert H.shape == (len(batch), P["k"], P["k"])
        for cell, dim in zip(model.adapters, P["hidden"]):
            h = torch.randn(len(batch), dim)
            w1 = torch.einsum("bmi,bij,bjn->bmn", cell.down.U[s], H, cell.down.V[s])
            z = torch.sigmoid(torch.einsum("bm,bmn->bn", h, w1) + cell.down.bias[s])
            w2 = torch.einsum("bmi,bij,bjn->bmn", cell.up.U[s], H, cell.up.V[s])
            z = torch.einsum("bm,bmn->bn", z, w2) + cell.up.bias[s]
            n = cell.norm
            z = (z - n.running_mean[s]) / torch.sqrt(n.running_var[s] + n.eps)
            z = z * n.scenario_gamma[s] + n.scenario_beta[s]
            torch.testing.assert_close(cell(h, H, groups), h + z)


def test_switches_remove_their_parts(schema, batch):
    torch.manual_seed(0)
    full = warmed(build("hamur", schema, P), schema)
    ablated = {s: build("hamur", schema, {**P, "drop": [s]}).eval() for s in SWITCHES}
    assert len(ablated["adapter"].adapters) == 0 and ablated["adapter"].hyper is None
    assert ablated["hyper"].hyper is None and len(ablated["hyper"].adapters) == 1
    assert ablated["norm"].adapters[0].norm is None and ablated["norm"].hyper is not None
    cell = full.adapters[0]
    assert n_params(full) - n_params(ablated["adapter"]) == n_params(full.hyper) + n_params(cell)
    assert n_params(full) - n_params(ablated["hyper"]) == n_params(full.hyper)
    assert n_params(full) - n_params(ablated["norm"]) == n_params(cell.norm)
    with torch.no_grad():
        out = full(batch)
        for s, model in ablated.items():
            assert set(load_shared(full, model)) == set(model.state_dict()), s
            assert (out - model(batch)).abs().max() > 1e-4, s
        # without the hyper-network the adapter is the full one with H(x) = I for every row
        full.instance_matrix = lambda x: torch.eye(P["k"]).expand(x.shape[0], -1, -1)
        torch.testing.assert_close(full(batch), ablated["hyper"](batch))


def test_domain_norm_uses_each_scenarios_own_rows_in_training(schema):
    """In training the domain norm standardizes each scenario's rows by their own batch
    statistics (the authors' code uses the whole batch's)."""
    torch.manual_seed(0)
    model = build("hamur", schema, {**P, "dropout": 0.0}).train()
    batch = make_batch(schema, 96, seed=2)
    seen = {}
    cell = model.adapters[0]
    cell.norm.register_forward_hook(lambda m, args, out: seen.update(inp=args[0], out=out))
    model(batch)
    for s in range(schema.num_scenarios):
        rows = batch.scenario == s
        z = seen["out"][rows].detach()
        torch.testing.assert_close(z.mean(0), torch.zeros(z.shape[1]), atol=1e-4, rtol=0)
        assert seen["inp"][rows].mean(0).abs().max() > 1e-3  # not already centered


def test_eval_score_does_not_depend_on_batch_mates(schema):
    torch.manual_seed(0)
    model = warmed(build("hamur", schema, P), schema)
    batch = make_batch(schema, 24, seed=4)
    together = assert_rows_alone_match(model, batch)
    # and everything it learned is in its state_dict: a fresh copy loaded from it agrees
    torch.manual_seed(1)
    copy = build("hamur", schema, P).eval()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(copy(batch), together)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"hidden": []}, "hidden needs at least one layer size"),
        ({"adapters": 3}, "adapters is 3, but there are only 2 hidden layers"),
        ({"k": 0}, "k must be at least 1"),
        ({"bottleneck": -2}, "bottleneck must be at least 1"),
        ({"drop": ["hn"]}, "no ablation switch 'hn'; its switches are: adapter, hyper, norm"),
    ],
)
def test_bad_params_are_one_line_errors(params, match, schema):
    with pytest.raises(UserError, match=match):
        build("hamur", schema, {**P, **params})


@pytest.mark.slow
def test_learns_planted_signal():
    assert_learns_planted("hamur")

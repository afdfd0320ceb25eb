"""HiNet: shapes, gradients, the scenario layer against a plain per-row loop, the SAN's
exclusion of the own scenario, each switch, batch independence at eval, parameter checks,
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

P = SMALL["hinet"]


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("drop", [[], ["san"], ["sei"], ["san", "sei"]], ids=str)
def test_shapes_and_every_parameter_gets_gradient(drop, schema, batch):
    torch.manual_seed(0)
    model = build("hinet", schema, {**P, "drop": drop}).train()
    assert_trains(model, batch)
    S = schema.num_scenarios
    for n, p in model.named_parameters():  # every scenario's task slice is trained
        if n.startswith(("towers.", "task_gate.", "task_specific.")):
            assert (p.grad.reshape(S, -1).abs().sum(1) > 0).all(), n


def loop_representation(model, batch) -> torch.Tensor:
    """The scenario layer one row at a time, from the formulas: SEI_g(x) = sum_k
    softmax(x W_g)_k MLP_gk(x) (each layer ReLU(BN(h W + c)), BN with its running
    statistics); a = softmax(MLP(e_s)); transfer = sum_{j != s} a_j SEI_j(x);
    out = [transfer ++ SEI_s(x) ++ SEI_shared(x)]."""
    S, K = model.num_scenarios, model.sei.K
    x = model.embedding.fields(batch).flatten(1)
    stack = model.sei.experts
    rows = []
    for b in range(x.shape[0]):
        seis = []
        for g in range(S + 1):
            logits = x[b] @ model.sei.gates.weight[g * K : (g + 1) * K].T
            gate = torch.softmax(logits + model.sei.gates.bias[g * K : (g + 1) * K], 0)
            out = 0
            for k in range(K):
                h = x[b]
                for layer, bn in zip(stack.layers, stack.norms):
                    h = h @ layer.weight[g * K + k] + layer.bias[g * K + k, 0]
                    n = h.shape[0]
                    sl = slice((g * K + k) * n, (g * K + k + 1) * n)
                    h = (h - bn.running_mean[sl]) / torch.sqrt(bn.running_var[sl] + bn.eps)
                    h = torch.relu(h * bn.weight[sl] + bn.bias[sl])
                out = out + gate[k] * h
            seis.append(out)
        s = int(batch.scenario[b])
        a = torch.softmax(model.san(model.embedding.scenario_table.weight[s]), 0)
        transfer = sum(a[j] * seis[j] for j in range(S) if j != s)
        rows.append(torch.cat([transfer, seis[s], seis[S]]))
    return torch.stack(rows)


def test_scenario_layer_matches_a_per_row_loop(schema, batch):
    torch.manual_seed(0)
    model = spread_embeddings(build("hinet", schema, P)).eval()
    with torch.no_grad():  # BatchNorm statistics and affine off their identity start
        for bn in model.sei.experts.norms:
            bn.running_mean.normal_(0.0, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_(1.0, 0.2)
            bn.bias.normal_(0.0, 0.1)
        got = model.scenario_representation(batch)
        torch.testing.assert_close(got, loop_representation(model, batch))


def test_san_reads_only_the_other_scenarios(schema, batch):
    """Moving scenario j's specific SEI moves the transfer part of every row not in j and the
    own part of the rows in j only."""
    torch.manual_seed(0)
    model = spread_embeddings(build("hinet", schema, P)).eval()
    h = model.sei.out_dim
    K, j = model.sei.K, 1
    with torch.no_grad():
        before = model.scenario_representation(batch)
        model.sei.experts.layers[-1].bias[j * K : (j + 1) * K] += 1.0
        after = model.scenario_representation(batch)
    moved = (after - before).abs()
    mine = batch.scenario == j
    transfer, own, shared = moved[:, :h], moved[:, h : 2 * h], moved[:, 2 * h :]
    assert (transfer[mine] == 0).all() and (transfer[~mine].amax(1) > 1e-3).all()
    assert (own[~mine] == 0).all() and (own[mine].amax(1) > 1e-3).all()
    assert (shared == 0).all()


def test_switches_remove_their_parts(schema, batch):
    torch.manual_seed(0)
    full = spread_embeddings(build("hinet", schema, P)).eval()
    no_san = build("hinet", schema, {**P, "drop": ["san"]}).eval()
    no_sei = build("hinet", schema, {**P, "drop": ["sei"]}).eval()
    S, K, h = schema.num_scenarios, P["sub_experts"], full.sei.out_dim
    assert no_san.san is None and full.san is not None
    assert no_sei.sei.K == 1 and no_sei.sei.gates is None
    # san: its MLP, and the task layer's input weights of the transfer third
    E_sp, E_sh, h1 = P["task_specific_experts"], P["task_shared_experts"], 16
    per_input = S * E_sp * h1 + E_sh * h1 + S * (E_sp + E_sh)
    assert n_params(full) - n_params(no_san) == n_params(full.san) + h * per_input
    # sei: (S + 1) (K - 1) sub-experts and the (S + 1) gates
    one_mlp = sum(p.numel() for p in full.sei.experts.parameters()) // ((S + 1) * K)
    assert n_params(full) - n_params(no_sei) == (
        (S + 1) * (K - 1) * one_mlp + n_params(full.sei.gates)
    )
    with torch.no_grad():
        out = full(batch)
        load_shared(full, no_san)
        assert (out - no_san(batch)).abs().max() > 1e-4
        # without the SAN the representation is the full one's last two thirds
        torch.testing.assert_close(
            no_san.scenario_representation(batch), full.scenario_representation(batch)[:, h:]
        )


def test_eval_score_does_not_depend_on_batch_mates(schema):
    """A row scored with its batch or alone gets the same score (a batch statistic at eval
    would fail this)."""
    torch.manual_seed(0)
    model = spread_embeddings(build("hinet", schema, P))
    warmed_up(model, schema)
    assert_rows_alone_match(model, make_batch(schema, 24, seed=4))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"sei_hidden": []}, "sei_hidden needs at least one layer size"),
        ({"task_expert_hidden": []}, "task_expert_hidden needs at least one layer size"),
        ({"sub_experts": 0}, "sub_experts must be at least 1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"drop": ["gate"]}, "no ablation switch 'gate'; its switches are: san, sei"),
    ],
)
def test_bad_params_are_one_line_errors(params, match, schema):
    with pytest.raises(UserError, match=match):
        build("hinet", schema, {**P, **params})


@pytest.mark.slow
def test_learns_planted_signal():
    assert_learns_planted("hinet")

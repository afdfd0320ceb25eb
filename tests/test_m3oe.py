"""M3oE: shapes, gradients, the two-level fusion against a plain per-row loop, each switch
(the AutoML one: fusion weights that stay put), batch independence at eval, parameter
checks, planted signal."""

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

P = SMALL["m3oe"]
SWITCHES = ["shared", "domain", "task", "automl"]


def n_params(m: torch.nn.Module | None) -> int:
    return 0 if m is None else sum(p.numel() for p in m.parameters())


def spread(model: torch.nn.Module) -> torch.nn.Module:
    """Embeddings at std 0.5 instead of 0.01, so the gates see distinct inputs; fusion
    logits moved off their common start, so a mix-up of a, b_d and b_t shows."""
    spread_embeddings(model)
    with torch.no_grad():
        for name, v in [("a", 0.3), ("b_d", -0.4), ("b_t", 1.7)]:
            if getattr(model, name, None) is not None:
                getattr(model, name).fill_(v)
    return model


@pytest.mark.parametrize("drop", [[], *([s] for s in SWITCHES), ["shared", "task"]], ids=str)
def test_shapes_and_every_parameter_gets_gradient(drop, schema, batch):
    torch.manual_seed(0)
    model = spread(build("m3oe", schema, {**P, "drop": drop})).train()
    assert_trains(model, batch)
    S = schema.num_scenarios
    for n, p in model.named_parameters():  # every scenario's slice is trained
        if n.startswith(("gate.", "towers.", "bottom.star.scenario_", "bottom.norm.")):
            assert (p.grad.reshape(S, -1).abs().sum(1) > 0).all(), n


def loop_fused(model, batch) -> torch.Tensor:
    """The fusion one row at a time, from the formulas (each expert layer Linear, BatchNorm
    with running statistics, ReLU): e = bottom(x);
    f = sum_e softmax(e G_s)_e S_e(e) + sigma(b_d) [sigma(a) D_s(e)
    + (1 - sigma(a)) / (S - 1) sum_{j != s} D_j(e)] + sigma(b_t) T(e)."""
    S, E = model.num_scenarios, model.E
    x = model.embedding.fields(batch).flatten(1)
    e = model.bottom(x, ScenarioGroups(batch.scenario, S))
    sig = torch.sigmoid
    rows = []
    for b in range(x.shape[0]):
        s = int(batch.scenario[b])

        def expert(i, h=e[b]):
            for layer, bn in zip(model.experts.layers, model.experts.norms):
                z = h @ layer.weight[i] + layer.bias[i, 0]
                u = slice(i * z.shape[0], (i + 1) * z.shape[0])  # expert i's units of the norm
                z = (z - bn.running_mean[u]) / torch.sqrt(bn.running_var[u] + bn.eps)
                h = torch.relu(z * bn.weight[u] + bn.bias[u])
            return h

        g = torch.softmax(e[b] @ model.gate.weight[s] + model.gate.bias[s], 0)
        shared = sum(g[i] * expert(i) for i in range(E))
        others = sum(expert(E + j) for j in range(S) if j != s) / (S - 1)
        domain = sig(model.a) * expert(E + s) + (1 - sig(model.a)) * others
        rows.append(shared + sig(model.b_d) * domain + sig(model.b_t) * expert(E + S))
    return torch.stack(rows)


def test_fusion_matches_a_per_row_loop(schema, batch):
    torch.manual_seed(0)
    model = spread(build("m3oe", schema, P))
    model.train()
    with torch.no_grad():  # running statistics off their init
        model(make_batch(schema, 96, seed=5))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.fused(batch), loop_fused(model, batch))


def test_switches_remove_their_parts(schema, batch):
    torch.manual_seed(0)
    full = spread(build("m3oe", schema, P)).eval()
    ablated = {s: build("m3oe", schema, {**P, "drop": [s]}).eval() for s in SWITCHES}
    S, E = schema.num_scenarios, P["num_experts"]
    one_expert = n_params(full.experts) // (E + S + 1)
    assert ablated["shared"].E == 0 and ablated["shared"].gate is None
    assert ablated["domain"].D == 0 and ablated["domain"].a is None
    assert ablated["domain"].b_d is None and ablated["task"].b_t is None
    assert n_params(full) - n_params(ablated["shared"]) == E * one_expert + n_params(full.gate)
    assert n_params(full) - n_params(ablated["domain"]) == S * one_expert + 2  # a, b_d
    assert n_params(full) - n_params(ablated["task"]) == one_expert + 1  # b_t
    assert n_params(full) - n_params(ablated["automl"]) == 3
    # without the AutoML part the fusion weights are fixed values, not learned ones
    fixed = dict(ablated["automl"].named_buffers())
    assert {"a", "b_d", "b_t"} <= set(fixed) and all(
        fixed[n].item() == 1.0 for n in "a b_d b_t".split()
    )
    with torch.no_grad():
        out = full(batch)
        for s, model in ablated.items():
            load_shared(full, model)  # `automl` keeps full's values, fixed: the same forward
            if s == "automl":
                torch.testing.assert_close(model(batch), out)
            else:
                assert (out - model(batch)).abs().max() > 1e-4, s


def test_fusion_weights_learn_only_with_automl(schema, batch):
    """One Adam step moves a, b_d and b_t, and leaves them put without the AutoML part."""
    for drop, moves in [([], True), (["automl"], False)]:
        torch.manual_seed(0)
        model = spread(build("m3oe", schema, {**P, "drop": drop})).train()
        before = [float(getattr(model, n).detach()) for n in ("a", "b_d", "b_t")]
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
        loss.backward()
        opt.step()
        after = [float(getattr(model, n).detach()) for n in ("a", "b_d", "b_t")]
        assert all((x != y) == moves for x, y in zip(before, after)), (drop, before, after)


def test_eval_score_does_not_depend_on_batch_mates(schema):
    torch.manual_seed(0)
    model = spread(build("m3oe", schema, P))
    warmed_up(model, schema)
    batch = make_batch(schema, 24, seed=4)
    together = assert_rows_alone_match(model, batch)
    # everything it learned is in its state_dict, the fusion weights included
    torch.manual_seed(1)
    copy = build("m3oe", schema, P).eval()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(copy(batch), together)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"bottom_hidden": []}, "bottom_hidden needs at least one layer size"),
        ({"expert_hidden": []}, "expert_hidden needs at least one layer size"),
        ({"num_experts": 0}, "num_experts must be at least 1"),
        ({"drop": ["shared", "domain", "task"]}, "removes all three expert modules"),
        ({"drop": ["nas"]}, "no ablation switch 'nas'; its switches are: shared, domain, task"),
    ],
)
def test_bad_params_are_one_line_errors(params, match, schema):
    with pytest.raises(UserError, match=match):
        build("m3oe", schema, {**P, **params})


@pytest.mark.slow
def test_learns_planted_signal():
    assert_learns_planted("m3oe")

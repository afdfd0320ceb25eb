"""AESM2: shapes and gradients, the KL-based expert selection and the layer's mixing against
a plain float64 loop of the paper's rule, the auxiliary loss against its formula, switches,
parameter checks, selection report, planted signal."""

import math

import pytest
import torch
from conftest import load_shared, make_batch, make_schema, spread_embeddings, train_and_auc

from msctr.errors import UserError
from msctr.models.aesm2 import ScenarioLayer, select_experts
from msctr.models.registry import ModelOutput, build, parse_params

SMALL = {
    "embed_dim": 8,
    "num_layers": 2,
    "num_experts": 4,
    "expert_hidden": [16],
    "top_k_specific": 1,
    "top_k_shared": 1,
    "tower_hidden": [8],
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("drop", [[], ["aux"], ["select"]])
def test_shapes_loss_and_every_parameter_gets_gradient(schema, drop):
    # 4 experts, 1 specific + 1 shared per row: over 128 rows of 3 scenarios (and with the
    # training noise) every expert of both layers is selected by some row, which the
    # selection counts confirm, so every expert must get a gradient
    batch = make_batch(schema, 128)
    torch.manual_seed(0)
    model = spread_embeddings(build("aesm2", schema, {**SMALL, "drop": drop})).train()
    out = model(batch)
    assert isinstance(out, ModelOutput) and out.logit.shape == (len(batch),)
    assert out.aux_loss.dim() == 0 and torch.isfinite(out.aux_loss)
    assert (out.aux_loss > 0) == (drop == [])
    if "select" not in drop:
        for layer in model.layers:
            assert (layer.specific_counts.sum(0) + layer.shared_counts.sum(0) > 0).all()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out.logit, batch.label)
    assert torch.isfinite(bce)
    (bce + out.aux_loss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"no gradient: {missing}"


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) with 0 log 0 = 0."""
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def paper_selection(gates: torch.Tensor, scenario: torch.Tensor, k_sp: int, k_sh: int):
    """The selection rule one row and one expert at a time, in float64 Python: expert j's
    distribution over scenarios P_j = softmax_s(G[s, j]); its divergence from the one-hot of
    the row's scenario and from the uniform; the k smallest of each are selected; the losses
    are the means of the selected divergences over rows and selected experts."""
    B, S, E = gates.shape
    specific, shared, sum_sp, sum_sh = [], [], 0.0, 0.0
    for b in range(B):
        kl_sp, kl_sh = [], []
        for j in range(E):
            col = [float(gates[b, s, j]) for s in range(S)]
            z = sum(math.exp(c) for c in col)
            P = [math.exp(c) / z for c in col]
            onehot = [1.0 if s == int(scenario[b]) else 0.0 for s in range(S)]
            kl_sp.append(kl(onehot, P))
            kl_sh.append(kl([1.0 / S] * S, P))
        sp = sorted(range(E), key=lambda j: kl_sp[j])[:k_sp]
        sh = sorted(range(E), key=lambda j: kl_sh[j])[:k_sh]
        specific.append(set(sp))
        shared.append(set(sh))
        sum_sp += sum(kl_sp[j] for j in sp)
        sum_sh += sum(kl_sh[j] for j in sh)
    return specific, shared, sum_sp / (B * k_sp), sum_sh / (B * k_sh)


@pytest.mark.parametrize("k_sp,k_sh", [(1, 1), (2, 3), (6, 6)])
def test_selection_matches_a_loop_of_the_paper_rule(k_sp, k_sh):
    torch.manual_seed(0)
    B, S, E = 9, 3, 6
    gates = 2.0 * torch.randn(B, S, E, dtype=torch.float64)
    scenario = torch.arange(B) % S
    sel = select_experts(gates, scenario, k_sp, k_sh)
    specific, shared, l_sp, l_sh = paper_selection(gates, scenario, k_sp, k_sh)
    assert [set(r.tolist()) for r in sel.specific] == specific
    assert [set(r.tolist()) for r in sel.shared] == shared
    assert sel.loss_sp.item() == pytest.approx(l_sp, rel=1e-12)
    assert sel.loss_sh.item() == pytest.approx(l_sh, rel=1e-12)


def test_specific_and_shared_experts_on_a_constructed_gate():
    """Expert 0 belongs to scenario 0 (large logit there), expert 1 to scenario 1, expert 2
    has the same logit everywhere (shared), expert 3 is in between: a row of scenario 0
    picks expert 0 as specific and expert 2 as shared, a row of scenario 1 expert 1 and 2."""
    col = torch.tensor([[5.0, -5.0, 0.0, 1.0], [-5.0, 5.0, 0.0, 0.0], [-5.0, -5.0, 0.0, -1.0]])
    gates = col.expand(2, 3, 4)
    sel = select_experts(gates, torch.tensor([0, 1]), 1, 1)
    assert sel.specific.tolist() == [[0], [1]]
    assert sel.shared.tolist() == [[2], [2]]
    assert sel.loss_sh.item() == pytest.approx(0.0, abs=1e-7)  # expert 2 is exactly uniform


def test_layer_mixes_the_selected_experts_by_the_own_scenario_gate(schema):
    """h_(l+1) = sum over the selected experts j of softmax_selected(G[s*, j]) Expert_j(h),
    checked one row at a time in float64 (eval: no noise, BatchNorm on running statistics)."""
    torch.manual_seed(0)
    p = parse_params("aesm2", {**SMALL, "num_experts": 5, "top_k_specific": 2})
    layer = ScenarioLayer(12, 4, 3, p, select=True).double().eval()
    h = torch.randn(10, 12, dtype=torch.float64)
    e_s = torch.randn(10, 4, dtype=torch.float64)
    scenario = torch.arange(10) % 3
    out, sel = layer(h, e_s, scenario)
    experts = layer.experts(h)  # [B, E, h]
    gates = layer.gates(h, e_s)  # [B, S, E]
    for b in range(10):
        chosen = sorted(set(sel.specific[b].tolist()) | set(sel.shared[b].tolist()))
        g = gates[b, scenario[b], chosen]
        w = torch.exp(g) / torch.exp(g).sum()
        expected = sum(w[i] * experts[b, j] for i, j in enumerate(chosen))
        torch.testing.assert_close(out[b], expected, rtol=1e-12, atol=1e-12)


def test_aux_loss_is_the_weighted_sum_of_the_layers_kl_losses(schema, batch):
    """aux = specific_weight * sum_l L_sp + shared_weight * sum_l L_sh, with L_sp / L_sh the
    mean over rows and selected experts of KL(onehot || P_j) = -log P_j[s*] and
    KL(uniform || P_j) = sum_s (1/S) log((1/S) / P_j[s]), recomputed layer by layer."""
    torch.manual_seed(0)
    params = {**SMALL, "specific_weight": 0.3, "shared_weight": 0.7}
    model = spread_embeddings(build("aesm2", schema, params)).double().eval()
    with torch.no_grad():
        aux = model(batch).aux_loss
        emb = model.embedding.fields(batch)
        e_s, h = emb[:, 0], emb.flatten(1)
        S = schema.num_scenarios
        expected = 0.0
        for layer in model.layers:
            gates = layer.gates(h, e_s)
            P = torch.softmax(gates, dim=1)  # [B, S, E] over scenarios
            kl_sp = -torch.log(P[torch.arange(len(batch)), batch.scenario])  # [B, E]
            kl_sh = ((1.0 / S) * torch.log((1.0 / S) / P)).sum(1)  # [B, E]
            sp = kl_sp.min(1).values  # k = 1: the selected expert has the smallest KL
            sh = kl_sh.min(1).values
            expected += 0.3 * sp.mean().item() + 0.7 * sh.mean().item()
            h, _ = layer(h, e_s, batch.scenario)
    assert aux.item() == pytest.approx(expected, rel=1e-10)


def test_switches(schema, batch):
    torch.manual_seed(0)
    full = spread_embeddings(build("aesm2", schema, SMALL)).eval()
    no_aux = build("aesm2", schema, {**SMALL, "drop": ["aux"]}).eval()
    no_select = build("aesm2", schema, {**SMALL, "drop": ["select"]}).eval()
    # neither switch has parameters to remove: the selection and the KL losses are computed
    # from the gates, which plain softmax gating needs as well
    assert n_params(full) == n_params(no_aux) == n_params(no_select)
    assert len(load_shared(full, no_aux)) == len(full.state_dict())
    assert len(load_shared(full, no_select)) == len(full.state_dict())
    with torch.no_grad():
        out, out_no_aux, out_no_select = full(batch), no_aux(batch), no_select(batch)
    # aux: the same logits (eval: no noise), no auxiliary loss
    torch.testing.assert_close(out_no_aux.logit, out.logit, rtol=0, atol=0)
    assert out.aux_loss > 0 and out_no_aux.aux_loss == 0
    # select: every expert mixed (the logits move), no auxiliary loss
    assert (out_no_select.logit - out.logit).abs().max() > 1e-4
    assert out_no_select.aux_loss == 0
    # what select's gating is: softmax over all experts of the row's own scenario gate
    layer = no_select.layers[0]
    with torch.no_grad():
        emb = no_select.embedding.fields(batch)
        h, e_s = emb.flatten(1), emb[:, 0]
        g = layer.gates(h, e_s)[torch.arange(len(batch)), batch.scenario]
        mixed = torch.einsum("be,beh->bh", torch.softmax(g, -1), layer.experts(h))
        torch.testing.assert_close(layer(h, e_s, batch.scenario)[0], mixed)


def test_gate_noise_only_in_training(schema, batch):
    torch.manual_seed(0)
    model = spread_embeddings(build("aesm2", schema, {**SMALL, "gate_noise": 5.0}))
    with torch.no_grad():
        model.eval()
        a, b = model(batch).aux_loss, model(batch).aux_loss
        assert a == b
        model.train()
        c, d = model(batch).aux_loss, model(batch).aux_loss
        assert c != d


def test_selection_report(schema, batch):
    torch.manual_seed(0)
    model = spread_embeddings(build("aesm2", schema, {**SMALL, "top_k_shared": 2})).train()
    for _ in range(3):
        model(batch)
    report = model.report()
    sp = torch.tensor(report["specific_selection_rate"])  # [L, S, E]
    sh = torch.tensor(report["shared_selection_rate"])
    assert sp.shape == sh.shape == (2, schema.num_scenarios, 4)
    # each row selects k experts of each kind: the rates of a (layer, scenario) sum to k
    # (up to the report's rounding to 4 decimals)
    torch.testing.assert_close(sp.sum(-1), torch.full((2, 3), 1.0), rtol=0, atol=1e-3)
    torch.testing.assert_close(sh.sum(-1), torch.full((2, 3), 2.0), rtol=0, atol=1e-3)
    model.eval()
    model(batch)  # evaluation does not count
    assert model.report() == report
    assert build("aesm2", schema, {**SMALL, "drop": ["select"]}).report() is None


@pytest.mark.parametrize(
    "params,message",
    [
        ({"top_k_specific": 9}, r"top_k_specific \(9\) cannot exceed num_experts \(8\)"),
        ({"num_experts": 2, "top_k_shared": 3}, r"top_k_shared \(3\) cannot exceed"),
        ({"top_k_specific": 0}, "top_k_specific must be at least 1"),
        ({"num_layers": 0}, "num_layers must be at least 1"),
        ({"expert_hidden": []}, "expert_hidden needs at least one layer size"),
        ({"gate_noise": -0.1}, "gate_noise must be >= 0"),
        ({"specific_weight": -1.0}, "specific_weight must be >= 0"),
        ({"shared_weight": -1.0}, "shared_weight must be >= 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"drop": ["experts"]}, "switches are: select, aux"),
    ],
)
def test_params_checked(params, message):
    with pytest.raises(UserError, match=message):
        build("aesm2", make_schema(), params)


@pytest.mark.slow
def test_learns_planted_signal():
    # planted rule (no sequence): Bayes 0.868; an additive model without the scenario x f0
    # interaction 0.810; DNN (hidden [64, 32], no dropout) 0.846 from this helper at seed 0.
    # DNN 0.861 at seed 1. AESM2 with its default layers reached 0.862 (seed 0) and 0.861
    # (seed 1); with `select` dropped (plain softmax gating) 0.859 / 0.860.
    schema = make_schema(with_sequence=False)
    torch.manual_seed(0)
    model = build("aesm2", schema, {"embed_dim": 8, "dropout": 0.0})
    assert train_and_auc(model, schema) > 0.835

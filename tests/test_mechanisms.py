"""Each paper mechanism computes what docs/models say, and `forward` really uses it.

The references here are written from the equations, one sample / field / behavior at a
time where that is clearer, and read only the model's weights: a model that computes a gate
or a weighting but does not apply it, or feeds it the wrong input, gives other logits.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import make_batch, make_schema, spread_embeddings

from msctr.models.registry import build
from msctr.models.sfpnet import FieldTailoring, ScenarioTailoringBlock, SFPNetParams

ATOL = 1e-5


def with_scenario(batch, s: int):
    return dataclasses.replace(batch, scenario=torch.full_like(batch.scenario, s))


# ----------------------------------------------------------------------------------- HierRec


def head_weights_by_eq6(model) -> torch.Tensor:
    """weight_norm[s, g] = softmax over fields of (chunk g of e_s) W_g + b_g, or of the
    full-vector FC reshaped to [G, I] (paper form): [S, G, I]."""
    table = model.embedding.scenario_table.weight
    G, I, d = model.heads, model.num_common_fields, model.dim
    out = torch.empty(table.shape[0], G, I)
    for s in range(table.shape[0]):
        for g in range(G):
            if model.head_weights_from == "chunks":
                k = d // G
                logits = table[s, g * k : (g + 1) * k] @ model.head_weight[g] + model.head_bias[g]
            else:
                full = table[s] @ model.head_weight + model.head_bias
                logits = full.view(G, I)[g]
            out[s, g] = torch.softmax(logits, dim=0)
    return out


def sharpen_heads(model) -> None:
    """Head-weight generator at a larger scale, so the heads' field weights are far from
    uniform and the choice of weights shows in the logits."""
    with torch.no_grad():
        model.head_weight.mul_(20.0)
        model.head_bias.mul_(5.0)


def hierrec_with_weights(model, batch, w: torch.Tensor) -> torch.Tensor:
    """HierRec's forward (Eq. 3-9) with the implicit head weights given per row, w [B, G, I]."""
    e_c = model.embedding.fields(batch)
    e_s = model.embedding.scenario(batch)
    B, I, d = e_c.shape
    h = model.global_fc(e_c.reshape(B, I * d))  # O_global
    if model.use_explicit:
        h = model.explicit_som(h, model.explicit_fc(e_s).unsqueeze(1)).squeeze(1)  # O_explicit
    ie = w.unsqueeze(-1) * e_c.unsqueeze(1)  # IE[g] = w[g] * E_c (Eq. 7)
    if model.field_attention is not None:
        ie = model.field_attention(ie)
    h = model.implicit_som(h, ie.reshape(B, w.shape[1], I * d)).reshape(B, -1)
    return model.output(h).squeeze(-1)


@pytest.mark.parametrize("how", ["chunks", "full"])
@pytest.mark.parametrize("attention", [True, False])
def test_hierrec_forward_uses_the_reported_head_weights(how, attention):
    schema = make_schema(num_scenarios=4)
    batch = make_batch(schema, 48, seed=3)
    torch.manual_seed(0)
    p = {"heads": 4, "head_weights_from": how, "field_attention": attention}
    model = build("hierrec", schema, p).eval()
    spread_embeddings(model, 40.0)
    sharpen_heads(model)
    report = model.report()
    reported = torch.tensor(report["head_weights"], dtype=torch.float32)  # [S, G, I]
    assert report["fields"] == model.field_names
    torch.testing.assert_close(reported, head_weights_by_eq6(model), atol=1e-6, rtol=1e-5)
    # the heads' weights differ from scenario to scenario (paper Figure 6)
    for a in range(4):
        for b in range(a):
            assert (reported[a] - reported[b]).abs().max() > 1e-3, (a, b)
    with torch.no_grad():
        want = hierrec_with_weights(model, batch, reported[batch.scenario])
        torch.testing.assert_close(model(batch), want, atol=ATOL, rtol=1e-4)
        # and another scenario's weights would give other logits
        wrong = hierrec_with_weights(model, batch, reported[(batch.scenario + 1) % 4])
        assert (wrong - want).abs().max() > 1e-3


def test_hierrec_without_explicit_layer_reads_the_scenario_through_the_heads():
    """With `drop: [e]` the implicit heads are the only way the scenario reaches the output:
    every row's logit must change when only its scenario does."""
    schema = make_schema(num_scenarios=3)
    batch = make_batch(schema, 48, seed=4)
    torch.manual_seed(0)
    model = build("hierrec", schema, {"drop": ["e"]}).eval()
    spread_embeddings(model, 40.0)
    sharpen_heads(model)
    with torch.no_grad():
        outs = [model(with_scenario(batch, s)) for s in range(3)]
    for a in range(3):
        for b in range(a):
            assert (outs[a] - outs[b]).abs().min() > 1e-6, (a, b)


# ------------------------------------------------------------------------------------ SFPNet


def test_field_tailoring_on_a_hand_example():
    """Eq. 6 with one field, d_in = d_out = 1: W1 = 2, b1 = -1, W2 = -1, b2 = 0.5, c = 4.
    x = 1.5: ReLU(2) + sigmoid(-1) * 4 = 2 + 1.07577 = 3.07577
    x = -1:  ReLU(-3) + sigmoid(1.5) * 4 = 0 + 3.27030 = 3.27030"""
    t = FieldTailoring(1, 1, 1)
    with torch.no_grad():
        t.weight.copy_(torch.tensor([[[2.0, -1.0]]]))
        t.bias.copy_(torch.tensor([[-1.0, 0.5]]))
    x = torch.tensor([[[1.5]], [[-1.0]]])
    c = torch.full((2, 1, 1), 4.0)
    got = t(x, c).flatten()
    torch.testing.assert_close(got, torch.tensor([3.075766, 3.270302]), atol=1e-5, rtol=0)


def block_by_equations(block, x, v, mask, s):
    """Eqs. 2-7 for one block, one sample / field / behavior at a time."""
    B, n, d_in = x.shape
    d_out = block.d_out
    g0, _, ln, g1 = block.gate
    a0, _, a1 = block.aggregate
    w_f, b_f = block.tailor_fields.weight, block.tailor_fields.bias
    w_b, b_b = block.tailor_behaviors.weight, block.tailor_behaviors.bias
    xs, vs = [], []
    for r in range(B):
        valid = v[r][mask[r]]
        if len(valid):  # Eq. 2: mean and population std of the valid behaviors
            std = torch.sqrt(valid.var(0, unbiased=False) + block.eps)
            pooled = torch.cat([valid.mean(0), std])
        else:
            pooled = torch.zeros(2 * d_in)
        X = torch.cat([x[r].flatten(), pooled])  # (x_1..x_n, B)
        hidden = F.layer_norm(
            torch.relu(g0.weight @ torch.cat([X, s[r]]) + g0.bias),
            ln.normalized_shape,
            ln.weight,
            ln.bias,
            ln.eps,
        )
        A = torch.sigmoid(g1.weight @ hidden + g1.bias)  # Eq. 3
        X_hat = X * A  # Eq. 4
        C = a1.weight @ torch.relu(a0.weight @ X_hat + a0.bias) + a1.bias  # Eq. 5
        c_b = block.seq_context.weight @ C[n * d_out :] + block.seq_context.bias
        row = []
        for i in range(n):  # Eq. 6 with field i's own weights
            xi = X_hat[i * d_in : (i + 1) * d_in]
            h1 = xi @ w_f[i, :, :d_out] + b_f[i, :d_out]
            h2 = xi @ w_f[i, :, d_out:] + b_f[i, d_out:]
            row.append(torch.relu(h1) + torch.sigmoid(h2) * C[i * d_out : (i + 1) * d_out])
        xs.append(torch.stack(row))
        beh = []
        for j in range(v.shape[1]):  # Eq. 7, weights shared by all behaviors
            h4 = w_b[:d_out] @ v[r, j] + b_b[:d_out]
            h5 = w_b[d_out:] @ v[r, j] + b_b[d_out:]
            beh.append(torch.relu(h4) + torch.sigmoid(h5) * c_b)
        vs.append(torch.stack(beh))
    return torch.stack(xs), torch.stack(vs)


@pytest.mark.parametrize("d_in, d_out", [(4, 4), (4, 6)])
def test_sfpnet_block_follows_equations_2_to_7(d_in, d_out):
    torch.manual_seed(0)
    n, d_s, Lb, B = 3, 6, 7, 9
    block = ScenarioTailoringBlock(n, d_in, d_out, d_s, SFPNetParams(), True, True, True)
    with torch.no_grad():
        for p in block.parameters():  # non-zero biases and LayerNorm affine too
            p.normal_(0.0, 0.5)
    x, v, s = torch.randn(B, n, d_in), torch.randn(B, Lb, d_in), torch.randn(B, d_s)
    mask = torch.rand(B, Lb) < 0.6
    mask[0] = False  # a row without behaviors
    mask[1] = True
    got_x, got_v = block(x, v, mask, s)
    want_x, want_v = block_by_equations(block, x, v, mask, s)
    torch.testing.assert_close(got_x, want_x, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(got_v, want_v, atol=ATOL, rtol=1e-4)


# ------------------------------------------------------------------------------ PEPNet, HMDN


def gate_nu(gate, inp: torch.Tensor) -> torch.Tensor:
    """GateNU: gamma * sigmoid(W2 ReLU(W1 x + b1) + b2)."""
    l1, _, l2 = gate.net
    return gate.gamma * torch.sigmoid(F.linear(torch.relu(F.linear(inp, l1.weight, l1.bias)),
                                               l2.weight, l2.bias))  # fmt: skip


def epnet_by_equations(epnet, emb, domain):
    """O_ep = GateNU(domain ++ sg(E)) (x) E, one gate value per field (or per unit)."""
    B, n, d = emb.shape
    delta = gate_nu(epnet.gate, torch.cat([domain, emb.flatten(1)], dim=1))
    return emb * delta.view(B, n, d if epnet.per_element else 1)


def ppnet_by_equations(ppnet, x, prior):
    """H^l = GateNU^l(prior ++ sg(x)) (x) ReLU(BN(W^l H^(l-1))), logit = W_out H^L."""
    h = x
    for layer, gate in zip(ppnet.layers, ppnet.gates):
        h = layer(h) * gate_nu(gate, torch.cat([prior, x], dim=1))
    return ppnet.out(h).squeeze(-1)


@pytest.mark.parametrize("scale", ["field", "element"])
def test_pepnet_forward_applies_both_gates(schema, scale):
    batch = make_batch(schema, 48, seed=5)
    torch.manual_seed(0)
    model = build("pepnet", schema, {"embed_dim": 8, "hidden": [32, 16], "epnet_scale": scale})
    model.eval()
    spread_embeddings(model, 40.0)
    with torch.no_grad():
        emb = model.embedding.fields(batch)
        o_ep = epnet_by_equations(model.epnet, emb, emb[:, model.domain_idx].flatten(1))
        want = ppnet_by_equations(model.ppnet, o_ep.flatten(1), emb[:, model.prior_idx].flatten(1))
        torch.testing.assert_close(model(batch), want, atol=ATOL, rtol=1e-4)
        # without the gates (all 1) the logits would be others
        plain = model.ppnet.out(
            model.ppnet.layers[1](model.ppnet.layers[0](emb.flatten(1)))
        ).squeeze(-1)
        assert (plain - want).abs().max() > 1e-3


def hierarchical_representation(quantizer, x_b):
    """s_D = sum_d e(c_d), c_d = nearest code to r_(d-1), r_d = r_(d-1) - e(c_d) (Eq. 1-4)."""
    r, s, rq = x_b, torch.zeros_like(x_b), torch.zeros(x_b.shape[0])
    for _ in range(quantizer.depth):
        e = quantizer.codebook[torch.cdist(r, quantizer.codebook).argmin(1)]
        rq = rq + (1 + quantizer.beta) * (e - r).square().sum(1)
        s, r = s + e, r - e
    return s, rq.mean()


@pytest.mark.parametrize("backbone", ["mmoe", "pepnet"])
def test_hmdn_backbone_gates_read_the_hierarchical_representation(schema, backbone):
    batch = make_batch(schema, 48, seed=6)
    torch.manual_seed(0)
    p = {"embed_dim": 8, "hidden": [32, 16], "depth": 3, "codebook_size": 16}
    model = build("hmdn", schema, {**p, "backbone": backbone}).eval()
    spread_embeddings(model, 20.0)
    with torch.no_grad():
        model.quantizer.codebook.normal_(0.0, 0.3)  # codes near the spread x_b
        emb = model.embedding.fields(batch)
        x, x_b = emb.flatten(1), emb[:, model.dist_idx].flatten(1)
        s, l_rq = hierarchical_representation(model.quantizer, x_b)
        assert (s - x_b).abs().max() > 1e-2  # quantized: s_D is not x_b itself
        if backbone == "mmoe":  # y = head(sum_i softmax(s_D W_g)_i Expert_i(x)) (Eq. 8)
            g = torch.softmax(s @ model.gate.weight.T, dim=-1)
            want = model.head(torch.einsum("be,beh->bh", g, model.experts(x))).squeeze(-1)
        else:  # PEPNet's EPNet and PPNet gates both read s_D
            o_ep = epnet_by_equations(model.epnet, emb, s)
            want = ppnet_by_equations(model.ppnet, o_ep.flatten(1), s)
        out = model(batch)
        torch.testing.assert_close(out.logit, want, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(out.aux_loss, model.p.alpha * l_rq, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------- AdaSparse


@pytest.mark.parametrize("mode", ["fusion", "binarization", "scaling"])
def test_adasparse_forward_applies_the_factors(schema, mode):
    batch = make_batch(schema, 48, seed=7)
    torch.manual_seed(0)
    model = build("adasparse", schema, {"embed_dim": 8, "hidden": [32, 16], "mode": mode})
    model.eval()
    spread_embeddings(model, 40.0)
    p, a = model.p, float(model.alpha)
    with torch.no_grad():
        for pruner in model.pruners:  # push some factors below epsilon / the threshold
            pruner.bias.sub_(torch.linspace(0.0, 12.0, pruner.bias.shape[0]))
        emb = model.embedding.fields(batch)
        e_d = emb[:, model.domain_idx].flatten(1)
        h, zeroed = emb.flatten(1), 0
        for layer, pruner in zip(model.layers, model.pruners):
            h = layer(h)
            v = pruner(torch.cat([e_d, h], dim=1))  # v = W_p [e_d ++ h] + b_p
            if mode == "binarization":
                pi = (torch.sigmoid(a * v) >= 0.5).float()
            elif mode == "scaling":
                pi = p.beta * torch.sigmoid(v)
            else:
                u = p.beta * torch.sigmoid(a * v)
                pi = u * (u >= p.epsilon).float()
            zeroed += int((pi == 0).sum())
            h = h * pi
        want = model.out(h).squeeze(-1)
        torch.testing.assert_close(model(batch).logit, want, atol=ATOL, rtol=1e-4)
    if mode != "scaling":
        assert zeroed > 0  # some neurons really are pruned on this batch

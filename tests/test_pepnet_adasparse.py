"""PEPNet and AdaSparse: shapes, gradients, gate / factor behavior, switches, planted signal.

Planted-signal bound: on conftest's rule (no sequence) the Bayes-optimal AUC is 0.868 and
the DNN reaches about 0.86; the best model *without* the scenario x f0 interaction (f0's
effect averaged over scenarios) scores 0.810. Requiring > 0.83 therefore means the model
learned a good part of the scenario-specific effect, the thing these models exist for.
"""

import dataclasses

import pytest
import torch
from conftest import load_shared, make_batch, make_schema, train_and_auc

from msctr.errors import UserError
from msctr.models.registry import ModelOutput, build, split_output

BOUND = 0.83
SMALL = {"embed_dim": 8, "hidden": [32, 16]}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bce_backward(model, batch) -> torch.Tensor:
    logit, aux = split_output(model(batch))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, batch.label)
    if aux is not None:
        loss = loss + aux
    loss.backward()
    return loss


def with_scenario(batch, s: int):
    return dataclasses.replace(batch, scenario=torch.full_like(batch.scenario, s))


# ----------------------------------------------------------------------------- PEPNet


def test_pepnet_shapes_and_gradients(schema, batch):
    model = build("pepnet", schema, SMALL)
    out = model(batch)
    assert out.shape == (len(batch),)
    assert torch.isfinite(bce_backward(model, batch))
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_pepnet_gates_in_range_and_personalized(schema, batch):
    model = build("pepnet", schema, SMALL).eval()
    n = model.embedding.num_fields
    _, gates = model.run(batch)
    assert gates["epnet"].shape == (len(batch), n, 1)  # one scale per field
    assert [g.shape[1] for g in gates["ppnet"]] == SMALL["hidden"]
    for g in [gates["epnet"], *gates["ppnet"]]:
        assert (g > 0).all() and (g < 2).all()
    # EPNet's gate reads the scenario: changing only the scenario changes the gates
    _, g0 = model.run(with_scenario(batch, 0))
    _, g1 = model.run(with_scenario(batch, 1))
    assert not torch.allclose(g0["epnet"], g1["epnet"])
    elem = build("pepnet", schema, {**SMALL, "epnet_scale": "element"}).eval()
    assert elem.run(batch)[1]["epnet"].shape == (len(batch), n, 8)


def test_pepnet_gate_input_stops_gradient_into_general_embeddings(schema, batch):
    # domain = scenario only: the EPNet gate may train the scenario embedding, but the
    # general embeddings enter it through sg(E) and must get no gradient from it
    model = build("pepnet", schema, SMALL)
    _, gates = model.run(batch)
    gates["epnet"].sum().backward()
    emb = model.embedding
    assert emb.scenario_table.weight.grad is not None and emb.scenario_table.weight.grad.any()
    assert emb.table.weight.grad is None or not emb.table.weight.grad.any()


def test_pepnet_switches_remove_their_gates(schema, batch):
    torch.manual_seed(0)
    full = build("pepnet", schema, SMALL).eval()
    outs = {}
    for s in ("epnet", "ppnet"):
        torch.manual_seed(1)
        m = build("pepnet", schema, {**SMALL, "drop": [s]}).eval()
        assert n_params(m) < n_params(full)
        # every weight the ablated model has is the full model's (all shapes agree), so an
        # output difference comes from the removed gates alone
        assert set(load_shared(full, m)) == set(m.state_dict())
        _, gates = m.run(batch)
        assert gates["epnet"] is None if s == "epnet" else gates["ppnet"] == []
        outs[s] = m(batch)
    ref = full(batch)
    assert not torch.allclose(ref, outs["epnet"]) and not torch.allclose(ref, outs["ppnet"])


def test_pepnet_fields_are_checked(schema):
    with pytest.raises(UserError, match="not a field"):
        build("pepnet", schema, {**SMALL, "prior_fields": ["nope"]})
    m = build("pepnet", schema, {**SMALL, "prior_fields": ["f0", "f1", "x0"]})
    assert m.prior_idx.tolist() == [m.embedding.field_names.index(f) for f in ("f0", "f1", "x0")]


@pytest.mark.slow
def test_pepnet_learns_planted_signal():
    schema = make_schema(with_sequence=False)
    model = build("pepnet", schema, {"embed_dim": 8, "hidden": [64, 32], "dropout": 0.0})
    assert train_and_auc(model, schema) > BOUND


# ----------------------------------------------------------------------------- AdaSparse


@pytest.mark.parametrize("mode", ["fusion", "binarization", "scaling"])
def test_adasparse_shapes_aux_and_gradients(schema, batch, mode):
    model = build("adasparse", schema, {**SMALL, "mode": mode})
    out = model(batch)
    assert isinstance(out, ModelOutput) and out.logit.shape == (len(batch),)
    assert out.aux_loss.dim() == 0 and out.aux_loss > 0
    assert torch.isfinite(bce_backward(model, batch))
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_adasparse_factor_forms(schema, batch):
    for mode in ("fusion", "binarization", "scaling"):
        model = build("adasparse", schema, {**SMALL, "mode": mode, "dropout": 0.0}).eval()
        for pi in model.factors(batch):
            assert pi.shape[0] == len(batch)
            if mode == "binarization":
                assert set(pi.unique().tolist()) <= {0.0, 1.0}
            elif mode == "fusion":  # exactly 0 or in [epsilon, beta)
                assert ((pi == 0) | ((pi >= 0.01) & (pi < 2.0))).all()
            else:
                assert ((pi > 0) & (pi < 2.0)).all()


def test_adasparse_factors_respond_to_scenario(schema, batch):
    model = build("adasparse", schema, SMALL).eval()
    f0 = model.factors(with_scenario(batch, 0))
    f1 = model.factors(with_scenario(batch, 1))
    assert all(not torch.allclose(a, b) for a, b in zip(f0, f1))


def test_adasparse_regularizer_scale_band_and_annealing(schema, batch):
    torch.manual_seed(0)
    a = build("adasparse", schema, {**SMALL, "sparsity_weight": 1.0}).eval()
    torch.manual_seed(0)
    b = build("adasparse", schema, {**SMALL, "sparsity_weight": 3.0}).eval()
    assert torch.allclose(3 * a(batch).aux_loss, b(batch).aux_loss)
    # inside the tolerance band there is no penalty
    torch.manual_seed(0)
    c = build("adasparse", schema, {**SMALL, "sparsity_tolerance": 1.0}).eval()
    assert c(batch).aux_loss == 0
    # alpha grows only in training forwards, and stops at alpha_max
    m = build("adasparse", schema, {**SMALL, "alpha_step": 0.5, "alpha_max": 2.0})
    m.eval()
    m(batch)
    assert float(m.alpha) == 1.0
    m.train()
    m(batch)
    assert float(m.alpha) == 1.5
    m(batch)
    m(batch)
    assert float(m.alpha) == 2.0


def test_adasparse_regularizer_controls_sparsity(schema):
    """Training with a high target prunes far more neurons than with a zero target."""

    def trained_sparsity(target: float) -> float:
        torch.manual_seed(0)
        p = {**SMALL, "mode": "binarization", "sparsity_target": target, "sparsity_weight": 5.0}
        model = build("adasparse", schema, p)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for step in range(40):
            b = make_batch(schema, 128, seed=step)
            bce_backward(model, b)
            opt.step()
            opt.zero_grad()
        model.eval()
        return sum(model.sparsity(make_batch(schema, 256, seed=999))) / len(SMALL["hidden"])

    low, high = trained_sparsity(0.0), trained_sparsity(0.9)
    assert high > 0.7 and low < 0.2


@pytest.mark.slow
def test_adasparse_learns_planted_signal():
    schema = make_schema(with_sequence=False)
    model = build("adasparse", schema, {"embed_dim": 8, "hidden": [64, 32], "dropout": 0.0})
    assert train_and_auc(model, schema) > BOUND

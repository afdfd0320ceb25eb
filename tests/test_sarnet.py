"""SAR-Net: shapes, gradients, the two behavior attentions against a per-row loop, the
scenario-specific transform, the debias networks (training only; each scenario's reaching its
own rows only), each switch, batch independence at eval, parameter checks, planted signal."""

import copy
import math

import pytest
import torch
from conftest import (
    SMALL,
    assert_learns_planted,
    assert_rows_alone_match,
    assert_trains,
    load_shared,
    make_batch,
    make_schema,
    spread_embeddings,
    warmed_up,
)

from msctr.errors import UserError
from msctr.models.registry import build

P = SMALL["sarnet"]
SWITCHES = ["scenario_attention", "item_attention", "transform", "specific"]


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "params",
    [
        {},
        *({"drop": [s]} for s in SWITCHES),
        {"drop": ["scenario_attention", "item_attention"]},
        {"bias_fields": ["f4", "x1"], "scenario_fields": ["f5"]},
        {"bias_fields": ["f4"], "drop": ["specific"]},
    ],
    ids=str,
)
def test_shapes_and_every_parameter_gets_gradient(params, schema, batch):
    torch.manual_seed(0)
    model = build("sarnet", schema, {**P, **params}).train()
    assert_trains(model, batch)
    S = schema.num_scenarios
    for n, p in model.named_parameters():  # every scenario's slice is trained
        if n.startswith(("specific", "gate.", "scenario_gamma", "scenario_beta")):
            assert (p.grad.reshape(S, -1).abs().sum(1) > 0).all(), n


def test_attentions_match_a_per_row_loop(schema, batch):
    """u = sum_j softmax_j((q W_q)(b_j W_k) / sqrt(a)) b_j over the row's valid behaviors, the
    query the scenario embedding (scenario attention) or the mean of the candidate's f1 and f2
    (item attention, the fields the sequence's attributes share); 0 without behaviors."""
    torch.manual_seed(0)
    model = spread_embeddings(build("sarnet", schema, P)).eval()
    v, mask = model.embedding.sequence(batch, 0)
    emb = model.embedding.fields(batch)
    queries = {
        "item": (emb[:, 2] + emb[:, 3]) / 2,  # f1, f2 (field 0 is the scenario)
        "scenario": model.embedding.scenario(batch),
    }
    with torch.no_grad():
        got = model.behaviors(batch, emb)  # [u_t, u_s]
        for k, (att, name) in enumerate(
            [(model.item_attention[0], "item"), (model.scenario_attention[0], "scenario")]
        ):
            rows = []
            for b in range(len(batch)):
                n = int(mask[b].sum())
                if n == 0:
                    rows.append(torch.zeros(v.shape[-1]))
                    continue
                q = att.query.weight @ queries[name][b]
                scores = (v[b, :n] @ att.key.weight.T) @ q / math.sqrt(q.shape[0])
                rows.append(torch.softmax(scores, 0) @ v[b, :n])
            torch.testing.assert_close(got[k], torch.stack(rows))


def test_transform_is_the_rows_own_scenario_scale_and_shift(schema, batch):
    torch.manual_seed(0)
    model = spread_embeddings(build("sarnet", schema, P)).eval()
    plain = build("sarnet", schema, {**P, "drop": ["transform"]}).eval()
    load_shared(model, plain)
    with torch.no_grad():
        model.scenario_gamma.normal_()
        model.scenario_beta.normal_()
        emb = model.embedding.fields(batch)
        x = plain.features(batch, emb)
        s = batch.scenario
        want = torch.stack(
            [x[b] * model.scenario_gamma[s[b]] + model.scenario_beta[s[b]] for b in range(len(s))]
        )
        torch.testing.assert_close(model.features(batch, emb), want)


def test_bias_fields_reach_training_scores_only(schema, batch):
    """The debias networks read the bias fields in training; the main networks never do, so
    evaluation scores do not depend on them at all."""
    torch.manual_seed(0)
    model = spread_embeddings(build("sarnet", schema, {**P, "bias_fields": ["f4", "x1"]}))
    assert model.main_fields.tolist() == [i for i in range(9) if i not in (5, 8)]
    other = make_batch(schema, len(batch), seed=9)
    moved = make_batch(schema, len(batch), seed=0)
    moved.sparse[:, 4] = other.sparse[:, 4]
    moved.dense[:, 1] = other.dense[:, 1]
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(moved), model(batch), rtol=0, atol=0)
        model.train()
        torch.manual_seed(1)
        a = model(batch)
        torch.manual_seed(1)
        assert (model(moved) - a).abs().max() > 1e-4


def test_each_scenarios_bias_network_reaches_its_rows_only(schema):
    """In training a row's specific experts are debiased by its own scenario's bias network:
    moving scenario s's slice of it moves every row of s and no other row."""
    torch.manual_seed(0)
    params = {**P, "bias_fields": ["f4", "x1"], "dropout": 0.0}  # dropout off: repeatable
    model = spread_embeddings(build("sarnet", schema, params)).train()
    batch = make_batch(schema, 96, seed=1)
    batch.scenario = torch.arange(96) % schema.num_scenarios
    with torch.no_grad():
        before = model(batch)
        for s in range(schema.num_scenarios):
            other = copy.deepcopy(model)
            other.specific_bias_net.weight[s].add_(0.5)
            after = other(batch)
            mine = batch.scenario == s
            torch.testing.assert_close(after[~mine], before[~mine], rtol=0, atol=1e-7)
            assert ((after[mine] - before[mine]).abs() > 1e-6).all(), s


def test_switches_remove_their_parts(schema, batch):
    torch.manual_seed(0)
    full = spread_embeddings(build("sarnet", schema, P)).eval()
    S, d, a = schema.num_scenarios, P["embed_dim"], P["att_dim"]
    E_sp, h = P["specific_experts"], P["expert_hidden"][-1]
    variants = {s: build("sarnet", schema, {**P, "drop": [s]}).eval() for s in SWITCHES}
    assert variants["scenario_attention"].scenario_attention is None
    assert variants["item_attention"].item_attention is None
    assert variants["transform"].scenario_gamma is None
    assert variants["specific"].specific is None
    D = full.scenario_gamma.shape[1]
    # an attention: its two projections, and d inputs of every expert's first layer, gate and
    # transform (the output of the attention is d wide)
    first = P["expert_hidden"][0]
    per_input = (S * E_sp + P["shared_experts"]) * first + S * (E_sp + P["shared_experts"])
    for s in ("scenario_attention", "item_attention"):
        att = getattr(full, s)
        assert n_params(full) - n_params(variants[s]) == n_params(att) + d * (per_input + 2 * S)
    assert n_params(full) - n_params(variants["transform"]) == 2 * S * D
    specific = n_params(full.specific) + full.specific_out.numel() + full.specific_out_bias.numel()
    assert n_params(full) - n_params(variants["specific"]) == specific + S * E_sp * D + S * E_sp
    assert a and h
    with torch.no_grad():  # off the identity the transform starts at
        full.scenario_gamma.normal_(1.0, 0.3)
        full.scenario_beta.normal_(0.0, 0.3)
        out = full(batch)
        for m in variants.values():
            load_shared(full, m)
            assert (out - m(batch)).abs().max() > 1e-4


def test_eval_score_does_not_depend_on_batch_mates(schema):
    torch.manual_seed(0)
    model = spread_embeddings(build("sarnet", schema, {**P, "bias_fields": ["f4"]}))
    warmed_up(model, schema)
    assert_rows_alone_match(model, make_batch(schema, 24, seed=4))


def test_works_without_sequences():
    schema = make_schema(with_sequence=False)
    model = build("sarnet", schema, P).train()
    assert_trains(model, make_batch(schema))
    assert model.item_query.shape[0] == 0


@pytest.mark.parametrize(
    "params, match",
    [
        ({"expert_hidden": []}, "expert_hidden needs at least one layer size"),
        ({"att_dim": 0}, "att_dim must be at least 1"),
        ({"bias_fields": ["nope"]}, "bias_fields: 'nope' is not a field of this dataset"),
        ({"bias_fields": ["scenario"]}, "'scenario' cannot be a bias field"),
        ({"scenario_fields": ["f1", "f1"]}, "field 'f1' is listed twice"),
        ({"drop": ["debias"]}, "no ablation switch 'debias'; its switches are: scenario_attention"),
    ],
)
def test_bad_params_are_one_line_errors(params, match, schema):
    with pytest.raises(UserError, match=match):
        build("sarnet", schema, {**P, **params})


@pytest.mark.slow
def test_learns_planted_signal():
    # 0.855 measured
    assert_learns_planted("sarnet", with_sequence=True)

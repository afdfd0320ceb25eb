"""M2M: shapes, gradients, the meta unit and the transformer layer against plain per-row loops
written from the formulas, attention within a row only, each switch, batch independence at
eval, parameter checks, planted signal."""

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
    rows_of,
    spread_embeddings,
    warmed_up,
)

from msctr.errors import UserError
from msctr.models.registry import build
from msctr.models.scenario import ScenarioGroups

P = SMALL["m2m"]
SWITCHES = [
    [],
    ["meta_attention"],
    ["meta_tower"],
    ["transformer"],
    ["meta_attention", "meta_tower"],
]


@pytest.mark.parametrize("drop", SWITCHES, ids=str)
def test_shapes_and_every_parameter_gets_gradient(drop, schema, batch):
    torch.manual_seed(0)
    assert_trains(build("m2m", schema, {**P, "drop": drop}).train(), batch)


def test_meta_unit_matches_a_per_row_loop(schema, batch):
    """Each row through weights generated from its own scenario's knowledge:
    h <- LeakyReLU(h reshape(S_s V + c) + S_s U + u), layer by layer."""
    torch.manual_seed(0)
    model = spread_embeddings(build("m2m", schema, P)).eval()
    unit = model.tower[0]
    h = model.experts.out_dim
    x = torch.randn(len(batch), h)
    with torch.no_grad():
        knowledge = model.knowledge()
        got = unit(x, knowledge, ScenarioGroups(batch.scenario, schema.num_scenarios))
        rows = []
        for b in range(len(batch)):
            k, v = knowledge[int(batch.scenario[b])], x[b]
            for gw, gb in zip(unit.gen_weight, unit.gen_bias):
                w = (gw.weight @ k + gw.bias).view(h, h)
                v = torch.nn.functional.leaky_relu(v @ w + gb.weight @ k + gb.bias, 0.01)
            rows.append(v)
    torch.testing.assert_close(got, torch.stack(rows))


def loop_pooled(model, batch, i: int = 0) -> torch.Tensor:
    """The transformer layer one row at a time on that row's valid behaviors alone:
    x = b + pos, per head softmax(q k^T / sqrt(d_h)) v, LayerNorm(x + W_o heads), mean."""
    layer = model.transformers[i]
    v, mask = model.embedding.sequence(batch, i)
    d, H = v.shape[-1], layer.heads
    out = []
    for b in range(len(batch)):
        n = int(mask[b].sum())
        if n == 0:
            out.append(torch.zeros(d))
            continue
        x = v[b, :n] + layer.position[:n]  # behaviors are stored first, padding after
        q, k, val = layer.qkv(x).split(d, dim=-1)
        heads = []
        for j in range(H):
            sl = slice(j * d // H, (j + 1) * d // H)
            a = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(d // H), dim=-1)
            heads.append(a @ val[:, sl])
        out.append(layer.norm(x + layer.out(torch.cat(heads, dim=-1))).mean(0))
    return torch.stack(out)


def test_transformer_layer_attends_within_a_row(schema, batch):
    """The pooled sequence equals a per-row computation over the row's own valid behaviors
    (so padding and other rows take no part)."""
    torch.manual_seed(0)
    model = spread_embeddings(build("m2m", schema, P)).eval()
    assert (~batch.seq_mask[0].any(1)).any() and batch.seq_mask[0].all(1).any()
    with torch.no_grad():
        got = model.transformers[0](*model.embedding.sequence(batch, 0))
        torch.testing.assert_close(got, loop_pooled(model, batch))


def test_switches_remove_their_parts(schema, batch):
    torch.manual_seed(0)
    full = spread_embeddings(build("m2m", schema, P)).eval()
    parts = {
        "meta_attention": lambda m: m.attention,
        "meta_tower": lambda m: m.tower,
    }
    others = {}
    for switch, part in parts.items():
        m = build("m2m", schema, {**P, "drop": [switch]}).eval()
        assert not any("gen_" in n for n, _ in part(m).named_parameters())
        assert any("gen_" in n for n, _ in part(full).named_parameters())
        load_shared(full, m)
        others[switch] = m
    no_tf = build("m2m", schema, {**P, "drop": ["transformer"]}).eval()
    assert no_tf.transformers is None
    load_shared(full, no_tf)
    neither = build("m2m", schema, {**P, "drop": ["meta_attention", "meta_tower"]})
    assert neither.scenario_view is None  # no scenario knowledge left to compute
    with torch.no_grad():
        out = full(batch)
        for m in [*others.values(), no_tf]:
            assert (out - m(batch)).abs().max() > 1e-4
        # without the transformer layer a sequence is its masked mean
        emb = no_tf.embedding
        pooled = no_tf.inputs(batch)[:, -emb.dim :]
        torch.testing.assert_close(pooled, emb.pooled_sequence(batch, 0))
        # without the meta attention the expert weights no longer read the scenario knowledge;
        # the full model's do
        for model, moves in ((full, True), (others["meta_attention"], False)):
            before = model.expert_weights(batch)[0]
            model.scenario_view[0].bias += 1.0
            after = model.expert_weights(batch)[0]
            assert ((after - before).abs().max() > 1e-6) == moves


def test_eval_score_does_not_depend_on_batch_mates(schema):
    """A row scored with its batch or alone gets the same score: the attention runs over a
    row's own behaviors (the trap of attending across a [batch, features] tensor fails this)."""
    torch.manual_seed(0)
    model = spread_embeddings(build("m2m", schema, P))
    warmed_up(model, schema)
    batch = make_batch(schema, 24, seed=4)
    together = assert_rows_alone_match(model, batch)
    # and a row's score does not move when the other rows change
    with torch.no_grad():
        other = make_batch(schema, 24, seed=5)
        mixed = rows_of(batch, torch.arange(12))
        for name in ("scenario", "sparse", "dense", "label", "partition"):
            setattr(mixed, name, torch.cat([getattr(mixed, name), getattr(other, name)[12:]]))
        mixed.seq_ids = tuple(
            torch.cat([a[:12], b[12:]]) for a, b in zip(batch.seq_ids, other.seq_ids)
        )
        mixed.seq_mask = tuple(
            torch.cat([a[:12], b[12:]]) for a, b in zip(batch.seq_mask, other.seq_mask)
        )
        torch.testing.assert_close(model(mixed)[:12], together[:12], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"expert_hidden": []}, "expert_hidden needs at least one layer size"),
        ({"scenario_hidden": []}, "scenario_hidden needs at least one layer size"),
        ({"heads": 3}, "embed_dim 8 is not a multiple of it"),
        ({"meta_layers": 0}, "meta_layers must be at least 1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        (
            {"drop": ["meta"]},
            "no ablation switch 'meta'; its switches are: meta_attention, meta_tower, transformer",
        ),
    ],
)
def test_bad_params_are_one_line_errors(params, match, schema):
    with pytest.raises(UserError, match=match):
        build("m2m", schema, {**P, **params})


@pytest.mark.slow
def test_learns_planted_signal():
    # 0.858 measured; with the sequence's part of the rule 0.836, too near the bar to pin
    assert_learns_planted("m2m")

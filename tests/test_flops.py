"""The multiply-add counter (msctr/flops.py): layer sizes, CPU attention, the grouped
per-scenario matmul."""

import torch
from conftest import make_batch, make_schema

from msctr import flops
from msctr.models.registry import build
from msctr.models.scenario import ScenarioGroups


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

"""Routing by scenario: a row's output depends on its own scenario's tower / expert / gate /
normalization weights and on no other scenario's.

Each per-scenario tensor is perturbed on its own, one scenario slice at a time, and nothing
else is touched (in particular not the scenario embedding, which every row reads through its
own row of the table and which would make "rows of scenario s change" true even when the
routing is broken). Then every row of that scenario must move and every other row must not.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import SMALL, make_batch, make_schema

from msctr.models.registry import available, build, split_output

S = 4
# the per-scenario tensors of each model (names contain one of these); each must be found
ROUTED = {
    "shared_bottom": ["towers.hidden.0.", "towers.out."],
    "mmoe": ["gates.", "towers.hidden.0.", "towers.out."],
    "ple": ["levels.0.specific.", "levels.1.specific.", "scenario_gate.", "towers."],
    "star": [
        "layers.0.scenario_",
        "layers.1.scenario_",
        "out.scenario_",
        "pn.scenario_gamma",
        "pn.scenario_beta",
        "pn.running_mean",
        "pn.running_var",
    ],
    # MARIA's coupling vectors (one per scenario) are left out on purpose: the coupling gate
    # weighs each scenario's shared tower by its similarity to every other scenario
    "maria": ["towers.hidden.0.", "towers.out."],
    # HiNet's scenario-specific SEIs are left out on purpose: its SAN weighs every other
    # scenario's SEI into each row's transfer representation; the task layer is routed
    # HAMUR: the backbone, and the factors, biases and domain norms of the adapters; the
    # hyper-network is shared by all scenarios
    "hamur": [
        "layers.0.",
        "layers.1.",
        "norms.0.",
        "out.",
        "adapters.0.down.U",
        "adapters.0.down.V",
        "adapters.0.up.",
        "adapters.0.norm.",
    ],
    "hinet": ["task_specific.", "task_gate.", "towers.hidden.0.", "towers.out."],
    # M2M is left out on purpose: its per-scenario weights are generated from each scenario's
    # embedding in every batch (no stored per-scenario tensor); the scenario-embedding test
    # below checks that scenario s's generated weights reach the rows of s only
    # SAR-Net: the transform, the specific experts (main networks and logit layers), the gates
    "sarnet": ["scenario_gamma", "scenario_beta", "specific.", "specific_out", "gate."],
    # M3oE's domain experts are left out on purpose: its domain-level fusion weighs every
    # other scenario's expert into each row; the star bottom, gates and towers are routed
    "m3oe": ["bottom.star.scenario_", "bottom.norm.", "gate.", "towers.hidden.0.", "towers.out."],
}


def all_scenarios_batch(schema, size: int = 96, seed: int = 1):
    b = make_batch(schema, size, seed)
    b.scenario = torch.arange(size) % schema.num_scenarios
    return b


def trained_once(name: str, schema, batch) -> torch.nn.Module:
    """The model with its embeddings spread to std 0.5 (at the init's 0.01 a gate's input is
    so small that its weights barely matter) after one training forward (STAR's running
    statistics move off their init), in eval mode."""
    torch.manual_seed(0)
    model = build(name, schema, SMALL[name])
    model.train()
    with torch.no_grad():
        for p in model.embedding.parameters():
            p.mul_(50.0)
        model(batch)
    return model.eval()


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return split_output(model(batch))[0]


def perturbed(model, name: str, target: int) -> torch.nn.Module:
    """A copy with slice `target` of tensor `name` moved (variances stay positive)."""
    other = copy.deepcopy(model)
    t = dict([*other.named_parameters(), *other.named_buffers()])[name]
    g = torch.Generator().manual_seed(7 + target)
    with torch.no_grad():
        if name.endswith("running_var"):
            t[target].mul_(torch.rand(t[target].shape, generator=g) + 1.5)
        else:
            t[target].add_(0.5 * torch.randn(t[target].shape, generator=g) + 0.1)
    return other


def assert_only_own_rows_move(before, after, scenario, target, what):
    mine = scenario == target
    # other rows: unchanged (bit for bit on the CPU; 1e-7 leaves room for kernels that tile
    # differently, far below what a row routed to the perturbed weights moves)
    torch.testing.assert_close(
        after[~mine], before[~mine], rtol=0, atol=1e-7, msg=lambda m: f"{what}: {m}"
    )
    moved = (after[mine] - before[mine]).abs()
    # every own row moves: a row not routed to the perturbed weights is unchanged bit for bit
    # on the CPU, as the other rows show. The size of the move is judged over the scenario's
    # rows: one row's can fall near 0 by chance (SFPNet, once its attention queried by the
    # candidate's mean: 9e-8 for one row of 24, 2e-6 to 2e-4 for the others)
    assert (moved > 0).all(), f"{what}: a row of scenario {target} did not move"
    assert moved.median() > 1e-6, f"{what}: rows of scenario {target} barely moved ({moved})"


@pytest.mark.parametrize("model_name", list(ROUTED))
def test_output_depends_on_own_scenario_weights_only(model_name):
    schema = make_schema(num_scenarios=S, with_sequence=False)
    batch = all_scenarios_batch(schema)
    model = trained_once(model_name, schema, batch)
    before = logits(model, batch)
    tensors = [
        n
        for n, t in [*model.named_parameters(), *model.named_buffers()]
        if any(k in n for k in ROUTED[model_name]) and t.dim() > 0 and t.shape[0] == S
    ]
    for key in ROUTED[model_name]:
        assert any(key in n for n in tensors), f"no per-scenario tensor matching '{key}'"
    assert not any(n.startswith("embedding.") for n in tensors)
    for name in tensors:
        for target in range(S):
            after = logits(perturbed(model, name, target), batch)
            assert_only_own_rows_move(before, after, batch.scenario, target, f"{name}[{target}]")


@pytest.mark.parametrize("model_name", sorted(set(available()) & set(SMALL)))
def test_scenario_embedding_row_reaches_only_its_scenario(model_name):
    """Row s of the scenario embedding table is read by the rows of scenario s only: a model
    that gives some rows another scenario's embedding (e.g. scenario 0's for all) fails."""
    schema = make_schema(num_scenarios=S)
    batch = all_scenarios_batch(schema)
    model = trained_once(model_name, schema, batch)
    before = logits(model, batch)
    for target in range(S):
        after = logits(perturbed(model, "embedding.scenario_table.weight", target), batch)
        assert_only_own_rows_move(before, after, batch.scenario, target, f"e_s[{target}]")


def test_every_model_is_covered():
    """A newly registered model must join SMALL (and ROUTED if it keeps per-scenario weights)."""
    assert set(available()) <= set(SMALL)

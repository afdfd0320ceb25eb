"""AdaptDHM: shapes, gradients, the routing and centre update against the formulas, centres
moved in training only and kept in the state_dict, each cluster's weights reaching its rows
only, each switch, batch independence at eval, parameter checks, planted signal."""

import copy

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

P = SMALL["adaptdhm"]
K = P["clusters"]


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def x_of(model, batch) -> torch.Tensor:
    return model.embedding.fields(batch).flatten(1).detach()


@pytest.mark.parametrize("drop", [[], ["cluster"], ["shared"]], ids=str)
def test_shapes_and_every_parameter_gets_gradient(drop, schema):
    torch.manual_seed(0)
    model = spread_embeddings(build("adaptdhm", schema, {**P, "drop": drop})).train()
    batch = make_batch(schema, 96, seed=1)
    assert_trains(model, batch)
    for n, p in model.named_parameters():  # every cluster's slice is trained
        if n.startswith("layers.") and "cluster_" in n:
            assert (p.grad.reshape(K, -1).abs().sum(1) > 0).all(), n


def test_routing_and_centre_update_follow_the_formulas(schema):
    """In training: `routing_iters` times r = softmax(cos(x, c) / tau),
    c <- normalize(beta c + (1 - beta) normalize(sum_i r_i u_i)), then each row goes to its
    nearest centre; written out here one cluster and one row at a time."""
    torch.manual_seed(0)
    model = spread_embeddings(build("adaptdhm", schema, P)).train()
    batch = make_batch(schema, 64, seed=2)
    router = model.router
    c = router.centres.clone()
    u = torch.nn.functional.normalize(x_of(model, batch), dim=1)
    for _ in range(router.iters):
        r = torch.softmax(u @ c.t() / router.tau, dim=1)
        new = []
        for k in range(K):
            pull = sum(r[i, k] * u[i] for i in range(len(u)))
            step = pull / pull.norm()
            moved = router.momentum * c[k] + (1 - router.momentum) * step
            new.append(moved / moved.norm())
        c = torch.stack(new)
    want = torch.tensor([int(torch.argmax(torch.stack([u[i] @ c[k] for k in range(K)])))
                         for i in range(len(u))])  # fmt: skip
    got = model.assign(batch)
    torch.testing.assert_close(router.centres, c)
    assert torch.equal(got, want)
    assert len(set(got.tolist())) == K  # the rows spread over every cluster


def test_centres_move_in_training_only_and_deterministically(schema):
    torch.manual_seed(0)
    model = spread_embeddings(build("adaptdhm", schema, P))
    twin = copy.deepcopy(model)
    batch = make_batch(schema, 64, seed=3)
    start = model.router.centres.clone()
    model.eval()
    with torch.no_grad():
        model(batch)
    assert torch.equal(model.router.centres, start)  # evaluation never moves them
    model.train()
    twin.train()
    with torch.no_grad():
        model(batch)
        twin(batch)
    assert not torch.allclose(model.router.centres, start)
    assert torch.equal(model.router.centres, twin.router.centres)  # same batch, same centres
    norms = model.router.centres.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(K))
    assert not model.router.centres.requires_grad  # moved by momentum, not by gradient


def test_centres_are_saved_and_restored_with_the_weights(schema):
    torch.manual_seed(0)
    model = spread_embeddings(build("adaptdhm", schema, P))
    model.train()
    with torch.no_grad():
        model(make_batch(schema, 64, seed=5))
    model.eval()
    assert "router.centres" in model.state_dict()
    batch = make_batch(schema, 48, seed=6)
    together = assert_rows_alone_match(model, batch)
    torch.manual_seed(1)
    copy_ = build("adaptdhm", schema, P).eval()
    assert not torch.equal(copy_.router.centres, model.router.centres)
    copy_.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(copy_(batch), together)
        # the centres decide the scores once the clusters' networks differ (they all start
        # as the shared one): other centres, other clusters, other scores
        for layer in copy_.layers:
            layer.cluster_weight.mul_(1 + 0.3 * torch.randn_like(layer.cluster_weight))
        scores = copy_(batch)
        copy_.router.centres.copy_(copy_.router.centres.roll(1, dims=0))
        assert (copy_(batch) - scores).abs().max() > 1e-4


def test_each_clusters_weights_reach_its_rows_only(schema):
    """Moving cluster k's part of a layer moves exactly the rows routed to cluster k."""
    torch.manual_seed(0)
    model = spread_embeddings(build("adaptdhm", schema, P))
    model.train()
    with torch.no_grad():
        model(make_batch(schema, 64, seed=7))
    model.eval()
    batch = make_batch(schema, 96, seed=8)
    with torch.no_grad():
        cluster = model.assign(batch)
        before = model(batch)
    assert len(set(cluster.tolist())) == K
    for name in ["layers.0.cluster_weight", "layers.1.cluster_bias", "layers.2.cluster_weight"]:
        for k in range(K):
            other = copy.deepcopy(model)
            with torch.no_grad():
                dict(other.named_parameters())[name][k].add_(0.3)
                after = other(batch)
            mine = cluster == k
            assert torch.equal(after[~mine], before[~mine]), (name, k)
            assert ((after[mine] - before[mine]).abs() > 0).all(), (name, k)


def test_switches_remove_their_parts(schema):
    torch.manual_seed(0)
    full = spread_embeddings(build("adaptdhm", schema, P)).eval()
    no_cluster = build("adaptdhm", schema, {**P, "drop": ["cluster"]}).eval()
    no_shared = build("adaptdhm", schema, {**P, "drop": ["shared"]}).eval()
    assert no_cluster.router is None and "router.centres" not in no_cluster.state_dict()
    cluster_part = sum(
        layer.cluster_weight.numel() + layer.cluster_bias.numel() for layer in full.layers
    ) + sum(n_params(norm) * (K - 1) // K for norm in full.norms)  # one norm, not K
    shared_part = sum(layer.weight.numel() + layer.bias.numel() for layer in full.layers)
    assert n_params(full) - n_params(no_cluster) == cluster_part
    assert n_params(full) - n_params(no_shared) == shared_part
    assert all(layer.cluster_weight is None for layer in no_cluster.layers)
    assert all(layer.weight is None for layer in no_shared.layers)
    batch = make_batch(schema, 48, seed=9)
    with torch.no_grad():
        out = full(batch)
        load_shared(full, no_cluster)
        # at the start every cluster's factor is 1: without the clusters, the same network
        torch.testing.assert_close(no_cluster(batch), out)
        for layer in full.layers:
            layer.cluster_weight.mul_(1 + 0.3 * torch.randn_like(layer.cluster_weight))
        assert (full(batch) - no_cluster(batch)).abs().max() > 1e-4
        load_shared(full, no_shared)
        assert (full(batch) - no_shared(batch)).abs().max() > 1e-4


def test_eval_score_does_not_depend_on_batch_mates(schema):
    torch.manual_seed(0)
    model = spread_embeddings(build("adaptdhm", schema, P))
    warmed_up(model, schema)
    assert_rows_alone_match(model, make_batch(schema, 24, seed=4))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"hidden": []}, "hidden needs at least one layer size"),
        ({"clusters": 0}, "clusters must be at least 1"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"temperature": 0.0}, "temperature must be positive, got 0.0"),
        ({"routing_iters": 0}, "routing_iters must be at least 1"),
        ({"drop": ["cluster", "shared"]}, "drop 'cluster' or 'shared', not both"),
        ({"drop": ["dam"]}, "no ablation switch 'dam'; its switches are: cluster, shared"),
    ],
)
def test_bad_params_are_one_line_errors(params, match, schema):
    with pytest.raises(UserError, match=match):
        build("adaptdhm", schema, {**P, **params})


@pytest.mark.slow
def test_learns_planted_signal():
    assert_learns_planted("adaptdhm")

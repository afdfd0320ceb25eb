"""HMDN: residual quantization (values, loss, gradients), switches, code usage, planted signal.

Planted-signal bound: on conftest's rule (no sequence) the Bayes-optimal AUC is 0.868 and
the DNN reaches about 0.86; the best model *without* the scenario x f0 interaction scores
0.810. Requiring > 0.83 means the model learned much of the scenario-specific effect.
"""

import pytest
import torch
from conftest import load_shared, make_batch, make_schema, train_and_auc

from msctr.errors import UserError
from msctr.models.hmdn import ExplicitQuantizer, ResidualQuantizer
from msctr.models.registry import ModelOutput, build

BOUND = 0.83
SMALL = {"embed_dim": 8, "hidden": [32, 16], "depth": 3, "codebook_size": 16}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("backbone", ["mmoe", "pepnet"])
@pytest.mark.parametrize("grad", ["plain", "straight_through"])
@pytest.mark.parametrize("extraction", ["implicit", "explicit"])
def test_hmdn_shapes_loss_and_gradients(schema, batch, backbone, grad, extraction):
    p = {**SMALL, "backbone": backbone, "rq_gradient": grad, "extraction": extraction}
    model = build("hmdn", schema, p)
    out = model(batch)
    assert isinstance(out, ModelOutput) and out.logit.shape == (len(batch),)
    assert out.aux_loss.dim() == 0 and torch.isfinite(out.aux_loss) and out.aux_loss > 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out.logit, batch.label)
    (bce + out.aux_loss).backward()
    # codebook(s), projections, embeddings and the whole backbone all get a gradient
    missing = [n for n, q in model.named_parameters() if q.grad is None or not q.grad.any()]
    assert not missing


def test_s_d_is_the_sum_of_the_chosen_codes(schema, batch):
    model = build("hmdn", schema, SMALL).eval()
    q = model.quantizer
    x_b = model.distribution_input(batch)
    s, codes, _ = q(x_b)
    # recompute the residual chain with an independent nearest search (cdist)
    r, total, expected_codes = x_b, torch.zeros_like(x_b), []
    for _ in range(SMALL["depth"]):
        c = torch.cdist(r, q.codebook).argmin(1)
        expected_codes.append(c)
        total = total + q.codebook[c]
        r = r - q.codebook[c]
    assert torch.equal(codes, torch.stack(expected_codes, 1))
    assert torch.allclose(s, total, atol=1e-6)


def test_explicit_s_d_sums_projected_codes_of_each_part(schema, batch):
    model = build("hmdn", schema, {**SMALL, "extraction": "explicit"}).eval()
    q = model.quantizer
    assert isinstance(q, ExplicitQuantizer) and q.parts == 2  # scenario + f0
    x_b = model.distribution_input(batch)
    s, codes, _ = q(x_b)
    parts = x_b.view(len(batch), 2, 8)
    expected = torch.zeros_like(s)
    for d in range(2):
        c = torch.cdist(parts[:, d], q.codebooks[d]).argmin(1)
        assert torch.equal(codes[:, d], c)
        expected = expected + q.codebooks[d][c] @ q.proj[d]
    assert torch.allclose(s, expected, atol=1e-6)


def test_rq_loss_on_a_hand_checked_example():
    """1-D codebook {0, 1, 3}, D = 2, beta = 0.25, rows x_b = 2.6 and 0.9.

    row 1: level 1 picks 3 (r_1 = -0.4), level 2 picks 0 (r_2 = -0.4); squared errors
           0.16 + 0.16; s_D = 3.
    row 2: level 1 picks 1 (r_1 = -0.1), level 2 picks 0; squared errors 0.01 + 0.01; s_D = 1.
    L_rq = mean over rows of (1 + beta) * sum of squared errors = (0.4 + 0.025) / 2 = 0.2125.
    Gradients (mean over 2 rows): codebook term 2 (e - r) / 2 per use -> code 0: 0.4 + 0.1,
    code 1: 0.1, code 3: 0.4; commitment term beta * 2 (r - e) / 2 per level -> x_b:
    row 1: -0.1 - 0.1 = -0.2, row 2: -0.025 - 0.025 = -0.05.
    """
    q = ResidualQuantizer(dim=1, codebook_size=3, depth=2, beta=0.25)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0], [1.0], [3.0]]))
    x_b = torch.tensor([[2.6], [0.9]], requires_grad=True)
    s, codes, loss = q(x_b)
    assert codes.tolist() == [[2, 0], [1, 0]]
    assert torch.allclose(s, torch.tensor([[3.0], [1.0]]))
    assert loss.item() == pytest.approx(0.2125, abs=1e-6)
    loss.backward()
    assert torch.allclose(q.codebook.grad, torch.tensor([[0.5], [0.1], [0.4]]), atol=1e-6)
    assert torch.allclose(x_b.grad, torch.tensor([[-0.2], [-0.05]]), atol=1e-6)


@pytest.mark.parametrize("explicit", [False, True])
def test_ctr_gradient_path_plain_vs_straight_through(explicit):
    """A stand-in CTR loss on s_D: plain trains the codebook only, straight-through x_b only."""
    torch.manual_seed(0)
    x_b = torch.randn(32, 16)
    w = torch.randn(32, 16)
    grads = {}
    for mode in ("plain", "straight_through"):
        torch.manual_seed(1)
        if explicit:
            q = ExplicitQuantizer(2, 8, 16, codebook_size=8, beta=0.25, gradient=mode)
            book = q.codebooks
        else:
            q = ResidualQuantizer(16, codebook_size=8, depth=3, beta=0.25, gradient=mode)
            book = q.codebook
        x = x_b.clone().requires_grad_(True)
        s, _, _ = q(x)
        grads[mode] = torch.autograd.grad((s * w).sum(), [x, book], allow_unused=True)
    gx, gbook = grads["plain"]
    assert (gx is None or not gx.any()) and gbook is not None and gbook.any()
    gx, gbook = grads["straight_through"]
    assert gx is not None and gx.any() and (gbook is None or not gbook.any())
    if not explicit:  # implicit: s_D = x_b + sg(s_D - x_b), the gradient passes unchanged
        assert torch.allclose(gx, w)


def test_switches_remove_their_parts(schema, batch):
    torch.manual_seed(0)
    full = build("hmdn", schema, SMALL).eval()
    torch.manual_seed(0)
    no_rq = build("hmdn", schema, {**SMALL, "drop": ["rq"]}).eval()
    torch.manual_seed(0)
    explicit = build("hmdn", schema, {**SMALL, "drop": ["explicit"]}).eval()
    assert no_rq.quantizer is None and no_rq.code_usage() is None
    assert isinstance(full.quantizer, ResidualQuantizer)
    assert isinstance(explicit.quantizer, ExplicitQuantizer)
    # implicit: one [K, m*d] codebook; explicit: m codebooks [K, d] + m projections [d, m*d]
    m, d, k = 2, 8, SMALL["codebook_size"]
    n, e = full.embedding.num_fields, 3
    # no rq: the codebook goes, and the MMoE gate reads x [n*d] instead of s_D [m*d]
    assert n_params(full) - n_params(no_rq) == k * m * d + e * (m * d - n * d)
    assert n_params(explicit) - n_params(full) == (m * k * d + m * d * m * d) - k * m * d
    # the full model's weights wherever the shapes agree (embeddings, experts, head; the gate
    # too for `explicit`): what differs is the quantizer (and for `rq` the gate's input)
    assert "head.weight" in load_shared(full, no_rq)
    assert "gate.weight" in load_shared(full, explicit)
    ref = full(batch)
    assert not torch.allclose(ref.logit, no_rq(batch).logit)
    assert not torch.allclose(ref.logit, explicit(batch).logit)
    assert no_rq(batch).aux_loss == 0
    # without rq the gate reads x (eq. 7): the logit is the backbone on x alone
    with torch.no_grad():
        x = no_rq.embedding.fields(batch).flatten(1)
        g = torch.softmax(no_rq.gate(x), dim=-1)
        want = no_rq.head(torch.einsum("be,beh->bh", g, no_rq.experts(x))).squeeze(-1)
        torch.testing.assert_close(no_rq(batch).logit, want)


def test_pepnet_backbone_without_rq_gates_on_x_b(schema, batch):
    model = build("hmdn", schema, {**SMALL, "backbone": "pepnet", "drop": ["rq"]}).eval()
    gate_in = model.ppnet.gates[0].net[0].in_features
    assert gate_in == 2 * 8 + model.embedding.num_fields * 8  # x_b ++ sg(O_ep)


def test_code_usage_counts_training_rows(schema):
    model = build("hmdn", schema, SMALL)
    b1, b2 = make_batch(schema, 64, seed=1), make_batch(schema, 40, seed=2)
    model.train()
    model(b1)
    model(b2)
    model.eval()
    model(b1)  # evaluation forwards are not counted
    usage = model.code_usage()
    depth, k = SMALL["depth"], SMALL["codebook_size"]
    assert usage["counts"].shape == (depth, k)
    assert usage["counts"].sum() == (64 + 40) * depth
    assert (usage["counts"].sum(1) == 64 + 40).all()
    assert ((usage["perplexity"] >= 1) & (usage["perplexity"] <= k + 1e-6)).all()
    dead = (usage["counts"] == 0).double().mean(1)
    assert torch.allclose(usage["dead_fraction"], dead)
    model.reset_code_usage()
    assert model.code_usage()["counts"].sum() == 0

    explicit = build("hmdn", schema, {**SMALL, "extraction": "explicit"}).train()
    explicit(b1)
    assert explicit.code_usage()["counts"].sum() == 64 * 2  # D = number of distribution fields


def test_perplexity_of_uniform_usage_is_k():
    q = ResidualQuantizer(dim=2, codebook_size=4, depth=1, beta=0.25)
    q.usage.record(torch.tensor([[0], [1], [2], [3]]))
    stats = q.usage.stats()
    assert stats["perplexity"].item() == pytest.approx(4.0)
    assert stats["dead_fraction"].item() == 0.0


def test_distribution_fields(schema):
    default = build("hmdn", schema, SMALL)  # scenario + the schema's partition field f0
    names = default.embedding.field_names
    assert [names[i] for i in default.dist_idx.tolist()] == ["scenario", "f0"]
    custom = build("hmdn", schema, {**SMALL, "distribution_fields": ["f1", "scenario", "f4"]})
    assert custom.quantizer.codebook.shape == (SMALL["codebook_size"], 3 * 8)
    with pytest.raises(UserError, match="not a field"):
        build("hmdn", schema, {**SMALL, "distribution_fields": ["gender"]})
    with pytest.raises(UserError, match="backbone"):
        build("hmdn", schema, {**SMALL, "backbone": "star"})


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mmoe", "pepnet"])
def test_hmdn_learns_planted_signal(backbone):
    schema = make_schema(with_sequence=False)
    model = build("hmdn", schema, {"embed_dim": 8, "dropout": 0.0, "backbone": backbone})
    assert train_and_auc(model, schema) > BOUND

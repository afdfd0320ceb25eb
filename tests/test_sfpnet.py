import dataclasses

import pytest
import torch
from conftest import make_batch, make_schema, train_and_auc
from sklearn.metrics import roc_auc_score

from msctr.data.schema import Sequence, SequenceField
from msctr.errors import UserError
from msctr.models.registry import build
from msctr.models.sfpnet import FieldTailoring, distribution_aware_pooling

SMALL = {"embed_dim": 8, "hidden": [32, 16], "din_hidden": [16]}
SWITCHES = ["dap", "sam", "rtm", "sdnn", "stb"]


def with_empty_rows(batch, rows: int = 5):
    """The first `rows` rows get no behaviors at all."""
    ids, mask = batch.seq_ids[0].clone(), batch.seq_mask[0].clone()
    ids[:rows], mask[:rows] = 0, False
    return dataclasses.replace(batch, seq_ids=(ids,), seq_mask=(mask,))


def bce(out, batch):
    return torch.nn.functional.binary_cross_entropy_with_logits(out, batch.label)


def test_output_shape_and_finite_loss_with_empty_sequences(schema, batch):
    torch.manual_seed(0)
    for params in (SMALL, {**SMALL, "din_softmax": True}):
        model = build("sfpnet", schema, params)
        for b in (with_empty_rows(batch), with_empty_rows(batch, rows=len(batch))):
            out = model(b)
            assert out.shape == (len(b),)
            loss = bce(out, b)
            assert torch.isfinite(loss)
            model.zero_grad()
            loss.backward()
            assert all(
                torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
            )


@pytest.mark.parametrize("drop", [[], *[[s] for s in SWITCHES]])
def test_every_parameter_gets_a_gradient(schema, batch, drop):
    torch.manual_seed(0)
    model = build("sfpnet", schema, {**SMALL, "drop": drop, "prior_fields": ["f0"]})
    bce(model(with_empty_rows(batch)), batch).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_dap_is_mean_and_std_of_the_valid_behaviors():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(6, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0] * 5, [1] * 5, [0, 1, 0, 1, 1],
                         [1, 1, 0, 0, 0]]).bool()  # fmt: skip
    v[~mask] = 100.0  # padded values must not leak into the statistics
    eps = 1e-6
    got = distribution_aware_pooling(v, mask, eps)
    for r in range(len(v)):
        valid = v[r][mask[r]]
        if len(valid) == 0:
            expect = torch.zeros(8)
        else:
            mean = valid.mean(0)
            std = torch.sqrt(valid.var(0, unbiased=False) + eps)
            expect = torch.cat([mean, std])
        torch.testing.assert_close(got[r], expect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        distribution_aware_pooling(v, mask, eps, with_std=False), got[:, :4], atol=0, rtol=0
    )


def test_field_tailoring_einsum_equals_per_field_loop():
    torch.manual_seed(0)
    n, d_in, d_out = 5, 6, 3
    tailor = FieldTailoring(n, d_in, d_out)
    torch.nn.init.normal_(tailor.bias)
    x, c = torch.randn(7, n, d_in), torch.randn(7, n, d_out)
    rows = []
    for i in range(n):
        w1, w2 = tailor.weight[i, :, :d_out], tailor.weight[i, :, d_out:]
        b1, b2 = tailor.bias[i, :d_out], tailor.bias[i, d_out:]
        rows.append(torch.relu(x[:, i] @ w1 + b1) + torch.sigmoid(x[:, i] @ w2 + b2) * c[:, i])
    torch.testing.assert_close(tailor(x, c), torch.stack(rows, dim=1))


def _parts(model) -> dict[str, bool]:
    blocks = list(model.blocks)
    return {
        "stb": len(blocks) > 0,
        "sam": any(b.gate is not None for b in blocks),
        "rtm": any(b.aggregate is not None for b in blocks),
        "dap": any(b.k == 2 for b in blocks),
        "sdnn": model.tower is not None,
    }


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_removes_its_part(schema, batch, switch):
    torch.manual_seed(0)
    full = build("sfpnet", schema, SMALL).eval()
    torch.manual_seed(1)
    ablated = build("sfpnet", schema, {**SMALL, "drop": [switch]}).eval()
    assert _parts(full)[switch] and not _parts(ablated)[switch]
    if switch != "stb":  # dropping one part leaves the others in place
        assert all(v for k, v in _parts(ablated).items() if k != switch)
    n_full = sum(p.numel() for p in full.parameters())
    n_ablated = sum(p.numel() for p in ablated.parameters())
    assert n_ablated < n_full
    # give the ablated model every weight it shares with the full one: any output difference
    # then comes from the removed part, not from a different initialization
    full_state = full.state_dict()
    shared = {
        k: v for k, v in ablated.state_dict().items()
        if k in full_state and full_state[k].shape == v.shape
    }  # fmt: skip
    ablated.load_state_dict({**ablated.state_dict(), **{k: full_state[k] for k in shared}})
    with torch.no_grad():
        assert not torch.allclose(full(batch), ablated(batch), atol=1e-7, rtol=1e-4)


def test_padded_behaviors_do_not_change_the_output(schema, batch):
    torch.manual_seed(0)
    model = build("sfpnet", schema, SMALL).eval()
    ids, mask = batch.seq_ids[0].clone(), batch.seq_mask[0]
    ids[~mask] = torch.randint(1, 30, ids[~mask].shape)
    noisy = dataclasses.replace(batch, seq_ids=(ids,))
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(noisy))


def test_block_dims_several_sequences_and_bad_params():
    schema = make_schema()
    schema.sequences.append(Sequence("hist3", 4, "hist3_len", [SequenceField("hist3_f3", "f3")]))
    two = make_batch(schema, 32)
    model = build("sfpnet", schema, {**SMALL, "num_blocks": 2, "block_dims": [12, 6]})
    assert model.blocks[1].d_out == 6
    # behaviors of both sequences form one set; each one's DIN query is the mean of the
    # candidate's fields its attributes share: f1 and f2 for hist, f3 for hist3
    assert model.behavior_seq.tolist() == [0] * 8 + [1] * 4
    assert model.query_weight[0, 1:4].tolist() == [0.5, 0.5, 0.0]
    assert model.query_weight[1, 1:4].tolist() == [0.0, 0.0, 1.0]
    assert model.query_weight.sum(1).tolist() == [1.0, 1.0]
    assert torch.isfinite(model(two)).all()
    only = build("sfpnet", schema, {**SMALL, "sequences": ["hist3"]})
    assert only.behavior_seq.tolist() == [0] * 4 and only.query_weight[0, 3] == 1.0
    with pytest.raises(UserError, match="block_dims"):
        build("sfpnet", schema, {**SMALL, "num_blocks": 3, "block_dims": [8]})
    with pytest.raises(UserError, match="nope"):
        build("sfpnet", schema, {**SMALL, "sequences": ["nope"]})
    with pytest.raises(UserError, match="nope"):
        build("sfpnet", schema, {**SMALL, "prior_fields": ["nope"]})


def test_schema_without_sequences_is_a_user_error():
    with pytest.raises(UserError, match="sequences"):
        build("sfpnet", make_schema(with_sequence=False), SMALL)


@pytest.mark.slow
def test_learns_planted_signal():
    # the planted logit needs the scenario x f0 interaction: the best *additive* logistic
    # regression on the true inputs (scenario, f0, f3, x0 and the sequence hit, one-hot), fit
    # on the same 38k training rows, reaches test AUC 0.810; the Bayes ceiling is 0.866.
    # SFPNet measures 0.853-0.856 over init seeds 0-3 (DNN: 0.851), so 0.825 requires it to
    # have learned the scenario-specific effect.
    schema = make_schema()
    torch.manual_seed(0)
    model = build("sfpnet", schema, {"embed_dim": 8, "hidden": [64, 32]})
    assert train_and_auc(model, schema) > 0.825


def _sequence_only_batch(schema, size: int, seed: int):
    """Labels depend only on [target f1 in the behaviors] x scenario: +, -, none."""
    b = make_batch(schema, size, seed)
    g = torch.Generator().manual_seed(seed + 1)
    mask = b.seq_mask[0]
    lengths = mask.sum(1)
    pos = (torch.rand(size, generator=g) * lengths).long()  # a valid slot where length > 0
    rows = (torch.rand(size, generator=g) < 0.5) & (lengths > 0)
    ids = b.seq_ids[0].clone()
    ids[rows, pos[rows], 0] = b.sparse[rows, 1]  # plant the target into half the histories
    hit = ((ids[..., 0] == b.sparse[:, 1:2]) & mask).any(1).float()
    sign = torch.tensor([1.0, -1.0, 0.0])[b.scenario]
    label = torch.bernoulli(torch.sigmoid(2.5 * sign * (2 * hit - 1)), generator=g)
    return dataclasses.replace(b, seq_ids=(ids,), label=label)


@pytest.mark.slow
def test_learns_scenario_dependent_sequence_signal():
    # nothing but the behaviors, read differently per scenario, predicts the label: a model that
    # ignores them, or uses them the same way in every scenario, scores 0.5 (+-0.01 on 4000
    # rows); Bayes 0.868. SFPNet measures 0.608-0.612 after 150 steps (seeds 0-3).
    schema = make_schema()
    torch.manual_seed(0)
    model = build("sfpnet", schema, {"embed_dim": 8, "hidden": [64, 32]})
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        b = _sequence_only_batch(schema, 256, step)
        loss = bce(model(b), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = _sequence_only_batch(schema, 4000, 10_000)
    with torch.inference_mode():
        auc = roc_auc_score(test.label.numpy(), model.eval()(test).numpy())
    assert auc > 0.56

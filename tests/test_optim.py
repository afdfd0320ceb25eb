"""LazyAdam against dense Adam, and `make_optimizer` switching big tables to row-sparse
gradients (msctr/train/optim.py)."""

import torch
from conftest import make_schema, planted_batch
from sklearn.metrics import roc_auc_score

from msctr.models.registry import build
from msctr.recipe import TrainConfig
from msctr.train.optim import SPARSE_AUTO_ROWS, LazyAdam, make_optimizer

# -- lazy Adam against dense Adam ------------------------------------------------------------


def _twin_tables(rows: int, dim: int, seed: int = 0):
    torch.manual_seed(seed)
    dense = torch.nn.Embedding(rows, dim)
    sparse = torch.nn.Embedding(rows, dim, sparse=True)
    sparse.weight.data.copy_(dense.weight.data)
    return dense, sparse


def test_lazy_adam_equals_adam_when_every_row_is_touched():
    rows, dim = 12, 4
    dense, sparse = _twin_tables(rows, dim)
    opt_d = torch.optim.Adam(dense.parameters(), lr=0.05, weight_decay=0.01, foreach=False)
    opt_s = LazyAdam(sparse.parameters(), lr=0.05, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    for _ in range(15):
        # every row at least once, some several times (duplicates must be summed)
        ids = torch.cat(
            [torch.randperm(rows, generator=g), torch.randint(0, rows, (9,), generator=g)]
        )
        target = torch.randn(len(ids), dim, generator=g)
        for table, opt in ((dense, opt_d), (sparse, opt_s)):
            opt.zero_grad()
            ((table(ids) - target) ** 2).sum().backward()
            opt.step()
    assert sparse.weight.grad.is_sparse
    torch.testing.assert_close(sparse.weight, dense.weight, rtol=1e-5, atol=1e-6)


def test_lazy_adam_leaves_untouched_rows_alone_and_matches_sparse_adam():
    rows, dim = 50, 3
    ref, lazy = _twin_tables(rows, dim)
    ref.sparse = True  # torch's SparseAdam needs sparse gradients too
    start = lazy.weight.detach().clone()
    opt_ref = torch.optim.SparseAdam(ref.parameters(), lr=0.1)
    opt = LazyAdam(lazy.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(2)
    for _ in range(10):
        ids = torch.randint(0, 25, (30,), generator=g)  # rows 25.. never touched
        target = torch.randn(30, dim, generator=g)
        for table, o in ((ref, opt_ref), (lazy, opt)):
            o.zero_grad()
            ((table(ids) - target) ** 2).sum().backward()
            o.step()
    torch.testing.assert_close(lazy.weight, ref.weight, rtol=1e-5, atol=1e-6)
    assert torch.equal(lazy.weight[25:], start[25:])
    assert not torch.equal(lazy.weight[:25], start[:25])
    # the moments exist only where rows were touched
    assert opt.state[lazy.weight]["exp_avg"][25:].abs().sum() == 0


def test_lazy_adam_dense_gradient_is_plain_adam():
    dense, other = _twin_tables(8, 3)
    other.sparse = False
    opt_d = torch.optim.Adam(dense.parameters(), lr=0.02, weight_decay=0.1, foreach=False)
    opt_l = LazyAdam(other.parameters(), lr=0.02, weight_decay=0.1)
    ids = torch.arange(8)
    for _ in range(5):
        for table, o in ((dense, opt_d), (other, opt_l)):
            o.zero_grad()
            table(ids).pow(3).sum().backward()
            o.step()
    torch.testing.assert_close(other.weight, dense.weight, rtol=1e-5, atol=1e-6)


def test_make_optimizer_switches_tables_and_trains_like_dense_adam():
    schema = make_schema(vocab=40)
    aucs = {}
    for mode in (False, True):
        torch.manual_seed(0)
        model = build("dnn", schema, {"embed_dim": 8, "hidden": [32], "dropout": 0.0})
        opt = make_optimizer(model, TrainConfig(lr=3e-3, sparse_embeddings=mode))
        assert model.embedding.table.sparse is mode
        kinds = {type(o).__name__ for o in opt.optimizers}
        assert kinds == ({"Adam", "LazyAdam"} if mode else {"Adam"})
        for step in range(120):
            b = planted_batch(schema, 256, seed=step)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.label)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if mode:
            assert model.embedding.table.weight.grad.is_sparse
        test = planted_batch(schema, 4000, seed=10_000)
        model.eval()
        with torch.no_grad():
            p = model(test)
        aucs[mode] = roc_auc_score(test.label.numpy(), p.numpy())
    assert aucs[False] > 0.65 and abs(aucs[True] - aucs[False]) < 0.02, aucs
    # "auto" keeps small tables dense and makes big ones row-sparse
    model = build("dnn", schema, {})
    make_optimizer(model, TrainConfig())
    assert model.embedding.table.sparse is False
    model = build("dnn", make_schema(vocab=SPARSE_AUTO_ROWS // 6 + 1), {"embed_dim": 2})
    make_optimizer(model, TrainConfig())
    assert model.embedding.table.sparse is True

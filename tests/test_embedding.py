"""The shared embedding's fused sequence pooling and row-sparse look-ups against their plain
computations (msctr/models/embedding.py)."""

import pytest
import torch
from conftest import make_batch, make_schema

from msctr.models.embedding import FeatureEmbedding

# -- the fused sequence pooling ----------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True])
def test_pooled_sequence_is_masked_mean_of_attribute_means(sparse):
    schema = make_schema()
    b = make_batch(schema, 64)
    emb = FeatureEmbedding(schema, 8, sparse_grad=sparse)
    got = emb.pooled_sequence(b)
    e, mask = emb.sequence(b)  # [B, L, d] mean over attributes, [B, L]
    m = mask.unsqueeze(-1).float()
    want = (e * m).sum(1) / m.sum(1).clamp_min(1.0)
    torch.testing.assert_close(got, want)
    assert (mask.sum(1) == 0).any()  # rows without behaviors are covered (pooled = 0)
    g = torch.autograd.grad(got.square().sum(), emb.table.weight)[0]
    g_ref = torch.autograd.grad(want.square().sum(), emb.table.weight)[0]
    torch.testing.assert_close(g.to_dense() if sparse else g, g_ref.to_dense())


def test_row_sparse_lookups_match_dense_ones():
    schema = make_schema()
    b = make_batch(schema, 64)
    torch.manual_seed(0)
    dense = FeatureEmbedding(schema, 8)
    sparse = FeatureEmbedding(schema, 8, sparse_grad=True)
    sparse.load_state_dict(dense.state_dict())
    grads = []
    for emb in (dense, sparse):
        out = emb.fields(b)  # look-ups of sparse fields and the pooled sequence
        seq, _ = emb.sequence(b)  # a second use of the table in the same step
        (out.square().sum() + seq.sum()).backward()
        grads.append(emb.table.weight.grad)
    assert grads[1].is_sparse and not grads[0].is_sparse
    torch.testing.assert_close(grads[1].to_dense(), grads[0])
    torch.testing.assert_close(sparse.fields(b), dense.fields(b))

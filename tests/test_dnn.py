import torch
from conftest import make_schema, train_and_auc

from msctr.models.registry import build


def test_dnn_shapes_and_gradients(schema, batch):
    model = build("dnn", schema, {"embed_dim": 8, "hidden": [32, 16]})
    out = model(batch)
    assert out.shape == (len(batch),)
    torch.nn.functional.binary_cross_entropy_with_logits(out, batch.label).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_dnn_learns_planted_signal():
    schema = make_schema(with_sequence=False)
    model = build("dnn", schema, {"embed_dim": 8, "hidden": [64, 32], "dropout": 0.0})
    assert train_and_auc(model, schema) > 0.68

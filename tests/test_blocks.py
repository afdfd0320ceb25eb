"""MLP blocks (models/blocks.py): the CPU dropout, the fused ReLU + dropout in MLPs, and the
stacked expert MLPs. The kernels under them are compared with references in test_kernels.py."""

import torch
from torch import nn

from msctr.models.blocks import MLP, Dropout, StackedMLP


def test_dropout_drops_at_rate_p_scales_the_rest_and_is_seeded():
    drop = Dropout(0.3)
    x = torch.ones(400, 500, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    dropped = y == 0
    assert abs(dropped.float().mean().item() - 0.3) < 0.005  # 200k draws: sd 0.001
    torch.testing.assert_close(y[~dropped], torch.full_like(y[~dropped], 1 / 0.7))
    y.sum().backward()  # gradient: the same mask and scale
    torch.testing.assert_close(x.grad, y.detach())
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)
    assert not torch.equal(drop(x), y)  # a new mask each call
    # every element independent: no mask position is dropped in all of 50 calls
    torch.manual_seed(1)
    masks = torch.stack([Dropout(0.5)(torch.ones(64)) == 0 for _ in range(50)])
    assert 0 < masks.float().mean(0).min() and masks.float().mean(0).max() < 1
    drop.eval()
    assert drop(x) is x
    assert Dropout(0.0)(x) is x


def test_dropout_keeps_the_dtype_and_odd_sizes():
    y = Dropout(0.5)(torch.ones(3, 7, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape == (3, 7)
    assert set(y.unique().tolist()) <= {0.0, 2.0}


def test_relu_dropout_in_one_op_equals_relu_then_dropout():
    x = torch.randn(300, 40, dtype=torch.float64, requires_grad=True)
    drop = Dropout(0.25)
    torch.manual_seed(2)
    want = drop(torch.relu(x))
    torch.manual_seed(2)
    got = drop(x, relu=True)
    assert torch.equal(got, want) and (got == 0).float().mean() > 0.55  # relu + dropout zeros
    g = torch.randn_like(want)
    assert torch.equal(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])
    drop.eval()
    assert torch.equal(drop(x, relu=True), torch.relu(x))
    # MLP fuses the pair but keeps both modules, so checkpoint keys do not move
    mlp = MLP(6, [8, 5], dropout=0.25, batch_norm=True, out_dim=1).double()
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == [*["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2, "Linear"]
    z = torch.randn(50, 6, dtype=torch.float64)
    torch.manual_seed(5)
    fused = mlp(z)
    torch.manual_seed(5)
    plain = z
    for m in mlp:
        plain = m(plain)
    assert torch.equal(fused, plain)


def test_stacked_mlp_equals_separate_mlps():
    torch.manual_seed(0)
    n, B, dims = 3, 50, [12, 16, 8]
    stacked = StackedMLP(n, dims[0], dims[1:], batch_norm=True)
    x = torch.randn(B, dims[0])
    separate = []
    for k in range(n):
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            lin = nn.Linear(a, b)
            lin.weight.data = stacked.layers[i].weight[k].T.clone()
            lin.bias.data = stacked.layers[i].bias[k, 0].clone()
            layers += [lin, nn.BatchNorm1d(b), nn.ReLU()]
        separate.append(nn.Sequential(*layers))
    for mode in ("train", "eval"):
        for m in (stacked, *separate):
            m.train(mode == "train")
        out = stacked(x)  # [B, n, out]; train mode also updates running statistics
        ref = torch.stack([m(x) for m in separate], 1)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

"""MLP building blocks: dropout, MLPs, PEPNet's gate unit, and n same-shape MLPs (experts)
run as one.

Shapes in comments: B batch, n stacked linears or MLPs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from msctr.models.kernels import _MaskScale, keep_mask, matmul_dtype


class Dropout(nn.Module):
    """Inverted dropout, as nn.Dropout, with a cheaper mask on the CPU.

    nn.Dropout draws one Bernoulli variate per element from torch's CPU generator and fills
    with a bool mask, which in the expert models cost more than all their bf16 matmuls
    together. Here the mask comes from `keep_mask` and is applied by `_MaskScale`; with
    `relu=True` the ReLU before the dropout runs in the same op. On other devices this is
    nn.functional.relu / dropout.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return torch.relu(x) if relu else x
        if x.device.type != "cpu":
            return nn.functional.dropout(torch.relu(x) if relu else x, self.p, training=True)
        return _MaskScale.apply(x, keep_mask(x, self.p), 1.0 / (1.0 - self.p), relu)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """x in the autocast dtype when autocast is on: an input that feeds several matmuls
    (experts and gates) is then cast once instead of once per matmul, forward and backward."""
    return x.to(matmul_dtype(x))


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """x upcast to fp32 when autocast made it fp16/bf16 (a loss, a softmax over many terms);
    fp32 and fp64 pass unchanged, so a model run in float64 stays in float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class MLP(nn.Sequential):
    """Linear -> [BatchNorm] -> activation -> Dropout, per hidden size; optional final linear.

    A ReLU followed by Dropout runs as one op (`Dropout(x, relu=True)`); the modules stay
    separate, so the layer indices in checkpoints are those of the plain sequence.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: list[int] | tuple[int, ...],
        dropout: float = 0.0,
        batch_norm: bool = False,
        out_dim: int | None = None,
        activation: type[nn.Module] = nn.ReLU,
    ):
        layers: list[nn.Module] = []
        for h in hidden:
            layers.append(nn.Linear(in_dim, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation())
            if dropout > 0:
                layers.append(Dropout(dropout))
            in_dim = h
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
            in_dim = out_dim
        super().__init__(*layers)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fuse = False
        for layer, following in zip(self, [*self][1:] + [None]):
            if fuse:  # this Dropout already ran with the ReLU before it
                fuse = False
            elif isinstance(layer, nn.ReLU) and isinstance(following, Dropout):
                x, fuse = following(x, relu=True), True
            else:
                x = layer(x)
        return x


class GateNU(nn.Module):
    """PEPNet's gate neural unit: gamma * sigmoid(W2 ReLU(W1 x)), values in (0, gamma)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, gamma: float = 2.0):
        super().__init__()
        hidden = hidden or out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.sigmoid(self.net(x))


class StackedLinear(nn.Module):
    """n independent linears in one matmul, outputs side by side: x [B, in] (shared by all
    n) or [B, n, in] (one input each) -> [B, n * out]. Used for experts every sample uses."""

    def __init__(self, n: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(n, 1, out_dim))
        bound = 1 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, a, b = self.weight.shape
        if x.dim() == 2:  # shared input: one [in, n * out] matmul
            w = self.weight.permute(1, 0, 2).reshape(a, n * b)
            return torch.addmm(self.bias.reshape(1, -1), x, w)
        # [n, B, in] copy first: bmm's weight gradient on a strided view copies slower
        y = torch.baddbmm(self.bias, x.transpose(0, 1).contiguous(), self.weight)  # [n, B, out]
        return y.transpose(0, 1).reshape(x.shape[0], n * b)


class StackedMLP(nn.Module):
    """n MLPs of equal shape (e.g. experts) on one shared input: [B, in] -> [B, n, out].

    Activations stay in a [B, n * h] layout: the first layer is one [in, n * h] matmul (the
    input is shared), one BatchNorm1d spans all n MLPs' units of a layer (each MLP keeps its
    own statistics) and needs no transpose, and later layers are one batched matmul over the
    n MLPs.
    """

    def __init__(
        self,
        n: int,
        in_dim: int,
        hidden: list[int] | tuple[int, ...],
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        dims = [in_dim, *hidden]
        self.layers = nn.ModuleList(StackedLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(n * h) if batch_norm else nn.Identity() for h in hidden
        )
        self.dropout = Dropout(dropout)
        self.n = n
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, norm in zip(self.layers, self.norms):
            x = self.dropout(norm(layer(x)), relu=True).view(x.shape[0], self.n, -1)
        return x  # [B, n, out]

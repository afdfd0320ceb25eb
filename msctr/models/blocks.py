"""MLP building blocks: dropout, MLPs, PEPNet's gate unit, and n same-shape MLPs (experts)
run as one.

Shapes in comments: B batch, n stacked linears or MLPs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from msctr.models.kernels import _MaskScale, keep_mask, matmul_dtype


class BatchShare:
    """Which rows of the whole batch this process's forward holds: `window` = (first row of
    the share, rows in it, rows in the whole batch), or None (all of them, one process).

    Data-parallel training (msctr.train) makes one per model, hands it to the model's
    `RowRandom` modules (`share_batch`) and sets its window before every step; the model
    reads nothing else of the training process."""

    def __init__(self) -> None:
        self.window: tuple[int, int, int] | None = None


class RowRandom(nn.Module):
    """A module that draws randomness per row of the batch in training (dropout masks, noise).

    The promise that one process and N (torchrun) train the same model rests on these: under
    data parallel each draws, for its process's rows, the part of what one process would draw
    for the whole batch (`share`). A model must draw every per-row random number through one
    of them (`Dropout`, `GaussianNoise`, `GumbelSoftmax`), never nn.Dropout, torch.randn_like
    or F.gumbel_softmax (tests/test_batch_share.py checks every registered model)."""

    def __init__(self) -> None:
        super().__init__()
        self.share: BatchShare | None = None

    def window(self, x: torch.Tensor) -> tuple[int, int, int] | None:
        """The share's window when x holds the share's rows (first dimension), else None."""
        w = None if self.share is None else self.share.window
        return w if w is not None and x.dim() > 0 and x.shape[0] == w[1] else None

    def whole_batch(self, x: torch.Tensor, draw) -> torch.Tensor:
        """`draw(shape)` for x's shape; data parallel, drawn for the whole batch's shape and
        cut to this share's rows, so the generator advances as in one process."""
        w = self.window(x)
        if w is None:
            return draw(x.shape)
        lo, n, total = w
        return draw((total, *x.shape[1:]))[lo : lo + n]


def share_batch(model: nn.Module, share: BatchShare | None) -> None:
    """Hand `share` to every `RowRandom` module of `model` (None: take it back)."""
    for m in model.modules():
        if isinstance(m, RowRandom):
            m.share = share


class Dropout(RowRandom):
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
        keep = keep_mask(x, self.p, self.window(x))
        return _MaskScale.apply(x, keep, 1.0 / (1.0 - self.p), relu)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GaussianNoise(RowRandom):
    """Standard normal noise in x's shape (torch.randn_like), drawn per row of the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.whole_batch(x, lambda shape: torch.randn(shape, dtype=x.dtype, device=x.device))


class GumbelSoftmax(RowRandom):
    """nn.functional.gumbel_softmax over the last dimension, its Gumbel noise drawn per row of
    the batch: softmax((logits + g) / tau) with g = -log(Exp(1)); `hard`: the one-hot of its
    argmax, with the soft sample's gradient (straight-through)."""

    def forward(self, logits: torch.Tensor, tau: float, hard: bool) -> torch.Tensor:
        def draw(shape):
            e = torch.empty(shape, dtype=logits.dtype, device=logits.device)
            return e.exponential_()

        gumbels = -self.whole_batch(logits, draw).log()
        y = ((logits + gumbels) / tau).softmax(-1)
        if not hard:
            return y
        index = y.max(-1, keepdim=True)[1]
        one_hot = torch.zeros_like(logits).scatter_(-1, index, 1.0)
        return one_hot - y.detach() + y


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

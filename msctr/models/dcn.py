"""DCN: Deep & Cross Network (Wang et al., ADKDD 2017), with DCN-V2's matrix cross as an option.

x_0 = every field's embedding concatenated [B, D]. The cross network applies L layers
x_{l+1} = x_0 x_l^T w_l + b_l + x_l (vector form, the paper's eq. 1), computed as
x_0 * (x_l @ w_l) + b_l + x_l with no D x D matrix; `cross: matrix` is DCN-V2's
x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, with W_l = U_l V_l^T when `rank` is set (DCN-V2's
low-rank variant). In parallel a deep network (MLP) maps x_0 to h; the logit is one linear
over [x_L ++ h]. Shapes: B batch, D = n_fields * embed_dim, L cross layers, r rank, H the
last hidden size. Choices where the paper is vague are listed in docs/models/dcn.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import MLP
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, need_layers, register


@dataclass
class DCNParams(ModelParams):
    num_cross_layers: int = 3  # L
    cross: Literal["vector", "matrix"] = "vector"  # DCN's w_l in R^D, or DCN-V2's W_l
    rank: int | None = None  # matrix only: W_l = U_l V_l^T with U_l, V_l in R^{D x rank}
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64])  # deep network
    dropout: float = 0.1
    batch_norm: bool = True

    def check(self, where: str) -> None:
        need_layers(where, "hidden", self.hidden, "[256, 128, 64]")
        if self.rank is not None and self.cross != "matrix":
            raise UserError(
                f"{where}.rank applies to the matrix cross only; set cross: matrix or drop rank"
            )
        if "cross" in self.drop and "deep" in self.drop:
            raise UserError(
                f"{where}.drop: dropping both 'cross' and 'deep' leaves no network; drop one"
            )


class CrossNetwork(nn.Module):
    """L cross layers on x_0 [B, D] -> x_L [B, D].

    vector: x_{l+1} = x_0 * (x_l @ w_l)[:, None] + b_l + x_l   (w [L, D], b [L, D])
    matrix: x_{l+1} = x_0 * (x_l @ W_l^T + b_l) + x_l          (W [L, D, D], b [L, D])
    low rank: W_l = U_l V_l^T, applied as (x_l @ V_l) @ U_l^T  (U, V [L, D, r])
    Weights Xavier-uniform (w_l as a D x 1 matrix), biases zero.
    """

    def __init__(self, dim: int, num_layers: int, cross: str = "vector", rank: int | None = None):
        super().__init__()
        self.cross = cross
        self.low_rank = cross == "matrix" and rank is not None
        self.b = nn.Parameter(torch.zeros(num_layers, dim))
        if cross == "vector":
            bound = math.sqrt(6.0 / (dim + 1))
            self.w = nn.Parameter(torch.empty(num_layers, dim).uniform_(-bound, bound))
        elif self.low_rank:
            bound = math.sqrt(6.0 / (dim + rank))
            self.U = nn.Parameter(torch.empty(num_layers, dim, rank).uniform_(-bound, bound))
            self.V = nn.Parameter(torch.empty(num_layers, dim, rank).uniform_(-bound, bound))
        else:
            bound = math.sqrt(6.0 / (2 * dim))
            self.W = nn.Parameter(torch.empty(num_layers, dim, dim).uniform_(-bound, bound))
        self.num_layers = num_layers

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for i in range(self.num_layers):
            if self.cross == "vector":
                x = x0 * (x @ self.w[i]).unsqueeze(-1) + self.b[i] + x  # [B, D]
            elif self.low_rank:
                x = x0 * ((x @ self.V[i]) @ self.U[i].T + self.b[i]) + x
            else:
                x = x0 * (x @ self.W[i].T + self.b[i]) + x
        return x


@register(
    "dcn",
    DCNParams,
    paper="DCN (Wang et al., ADKDD 2017); DCN-V2 matrix cross as an option",
    switches={
        "cross": "the cross network (DNN alone)",
        "deep": "the deep network (cross network alone)",
    },
)
class DCN(nn.Module):
    def __init__(self, schema: Schema, p: DCNParams):
        super().__init__()
        self.embedding = FeatureEmbedding(schema, p.embed_dim)
        D = self.embedding.num_fields * p.embed_dim
        use_cross, use_deep = "cross" not in p.drop, "deep" not in p.drop
        self.cross = CrossNetwork(D, p.num_cross_layers, p.cross, p.rank) if use_cross else None
        self.deep = MLP(D, p.hidden, p.dropout, p.batch_norm) if use_deep else None
        # logit = w_logits^T [x_L ++ h] + b: one linear over the concatenation, kept as its two
        # column blocks (init as that one nn.Linear would be), so an ablated model shares the
        # block of the part it keeps with the full model
        H = p.hidden[-1]
        bound = 1 / math.sqrt(D + H)
        self.cross_out = nn.Linear(D, 1, bias=False) if use_cross else None
        self.deep_out = nn.Linear(H, 1, bias=False) if use_deep else None
        self.out_bias = nn.Parameter(torch.empty(1).uniform_(-bound, bound))
        for head in (self.cross_out, self.deep_out):
            if head is not None:
                nn.init.uniform_(head.weight, -bound, bound)

    def forward(self, batch: Batch) -> torch.Tensor:
        x0 = self.embedding.fields(batch).flatten(1)  # [B, D]
        logit = self.out_bias
        if self.cross is not None:
            logit = logit + self.cross_out(self.cross(x0))  # [B, 1]
        if self.deep is not None:
            logit = logit + self.deep_out(self.deep(x0))  # [B, 1]
        return logit.squeeze(-1)  # [B]

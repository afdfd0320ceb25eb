"""HAMUR (Li et al., "HAMUR: Hyper Adapter for Multi-Domain Recommendation", CIKM 2023), with
scenarios in the role of domains, on its MLP backbone.

1. Backbone: one MLP per scenario (Linear -> BatchNorm -> ReLU per hidden layer, then a
   linear output) over the shared field embeddings x.
2. Domain-shared hyper-network: an MLP on x gives each sample its instance matrix
   H(x) [k, k].
3. Domain-specific adapter cells after the last hidden layer(s): a down projection with
   weight U_1 H(x) V_1 (d -> m), a sigmoid, an up projection with weight U_2 H(x) V_2
   (m -> d), a domain norm, and a shortcut: h + DN(...). U and V are the scenario's own
   factors, H the sample's, so every sample gets its own adapter weights.

No per-sample weight matrix is built: x (U H V) = ((x U) H) V, so a projection costs two
grouped matmuls (U, V: each row through its own scenario's factors, `ScenarioGroups`) and a
[k, k] product per row. The domain norm normalizes each scenario's rows with that scenario's
batch statistics in training and its running statistics at evaluation (`ScenarioBatchNorm`),
so a score never depends on the other rows of its batch (the authors' code normalizes by the
current batch even at evaluation; see docs/models/hamur.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import MLP, Dropout, autocast_input
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, need_layers, register
from msctr.models.scenario import ScenarioBatchNorm, ScenarioGroups, ScenarioLinear


def _factor(S: int, a: int, b: int) -> nn.Parameter:
    bound = 1 / math.sqrt(a)  # nn.Linear's default range for an a -> b map
    return nn.Parameter(torch.empty(S, a, b).uniform_(-bound, bound))


class HyperProjection(nn.Module):
    """x -> x U_s H(x) V_s + b_s per row, U_s [in, k], V_s [k, out] the row's scenario's
    factors and H(x) [k, k] its instance matrix (the identity when H is None)."""

    def __init__(self, num_scenarios: int, in_dim: int, out_dim: int, k: int):
        super().__init__()
        self.U = _factor(num_scenarios, in_dim, k)
        self.V = _factor(num_scenarios, k, out_dim)
        self.bias = nn.Parameter(torch.zeros(num_scenarios, out_dim))

    def forward(
        self, x: torch.Tensor, H: torch.Tensor | None, groups: ScenarioGroups
    ) -> torch.Tensor:
        S, _, k = self.U.shape
        z = groups.linear(x, self.U, x.new_zeros(S, k))  # [B, k]
        if H is not None:
            z = torch.bmm(z.unsqueeze(1), H.to(z.dtype)).squeeze(1)  # [B, k]
        return groups.linear(z, self.V, self.bias)  # [B, out]


class AdapterCell(nn.Module):
    """HAMUR's adapter: h + DN(up(sigmoid(down(h)))), with instance-generated weights."""

    def __init__(self, num_scenarios: int, dim: int, bottleneck: int, k: int, norm: bool):
        super().__init__()
        self.down = HyperProjection(num_scenarios, dim, bottleneck, k)
        self.up = HyperProjection(num_scenarios, bottleneck, dim, k)
        self.norm = ScenarioBatchNorm(num_scenarios, dim) if norm else None

    def forward(
        self, h: torch.Tensor, H: torch.Tensor | None, groups: ScenarioGroups
    ) -> torch.Tensor:
        z = self.up(torch.sigmoid(self.down(h, H, groups)), H, groups)  # [B, d]
        if self.norm is not None:
            z = self.norm(z, groups.scenario)
        return h + z


@dataclass
class HAMURParams(ModelParams):
    hidden: list[int] = field(default_factory=lambda: [256, 128])  # each scenario's MLP
    hyper_hidden: list[int] = field(default_factory=lambda: [64])  # the hyper-network's MLP
    k: int = 32  # instance matrix H(x) is k x k
    bottleneck: int = 32  # the adapter's down-projection width m
    adapters: int = 1  # adapter cells, after the last `adapters` hidden layers
    dropout: float = 0.1

    def check(self, where: str) -> None:
        need_layers(where, "hidden", self.hidden, "[256, 128]")
        if self.adapters > len(self.hidden):
            raise UserError(
                f"{where}.adapters is {self.adapters}, but there are only {len(self.hidden)} "
                "hidden layers to put an adapter after; lower adapters or add layers to hidden"
            )


@register(
    "hamur",
    HAMURParams,
    paper="HAMUR (Li et al., CIKM 2023)",
    switches={
        "adapter": "the adapter cells (and so the hyper-network): the backbone alone",
        "hyper": "the hyper-network: adapter weights U V, the same for every sample",
        "norm": "the domain norm inside each adapter cell",
    },
)
class HAMUR(nn.Module):
    def __init__(self, schema: Schema, p: HAMURParams):
        super().__init__()
        S = schema.num_scenarios
        self.num_scenarios = S
        self.embedding = FeatureEmbedding(schema, p.embed_dim)
        in_dim = self.embedding.num_fields * p.embed_dim
        dims = [in_dim, *p.hidden]
        self.layers = nn.ModuleList(ScenarioLinear(S, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(ScenarioBatchNorm(S, h) for h in p.hidden)
        self.dropout = Dropout(p.dropout)
        self.out = ScenarioLinear(S, dims[-1], 1)
        use_adapters = "adapter" not in p.drop
        n = p.adapters if use_adapters else 0
        self.first_adapted = len(p.hidden) - n  # hidden layers from here on get a cell
        self.adapters = nn.ModuleList(
            AdapterCell(S, h, p.bottleneck, p.k, "norm" not in p.drop)
            for h in p.hidden[self.first_adapted :]
        )
        self.k = p.k
        self.hyper = (
            MLP(in_dim, p.hyper_hidden, batch_norm=True, out_dim=p.k * p.k)
            if use_adapters and "hyper" not in p.drop
            else None
        )

    def instance_matrix(self, x: torch.Tensor) -> torch.Tensor | None:
        """H(x) [B, k, k] from the domain-shared hyper-network (None: switched off)."""
        if self.hyper is None:
            return None
        return self.hyper(x).view(-1, self.k, self.k)

    def forward(self, batch: Batch) -> torch.Tensor:
        s = batch.scenario
        groups = ScenarioGroups(s, self.num_scenarios)
        x = autocast_input(self.embedding.fields(batch).flatten(1))  # [B, n*d]
        H = self.instance_matrix(x) if len(self.adapters) else None
        h = x
        for i, (layer, norm) in enumerate(zip(self.layers, self.norms)):
            h = self.dropout(norm(layer(h, groups), s), relu=True)  # [B, h_i]
            if i >= self.first_adapted:
                h = self.adapters[i - self.first_adapted](h, H, groups)
        return self.out(h, groups).squeeze(-1)  # [B]

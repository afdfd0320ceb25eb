"""STAR (Sheng et al., "One Model to Serve All: Star Topology Adaptive Recommender for
Multi-Domain CTR Prediction", CIKM 2021), with scenarios in the role of domains.

1. Embeddings of the common fields, concatenated.
2. Partitioned normalization (PN): each scenario is normalized with its own statistics and
   scaled/shifted by shared and scenario parameters: (gamma * gamma_s) x_hat + (beta + beta_s).
3. Star-topology FCN: every layer of scenario s uses W = W_shared * W_s (elementwise) and
   b = b_shared + b_s, so the shared centre learns from all data and W_s adapts it.
4. Auxiliary network: a small MLP on the scenario embedding whose output is added to the
   main logit, so the scenario directly shifts the prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import MLP, Dropout
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, need_layers, register
from msctr.models.scenario import ScenarioBatchNorm, ScenarioGroups


class PartitionedNorm(ScenarioBatchNorm):
    """STAR's partitioned normalization: batch normalization with per-scenario statistics
    (`ScenarioBatchNorm`) and a shared x per-scenario affine, scale gamma * gamma_s and shift
    beta + beta_s. [B, D], scenario [B] -> [B, D].
    """

    def __init__(self, num_scenarios: int, dim: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_scenarios, dim, eps, momentum)
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gamma * self.scenario_gamma, self.beta + self.scenario_beta


class StarLinear(nn.Module):
    """Star-topology linear: scenario s uses W_shared * W_s and b_shared + b_s.

    W_s starts at 1 and b_s at 0, so every scenario starts as the shared network (a product
    of two default-initialized matrices would start with vanishing weights).
    """

    def __init__(self, num_scenarios: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_dim).uniform_(-bound, bound))
        self.scenario_weight = nn.Parameter(torch.ones(num_scenarios, in_dim, out_dim))
        self.scenario_bias = nn.Parameter(torch.zeros(num_scenarios, out_dim))

    def forward(self, x: torch.Tensor, groups: ScenarioGroups) -> torch.Tensor:
        w = self.weight * self.scenario_weight  # [S, in, out]: every scenario's weight, once
        b = self.bias + self.scenario_bias  # [S, out]
        return groups.linear(x, w, b)  # [B, out], each row with its own scenario's weight


@dataclass
class STARParams(ModelParams):
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64])  # star FCN hidden sizes
    aux_hidden: list[int] = field(default_factory=lambda: [32])  # auxiliary network
    dropout: float = 0.1
    pn_momentum: float = 0.1
    pn_eps: float = 1e-5
    pn_hidden: bool = False  # also a PN after each star FC layer (BN's usual place)
    scenario_in_main: bool = False  # paper: the scenario feeds the auxiliary network only

    def check(self, where: str) -> None:
        need_layers(where, "hidden", self.hidden, "[256, 128, 64]")
        if not 0.0 < self.pn_momentum <= 1.0:
            raise UserError(f"{where}.pn_momentum must be in (0, 1], got {self.pn_momentum}")
        if self.pn_eps <= 0:
            raise UserError(f"{where}.pn_eps must be positive, got {self.pn_eps}")


@register("star", STARParams, paper="STAR (Sheng et al., CIKM 2021)")
class STAR(nn.Module):
    def __init__(self, schema: Schema, p: STARParams):
        super().__init__()
        S = schema.num_scenarios
        self.num_scenarios = S
        self.embedding = FeatureEmbedding(schema, p.embed_dim, include_scenario=p.scenario_in_main)
        in_dim = self.embedding.num_fields * p.embed_dim
        self.pn = PartitionedNorm(S, in_dim, p.pn_eps, p.pn_momentum)
        dims = [in_dim, *p.hidden]
        self.layers = nn.ModuleList(StarLinear(S, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.hidden_pn = (
            nn.ModuleList(PartitionedNorm(S, h, p.pn_eps, p.pn_momentum) for h in p.hidden)
            if p.pn_hidden
            else None
        )
        self.out = StarLinear(S, dims[-1], 1)
        self.dropout = Dropout(p.dropout)
        self.aux = MLP(p.embed_dim, p.aux_hidden, out_dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        s = batch.scenario
        groups = ScenarioGroups(s, self.num_scenarios)
        h = self.pn(self.embedding.fields(batch).flatten(1), s)  # [B, n*d]
        for i, layer in enumerate(self.layers):
            h = layer(h, groups)  # [B, h_i]
            if self.hidden_pn is not None:
                h = self.hidden_pn[i](h, s)
            h = self.dropout(h, relu=True)
        main = self.out(h, groups).squeeze(-1)  # [B]
        aux = self.aux(self.embedding.scenario(batch)).squeeze(-1)  # [B]
        return main + aux

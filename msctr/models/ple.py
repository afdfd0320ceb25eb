"""PLE (Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
Model for Personalized Recommendations", RecSys 2020), with scenarios in the role of tasks.

Each CGC (Customized Gate Control) level has shared experts and, per scenario, its own
scenario-specific experts. A scenario's gate mixes the shared experts with that scenario's
experts; a shared gate builds the shared input of the next level. Levels are stacked
(progressive extraction) and each scenario has a tower on its last-level output.

A sample belongs to one scenario, so it only ever needs its own scenario's branch: the
scenario-specific experts are computed for the rows of their scenario only (`ScenarioGroups`),
and the shared gate mixes the shared experts with the sample's own scenario's experts (the
multi-task paper's shared gate sees every task's experts, which here would mean running every
scenario's experts on every sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.models.blocks import Dropout, StackedMLP, autocast_input
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, need_layers, register
from msctr.models.scenario import (
    ScenarioBatchNorm,
    ScenarioGroups,
    ScenarioLinear,
    ScenarioMLP,
)


class ScenarioExperts(nn.Module):
    """E expert MLPs per scenario (weights [S, E, in, out] per layer); each row runs only the
    E experts of its own scenario: [B, in] -> [B, E, out]."""

    def __init__(
        self,
        num_scenarios: int,
        num_experts: int,
        in_dim: int,
        hidden: list[int],
        dropout: float,
        batch_norm: bool = False,
    ):
        super().__init__()
        dims = [in_dim, *hidden]
        S, E = num_scenarios, num_experts
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            bound = 1 / math.sqrt(a)  # nn.Linear's default range
            self.weights.append(nn.Parameter(torch.empty(S, E, a, b).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(S, E, b).uniform_(-bound, bound)))
        # each scenario's experts normalized over that scenario's rows only, as a BatchNorm1d
        # inside each expert would be
        self.norms = (
            nn.ModuleList(ScenarioBatchNorm(S, E * h) for h in hidden) if batch_norm else None
        )
        self.dropout = Dropout(dropout)
        self.num_experts = E
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor, groups: ScenarioGroups) -> torch.Tensor:
        B, E = x.shape[0], self.num_experts
        w0, b0 = self.weights[0], self.biases[0]  # [S, E, in, h1], [S, E, h1]
        S, _, in_dim, h1 = w0.shape
        # the first layer's input is shared by the E experts: one [in, E*h1] matmul per chunk
        w0 = w0.permute(0, 2, 1, 3).reshape(S, in_dim, E * h1)
        h = self._norm(0, groups.linear(x, w0, b0.reshape(S, E * h1)), groups)  # [B, E*h1]
        h = self.dropout(h, relu=True).view(B, E, h1)
        for k, (w, b) in enumerate(zip(self.weights[1:], self.biases[1:]), 1):
            h = groups.linear(h, w, b)  # [B, E, h]
            h = self.dropout(self._norm(k, h.flatten(1), groups), relu=True).view_as(h)
        return h

    def _norm(self, layer: int, h: torch.Tensor, groups: ScenarioGroups) -> torch.Tensor:
        return h if self.norms is None else self.norms[layer](h, groups.scenario)


class CGC(nn.Module):
    """One extraction level: shared experts, scenario-specific experts, gates.

    Inputs: own-scenario representation [B, in] and shared representation [B, in] (both the
    embeddings at level 1). Outputs the new scenario representation, and (except at the last
    level) the new shared one.
    """

    def __init__(self, num_scenarios: int, in_dim: int, p: PLEParams, last: bool):
        super().__init__()
        self.shared = StackedMLP(p.shared_experts, in_dim, p.expert_hidden, p.dropout, p.batch_norm)
        self.specific = ScenarioExperts(
            num_scenarios, p.specific_experts, in_dim, p.expert_hidden, p.dropout, p.batch_norm
        )
        n = p.specific_experts + p.shared_experts
        self.scenario_gate = ScenarioLinear(num_scenarios, in_dim, n)  # gate of each scenario
        self.shared_gate = None if last else nn.Linear(in_dim, n)
        self.out_dim = self.shared.out_dim

    def forward(
        self,
        h_own: torch.Tensor,
        h_shared: torch.Tensor,
        scenario: torch.Tensor,
        groups: ScenarioGroups,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shared = self.shared(h_shared)  # [B, E_sh, h]
        own = self.specific(h_own, groups)  # [B, E_sp, h]
        experts = torch.cat([own, shared], dim=1)  # [B, E_sp + E_sh, h]
        g = torch.softmax(self.scenario_gate(h_own, scenario), dim=-1)  # [B, E_sp + E_sh]
        out_own = torch.einsum("bn,bnh->bh", g, experts)  # [B, h]
        if self.shared_gate is None:
            return out_own, None
        g_sh = torch.softmax(self.shared_gate(h_shared), dim=-1)  # [B, E_sp + E_sh]
        return out_own, torch.einsum("bn,bnh->bh", g_sh, experts)


@dataclass
class PLEParams(ModelParams):
    num_levels: int = 2
    shared_experts: int = 2
    specific_experts: int = 1  # per scenario
    expert_hidden: list[int] = field(default_factory=lambda: [256, 128])  # every level's experts
    tower_hidden: list[int] = field(default_factory=lambda: [64])
    dropout: float = 0.1
    # BatchNorm inside the experts, as MMoE's option and default: each shared expert over the
    # batch, each scenario's experts over that scenario's rows (ScenarioBatchNorm)
    batch_norm: bool = True

    def check(self, where: str) -> None:
        need_layers(where, "expert_hidden", self.expert_hidden, "[256, 128]")


@register("ple", PLEParams, paper="PLE (Tang et al., RecSys 2020)")
class PLE(nn.Module):
    def __init__(self, schema: Schema, p: PLEParams):
        super().__init__()
        S = schema.num_scenarios
        self.num_scenarios = S
        self.embedding = FeatureEmbedding(schema, p.embed_dim)
        dim = self.embedding.num_fields * p.embed_dim
        self.levels = nn.ModuleList()
        for k in range(p.num_levels):
            self.levels.append(CGC(S, dim, p, last=k == p.num_levels - 1))
            dim = self.levels[-1].out_dim
        self.towers = ScenarioMLP(S, dim, p.tower_hidden, 1, p.dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        s = batch.scenario
        groups = ScenarioGroups(s, self.num_scenarios)
        x = autocast_input(self.embedding.fields(batch).flatten(1))  # [B, n*d]
        h_own, h_shared = x, x
        for level in self.levels:
            h_own, h_shared = level(h_own, h_shared, s, groups)
        return self.towers(h_own, s).squeeze(-1)  # [B]

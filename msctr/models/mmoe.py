"""MMoE (Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018), with scenarios in the role of tasks.

E shared experts see every sample; each scenario has its own softmax gate over the experts
and its own tower. A sample is mixed by its scenario's gate and scored by its scenario's tower.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.models.blocks import StackedMLP, autocast_input
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, need_layers, register
from msctr.models.scenario import ScenarioLinear, ScenarioMLP


@dataclass
class MMoEParams(ModelParams):
    num_experts: int = 4
    expert_hidden: list[int] = field(default_factory=lambda: [256, 128])
    tower_hidden: list[int] = field(default_factory=lambda: [64])
    dropout: float = 0.1
    # BatchNorm inside the experts, as in this project's DNN and Shared Bottom: with small
    # initial embeddings, expert MLPs without it learn little beyond additive effects
    batch_norm: bool = True

    def check(self, where: str) -> None:
        need_layers(where, "expert_hidden", self.expert_hidden, "[256, 128]")


@register("mmoe", MMoEParams, paper="MMoE (Ma et al., KDD 2018)")
class MMoE(nn.Module):
    def __init__(self, schema: Schema, p: MMoEParams):
        super().__init__()
        S = schema.num_scenarios
        self.embedding = FeatureEmbedding(schema, p.embed_dim)
        in_dim = self.embedding.num_fields * p.embed_dim
        self.experts = StackedMLP(p.num_experts, in_dim, p.expert_hidden, p.dropout, p.batch_norm)
        # gate of scenario s: softmax(x W_s + b_s) over the E experts (paper eq. 5, one per task)
        self.gates = ScenarioLinear(S, in_dim, p.num_experts)
        self.towers = ScenarioMLP(S, self.experts.out_dim, p.tower_hidden, 1, p.dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = autocast_input(self.embedding.fields(batch).flatten(1))  # [B, n*d]
        experts = self.experts(x)  # [B, E, h]: all experts at once
        gate = torch.softmax(self.gates(x, batch.scenario), dim=-1)  # [B, E]
        mixed = torch.bmm(gate.unsqueeze(1), experts).squeeze(1)  # [B, h]
        return self.towers(mixed, batch.scenario).squeeze(-1)  # [B]

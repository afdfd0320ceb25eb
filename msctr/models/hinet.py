"""HiNet (Zhou et al., "HiNet: Novel Multi-Scenario & Multi-Task Learning with Hierarchical
Information Extraction", ICDE 2023), for one task (CTR) per scenario.

1. Scenario extraction layer, on the field embeddings x:
   - every expert is a subexpert integration module (SEI): K sub-expert MLPs mixed by a
     softmax gate on x;
   - one scenario-shared SEI and one scenario-specific SEI per scenario;
   - the scenario-aware attentive network (SAN): a softmax over the S scenarios computed from
     the scenario embedding weighs the *other* scenarios' specific SEIs into a transfer
     representation;
   - the scenario representation is [transfer ++ own scenario's SEI ++ shared SEI].
2. Task extraction layer: a CGC (PLE's customized gate control) on the scenario
   representation. With one task per scenario, each scenario's task has its own experts, its
   gate and its tower, beside experts shared by all (see docs/models/hinet.md).

Every expert MLP of both layers has BatchNorm by default (`batch_norm`; see
docs/models/hinet.md for why: without it HiNet learned slowly on msctr's embeddings).

Every row needs all S scenario SEIs (the SAN reads the other scenarios' ones), so the
(S + 1) x K sub-experts run as one stacked MLP on the shared input; the task layer's experts,
gates and towers run for the row's own scenario only (`ScenarioGroups`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.models.blocks import MLP, StackedMLP, autocast_input
from msctr.models.embedding import FeatureEmbedding
from msctr.models.ple import ScenarioExperts
from msctr.models.registry import ModelParams, need_layers, register
from msctr.models.scenario import ScenarioGroups, ScenarioLinear, ScenarioMLP


class SEIBank(nn.Module):
    """G subexpert integration modules on one input: each has K sub-expert MLPs and a softmax
    gate over them. All G * K MLPs are one stacked MLP, all G gates one linear.
    [B, in] -> [B, G, out]. With K = 1 (the `sei` switch off) each module is one plain expert
    and there is no gate."""

    def __init__(
        self,
        groups: int,
        sub_experts: int,
        in_dim: int,
        hidden: list[int],
        dropout: float,
        batch_norm: bool = False,
    ):
        super().__init__()
        self.G, self.K = groups, sub_experts
        self.experts = StackedMLP(groups * sub_experts, in_dim, hidden, dropout, batch_norm)
        self.gates = nn.Linear(in_dim, groups * sub_experts) if sub_experts > 1 else None
        self.out_dim = self.experts.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        e = self.experts(x).view(B, self.G, self.K, -1)  # [B, G, K, h]
        if self.gates is None:
            return e.squeeze(2)
        g = torch.softmax(self.gates(x).view(B, self.G, self.K), dim=-1)  # [B, G, K]
        return torch.einsum("bgk,bgkh->bgh", g, e)


@dataclass
class HiNetParams(ModelParams):
    # scenario extraction layer (the authors' code: 5 sub-experts of [128, 64] per SEI)
    sub_experts: int = 5  # K, per SEI
    sei_hidden: list[int] = field(default_factory=lambda: [128, 64])
    san_hidden: list[int] = field(default_factory=lambda: [128, 64])  # SAN's MLP before S
    # task extraction layer: a CGC with, per scenario's task, its own experts; shared experts
    task_specific_experts: int = 2
    task_shared_experts: int = 2
    task_expert_hidden: list[int] = field(default_factory=lambda: [128, 64])
    tower_hidden: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.1
    # BatchNorm in every expert of both layers (each scenario's over its own rows), as msctr's
    # MMoE and PLE experts: without it the 5-6 ReLU layers over embeddings that start at std
    # 0.01 learn slowly (docs/models/hinet.md, "Measured")
    batch_norm: bool = True

    def check(self, where: str) -> None:
        need_layers(where, "sei_hidden", self.sei_hidden, "[128, 64]")
        need_layers(where, "task_expert_hidden", self.task_expert_hidden, "[128, 64]")


@register(
    "hinet",
    HiNetParams,
    paper="HiNet (Zhou et al., ICDE 2023)",
    switches={
        "san": "the scenario-aware attentive network (the transfer part of the scenario layer)",
        "sei": "subexpert integration: each scenario-layer expert is one MLP, no sub-expert gate",
    },
)
class HiNet(nn.Module):
    def __init__(self, schema: Schema, p: HiNetParams):
        super().__init__()
        S = schema.num_scenarios
        self.num_scenarios = S
        self.embedding = FeatureEmbedding(schema, p.embed_dim)
        in_dim = self.embedding.num_fields * p.embed_dim
        K = 1 if "sei" in p.drop else p.sub_experts
        # groups 0..S-1: the scenario-specific SEIs; group S: the scenario-shared SEI
        self.sei = SEIBank(S + 1, K, in_dim, p.sei_hidden, p.dropout, p.batch_norm)
        h = self.sei.out_dim
        self.san = None if "san" in p.drop else MLP(p.embed_dim, p.san_hidden, out_dim=S)
        rep_dim = (2 if self.san is None else 3) * h
        # task extraction layer (CGC, one task per scenario)
        self.task_specific = ScenarioExperts(
            S, p.task_specific_experts, rep_dim, p.task_expert_hidden, p.dropout, p.batch_norm
        )
        self.task_shared = StackedMLP(
            p.task_shared_experts, rep_dim, p.task_expert_hidden, p.dropout, p.batch_norm
        )
        self.task_gate = ScenarioLinear(S, rep_dim, p.task_specific_experts + p.task_shared_experts)
        self.towers = ScenarioMLP(S, self.task_shared.out_dim, p.tower_hidden, 1, p.dropout)

    def scenario_representation(self, batch: Batch) -> torch.Tensor:
        """The scenario extraction layer's output: [transfer ++ own ++ shared], [B, 3h]
        ([own ++ shared] without the SAN)."""
        s = batch.scenario
        S = self.num_scenarios
        x = autocast_input(self.embedding.fields(batch).flatten(1))  # [B, n*d]
        experts = self.sei(x)  # [B, S + 1, h]
        specific, shared = experts[:, :S], experts[:, S]  # [B, S, h], [B, h]
        own = specific[torch.arange(x.shape[0], device=x.device), s]  # [B, h]
        if self.san is None:
            return torch.cat([own, shared], dim=1)
        w = torch.softmax(self.san(self.embedding.scenario(batch)), dim=-1)  # [B, S]
        # the other scenarios only: the own scenario's SEI enters as `own`
        w = w.masked_fill(nn.functional.one_hot(s, S).bool(), 0.0)
        transfer = torch.einsum("bs,bsh->bh", w.to(specific.dtype), specific)  # [B, h]
        return torch.cat([transfer, own, shared], dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        s = batch.scenario
        groups = ScenarioGroups(s, self.num_scenarios)
        r = autocast_input(self.scenario_representation(batch))  # [B, rep]
        experts = torch.cat([self.task_specific(r, groups), self.task_shared(r)], dim=1)
        g = torch.softmax(self.task_gate(r, groups), dim=-1)  # [B, E_sp + E_sh]
        t = torch.einsum("bn,bnh->bh", g, experts)  # [B, h]
        return self.towers(t, groups).squeeze(-1)  # [B]

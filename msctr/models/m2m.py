"""M2M (Zhang et al., "Leaving No One Behind: A Multi-Scenario Multi-Task Meta Learning Approach
for Advertiser Modeling", WSDM 2022), for one task (CTR).

1. Backbone:
   - every field embedded (scenario, sparse, dense); each behavior sequence through the
     transformer layer: position embeddings added, multi-head self-attention among the row's
     own behaviors (padding masked), residual + LayerNorm, then the masked mean;
   - expert view: K expert MLPs on the concatenation, E_k [B, h];
   - task view: T = MLP(task embedding) (one task: one learned embedding);
   - scenario knowledge: S_s = MLP(e_s), from the scenario's embedding.
2. Meta unit: an MLP whose weights are generated from the scenario knowledge,
   h_l = LeakyReLU(h_{l-1} W_l(S) + b_l(S)), W_l(S) = reshape(S V_l + c_l), b_l(S) = S U_l + u_l.
3. Meta attention: a_k = v^T MetaUnit([E_k ++ T]), alpha = softmax_k(a), R = sum_k alpha_k E_k.
4. Meta tower: L_0 = R, L_j = LeakyReLU(MetaUnit_j(L_{j-1}) + L_{j-1}); logit = w^T L_J + c.

The scenario knowledge depends on the scenario alone (msctr's datasets have no scenario
attribute beyond its id), so each meta unit generates one weight set per scenario per batch,
[S, d, d], and every row goes through its own scenario's through one grouped matmul
(`ScenarioGroups`), never a weight matrix per row. The attention of the transformer layer is
within a row, over its behaviors; no row sees another (see docs/models/m2m.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import MLP, StackedMLP, autocast_input
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, need_layers, register
from msctr.models.scenario import ScenarioGroups

SLOPE = 0.01  # LeakyReLU's negative slope (the paper's activation throughout)


class BehaviorTransformer(nn.Module):
    """The transformer layer on one behavior sequence, within each row: [B, L, d], mask [B, L]
    -> [B, d] (rows without behaviors -> zeros)."""

    def __init__(self, dim: int, max_len: int, heads: int):
        super().__init__()
        self.heads = heads
        self.position = nn.Parameter(torch.empty(max_len, dim).normal_(std=0.02))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, d = v.shape
        H = self.heads
        x = v + self.position[:L]
        q, k, val = self.qkv(x).view(B, L, 3, H, d // H).permute(2, 0, 3, 1, 4)  # [B, H, L, d/H]
        # a row without behaviors attends to its first (padding) slot, so its softmax is not
        # over nothing; the mean below gives it zeros all the same
        keys = torch.cat([mask[:, :1] | ~mask.any(1, keepdim=True), mask[:, 1:]], dim=1)
        att = nn.functional.scaled_dot_product_attention(q, k, val, attn_mask=keys[:, None, None])
        h = self.norm(x + self.out(att.transpose(1, 2).reshape(B, L, d)))  # [B, L, d]
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class MetaUnit(nn.Module):
    """`layers` layers d -> d whose weights are generated from the scenario knowledge:
    x -> LeakyReLU(x W_l(S_s) + b_l(S_s)) with the row's scenario s. With meta=False (an
    ablation) the weights are plain parameters, the same for every scenario."""

    def __init__(self, dim: int, knowledge_dim: int, layers: int, meta: bool = True):
        super().__init__()
        self.dim, self.meta = dim, meta
        bound = 1 / math.sqrt(dim)  # a plain d -> d linear's range, for the generated weights too
        if meta:
            self.gen_weight = nn.ModuleList(
                nn.Linear(knowledge_dim, dim * dim) for _ in range(layers)
            )
            self.gen_bias = nn.ModuleList(nn.Linear(knowledge_dim, dim) for _ in range(layers))
            for g in [*self.gen_weight, *self.gen_bias]:
                # W = S V + c starts as a plain linear's (c) plus a smaller scenario part
                spread = bound / math.sqrt(knowledge_dim)
                nn.init.uniform_(g.weight, -spread, spread)
                nn.init.uniform_(g.bias, -bound, bound)
        else:
            self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(
        self, x: torch.Tensor, knowledge: torch.Tensor | None, groups: ScenarioGroups
    ) -> torch.Tensor:
        # x [B, d], knowledge [S, k] -> [B, d]
        if knowledge is None or not self.meta:
            for layer in self.layers:
                x = nn.functional.leaky_relu(layer(x), SLOPE)
            return x
        S, d = knowledge.shape[0], self.dim
        for gen_w, gen_b in zip(self.gen_weight, self.gen_bias):
            w, b = gen_w(knowledge).view(S, d, d), gen_b(knowledge)  # one set per scenario
            x = nn.functional.leaky_relu(groups.linear(x, w, b), SLOPE)
        return x


@dataclass
class M2MParams(ModelParams):
    heads: int = 2  # the transformer layer's attention heads (embed_dim must divide by it)
    num_experts: int = 4  # K expert views
    expert_hidden: list[int] = field(default_factory=lambda: [256, 64])  # h = the last size
    scenario_hidden: list[int] = field(default_factory=lambda: [64])  # scenario knowledge MLP
    meta_layers: int = 2  # layers of each meta unit
    tower_layers: int = 2  # residual meta-unit blocks of the meta tower
    dropout: float = 0.1  # inside the expert MLPs
    batch_norm: bool = True  # inside the expert MLPs, as msctr's MMoE and PLE experts

    def check(self, where: str) -> None:
        need_layers(where, "expert_hidden", self.expert_hidden, "[256, 64]")
        need_layers(where, "scenario_hidden", self.scenario_hidden, "[64]")
        if self.embed_dim % self.heads:
            raise UserError(
                f"{where}.heads is {self.heads}, but embed_dim {self.embed_dim} is not a "
                "multiple of it; pick heads that divide embed_dim"
            )


@register(
    "m2m",
    M2MParams,
    paper="M2M (Zhang et al., WSDM 2022)",
    switches={
        "meta_attention": "the meta attention's scenario-generated weights: a plain attention MLP",
        "meta_tower": "the meta tower's scenario-generated weights: a plain residual tower",
        "transformer": "the transformer layer: behavior sequences mean-pooled",
    },
)
class M2M(nn.Module):
    def __init__(self, schema: Schema, p: M2MParams):
        super().__init__()
        S, d = schema.num_scenarios, p.embed_dim
        self.num_scenarios = S
        self.embedding = FeatureEmbedding(schema, d, pool_sequences=False)
        self.transformers = (
            nn.ModuleList(BehaviorTransformer(d, q.max_len, p.heads) for q in schema.sequences)
            if "transformer" not in p.drop
            else None
        )
        in_dim = (self.embedding.num_fields + len(schema.sequences)) * d
        self.experts = StackedMLP(p.num_experts, in_dim, p.expert_hidden, p.dropout, p.batch_norm)
        h = self.experts.out_dim
        self.task_embedding = nn.Parameter(torch.empty(1, d).normal_(std=1e-2))
        self.task_view = MLP(d, [h], activation=nn.LeakyReLU)
        meta_attention, meta_tower = "meta_attention" not in p.drop, "meta_tower" not in p.drop
        # the scenario knowledge (none when neither meta module is left to read it)
        self.scenario_view = (
            MLP(d, p.scenario_hidden, activation=nn.LeakyReLU)
            if meta_attention or meta_tower
            else None
        )
        k = p.scenario_hidden[-1]
        self.attention = MetaUnit(2 * h, k, p.meta_layers, meta_attention)
        self.attention_v = nn.Linear(2 * h, 1, bias=False)  # v
        self.tower = nn.ModuleList(
            MetaUnit(h, k, p.meta_layers, meta_tower) for _ in range(p.tower_layers)
        )
        self.out = nn.Linear(h, 1)

    def inputs(self, batch: Batch) -> torch.Tensor:
        """The experts' input [B, (n + sequences) * d]: the fields, then each sequence through
        the transformer layer (mean-pooled without it)."""
        parts = [self.embedding.fields(batch).flatten(1)]
        for i in range(len(self.embedding.schema.sequences)):
            if self.transformers is None:
                parts.append(self.embedding.pooled_sequence(batch, i))
            else:
                parts.append(self.transformers[i](*self.embedding.sequence(batch, i)))
        return torch.cat(parts, dim=1)

    def knowledge(self) -> torch.Tensor | None:
        """The scenario knowledge of every scenario, [S, k]."""
        if self.scenario_view is None:
            return None
        return self.scenario_view(self.embedding.scenario_table.weight)

    def expert_weights(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha [B, K], the expert views [B, K, h]) of the meta attention."""
        B = batch.scenario.shape[0]
        experts = self.experts(autocast_input(self.inputs(batch)))  # [B, K, h]
        K, h = experts.shape[1], experts.shape[2]
        T = self.task_view(self.task_embedding).expand(B * K, h)  # the one task's view
        # the K experts of a row share its scenario's meta unit: K rows each
        groups = ScenarioGroups(batch.scenario.repeat_interleave(K), self.num_scenarios)
        pair = torch.cat([experts.reshape(B * K, h), T.to(experts.dtype)], dim=1)  # [B K, 2h]
        a = self.attention_v(self.attention(pair, self.knowledge(), groups)).view(B, K)
        return torch.softmax(a.float(), dim=-1), experts

    def forward(self, batch: Batch) -> torch.Tensor:
        alpha, experts = self.expert_weights(batch)
        r = torch.einsum("bk,bkh->bh", alpha.to(experts.dtype), experts)  # R [B, h]
        groups = ScenarioGroups(batch.scenario, self.num_scenarios)
        knowledge = self.knowledge()
        for unit in self.tower:  # residual meta-unit blocks
            r = nn.functional.leaky_relu(unit(r, knowledge, groups) + r, SLOPE)
        return self.out(r).squeeze(-1)  # [B]

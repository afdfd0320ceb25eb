"""SAR-Net (Shen et al., "SAR-Net: A Scenario-Aware Ranking Network for Personalized Fair
Recommendation in Hundreds of Travel Scenarios", CIKM 2021).

1. Cross-scenario behavior extract layer, per behavior sequence (b_j the row's behaviors):
   - scenario attention: the scenario context q_s (the scenario embedding, plus any
     `scenario_fields`) queries the behaviors, beta = softmax_j((q_s W_q)(b_j W_k)^T / sqrt(a)),
     u_s = sum_j beta_j b_j;
   - item attention: the candidate item t (its fields the sequence shares) queries them the
     same way with its own projections, u_t = sum_j alpha_j b_j.
   Both attend over the row's own valid behaviors only.
2. Scenario-specific transform layer: x' = gamma_s * x + beta_s on x = [fields ++ u_t ++ u_s],
   gamma_s and beta_s the row's scenario's (one value per input unit).
3. Mixture of debias experts: each expert's main network (BatchNorm'd MLP -> one logit) on x',
   plus, in training only, a bias network on the `bias_fields` (features of how a row came to
   be shown, which should not reach the score); scenario-specific experts (the row's own
   scenario's only) and experts shared by all scenarios.
4. Multi-scenario gating: the row's scenario's gate, softmax(x' W_s), mixes the experts'
   logits.

Scenario-specific experts, transforms and gates run for the row's own scenario only (grouped
matmuls or a gathered row, `ScenarioGroups`), no loop over scenarios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import StackedLinear, StackedMLP, autocast_input
from msctr.models.embedding import FeatureEmbedding
from msctr.models.ple import ScenarioExperts
from msctr.models.registry import ModelParams, need_fields, need_layers, register
from msctr.models.scenario import ScenarioGroups, ScenarioLinear


class BehaviorAttention(nn.Module):
    """A query [B, q] attends over a row's behaviors [B, L, d] (mask [B, L]) by scaled dot
    product of projections: -> (weights [B, L], sum_j w_j b_j [B, d]); no behaviors -> 0."""

    def __init__(self, query_dim: int, dim: int, att_dim: int):
        super().__init__()
        self.query = nn.Linear(query_dim, att_dim, bias=False)
        self.key = nn.Linear(dim, att_dim, bias=False)
        self.scale = 1 / math.sqrt(att_dim)

    def weights(self, q: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = torch.einsum("ba,bla->bl", self.query(q), self.key(v)) * self.scale
        s = s.masked_fill(~mask, torch.finfo(s.dtype).min)
        # a row without behaviors gets a uniform softmax over padding, zeroed by the mask
        return torch.softmax(s, dim=-1) * mask.to(s.dtype)

    def forward(self, q: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bl,bld->bd", self.weights(q, v, mask), v)


@dataclass
class SARNetParams(ModelParams):
    att_dim: int = 16  # a, the attention projections' size
    specific_experts: int = 2  # per scenario
    shared_experts: int = 4
    expert_hidden: list[int] = field(default_factory=lambda: [256, 128])  # each main network
    dropout: float = 0.1
    batch_norm: bool = True  # in the experts' MLPs (each scenario's over its own rows)
    scenario_fields: list[str] = field(default_factory=list)  # join e_s in the scenario query
    bias_fields: list[str] = field(default_factory=list)  # the debias networks' input only

    def check(self, where: str) -> None:
        need_layers(where, "expert_hidden", self.expert_hidden, "[256, 128]")
        if "scenario" in self.bias_fields:
            raise UserError(
                f"{where}.bias_fields: 'scenario' cannot be a bias field (every expert is "
                "routed by it); list other fields"
            )

    def check_schema(self, schema: Schema, where: str) -> None:
        names = FeatureEmbedding.names(schema, pool_sequences=False)
        need_fields(names, self.bias_fields, f"{where}.bias_fields", once=True)
        need_fields(names, self.scenario_fields, f"{where}.scenario_fields", once=True)


@register(
    "sarnet",
    SARNetParams,
    paper="SAR-Net (Shen et al., CIKM 2021)",
    switches={
        "scenario_attention": "the scenario attention over the behaviors",
        "item_attention": "the candidate item's attention over the behaviors",
        "transform": "the scenario-specific transform layer (gamma_s, beta_s)",
        "specific": "the scenario-specific experts: a gated mixture of the shared experts only",
    },
)
class SARNet(nn.Module):
    def __init__(self, schema: Schema, p: SARNetParams):
        super().__init__()
        S, d = schema.num_scenarios, p.embed_dim
        self.num_scenarios = S
        self.embedding = FeatureEmbedding(schema, d, pool_sequences=False)
        n = self.embedding.num_fields
        bias = self.embedding.positions(p.bias_fields, "bias_fields")
        context = [0, *self.embedding.positions(p.scenario_fields, "scenario_fields")]
        main = [i for i in range(n) if i not in bias]
        for name, idx in (("main_fields", main), ("bias_fields", bias), ("context", context)):
            self.register_buffer(name, torch.tensor(idx, dtype=torch.long), persistent=False)
        # the candidate's fields each sequence's attributes share: their mean queries it
        query = torch.zeros(len(schema.sequences), n)
        for i, seq in enumerate(schema.sequences):
            for sf in seq.fields:  # + 1: the scenario field comes first
                query[i, schema.sparse_index(sf.target) + 1] += 1.0 / len(seq.fields)
        self.register_buffer("item_query", query, persistent=False)
        Q = len(schema.sequences)
        self.scenario_attention = (
            nn.ModuleList(BehaviorAttention(len(context) * d, d, p.att_dim) for _ in range(Q))
            if "scenario_attention" not in p.drop
            else None
        )
        self.item_attention = (
            nn.ModuleList(BehaviorAttention(d, d, p.att_dim) for _ in range(Q))
            if "item_attention" not in p.drop
            else None
        )
        attended = (self.scenario_attention is not None) + (self.item_attention is not None)
        D = (len(main) + attended * Q) * d
        if "transform" not in p.drop:
            self.scenario_gamma = nn.Parameter(torch.ones(S, D))
            self.scenario_beta = nn.Parameter(torch.zeros(S, D))
        else:
            self.scenario_gamma = self.scenario_beta = None
        E_sp = 0 if "specific" in p.drop else p.specific_experts
        E_sh = p.shared_experts
        self.specific = (
            ScenarioExperts(S, E_sp, D, p.expert_hidden, p.dropout, p.batch_norm) if E_sp else None
        )
        self.shared = StackedMLP(E_sh, D, p.expert_hidden, p.dropout, p.batch_norm)
        h = self.shared.out_dim
        bound = 1 / math.sqrt(h)  # nn.Linear's range for the experts' logit layers
        if E_sp:
            self.specific_out = nn.Parameter(torch.empty(S, E_sp, h, 1).uniform_(-bound, bound))
            self.specific_out_bias = nn.Parameter(torch.empty(S, E_sp, 1).uniform_(-bound, bound))
        self.shared_out = StackedLinear(E_sh, h, 1)
        self.gate = ScenarioLinear(S, D, E_sp + E_sh)
        b = len(bias) * d
        self.specific_bias_net = ScenarioLinear(S, b, E_sp) if bias and E_sp else None
        self.shared_bias_net = nn.Linear(b, E_sh) if bias else None

    def behaviors(self, batch: Batch, emb: torch.Tensor) -> list[torch.Tensor]:
        """u_t and u_s of every sequence (those not switched off), [B, d] each."""
        out = []
        q_s = emb[:, self.context].flatten(1)  # the scenario context [B, (1 + n_s) d]
        q_t = torch.einsum("qn,bnd->bqd", self.item_query.to(emb.dtype), emb)  # [B, Q, d]
        for i in range(self.item_query.shape[0]):  # one per sequence (a handful)
            v, mask = self.embedding.sequence(batch, i)  # [B, L, d], [B, L]
            if self.item_attention is not None:
                out.append(self.item_attention[i](q_t[:, i], v, mask))
            if self.scenario_attention is not None:
                out.append(self.scenario_attention[i](q_s, v, mask))
        return out

    def features(self, batch: Batch, emb: torch.Tensor) -> torch.Tensor:
        """x' [B, D]: the scenario-transformed [main fields ++ attended behaviors]; emb the
        field embeddings [B, n, d]."""
        x = torch.cat([emb[:, self.main_fields].flatten(1), *self.behaviors(batch, emb)], dim=1)
        if self.scenario_gamma is None:
            return x
        s = batch.scenario
        return torch.addcmul(self.scenario_beta[s], x, self.scenario_gamma[s])

    def expert_logits(
        self, x: torch.Tensor, emb: torch.Tensor, groups: ScenarioGroups
    ) -> torch.Tensor:
        """[B, E_sp + E_sh]: the row's scenario's experts, then the shared ones, on x'; each
        main network's logit, plus its bias network's (on the bias fields of emb) in training."""
        shared = self.shared_out(self.shared(x))  # [B, E_sh]
        parts = [shared]
        if self.specific is not None:
            own = self.specific(x, groups)  # [B, E_sp, h]
            parts.insert(0, groups.linear(own, self.specific_out, self.specific_out_bias)[..., 0])
        if self.training and self.shared_bias_net is not None:
            z = autocast_input(emb[:, self.bias_fields].flatten(1))
            parts[-1] = parts[-1] + self.shared_bias_net(z)
            if self.specific_bias_net is not None:
                parts[0] = parts[0] + self.specific_bias_net(z, groups)
        return torch.cat(parts, dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        groups = ScenarioGroups(batch.scenario, self.num_scenarios)
        emb = self.embedding.fields(batch)  # [B, n, d]
        x = autocast_input(self.features(batch, emb))
        logits = self.expert_logits(x, emb, groups)  # [B, E]
        g = torch.softmax(self.gate(x, groups), dim=-1)  # the row's scenario's gate
        return (g.to(logits.dtype) * logits).sum(-1)  # [B]

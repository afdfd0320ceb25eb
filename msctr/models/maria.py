"""MARIA (Tian et al., "Multi-Scenario Ranking with Adaptive Feature Learning", SIGIR 2023).

The scenario is injected at the bottom of the network, into the feature representations,
and a plain MoE with scenario towers sits on top. With E = the field embeddings [B, n, d]
(scenario, sparse, dense, one vector per behavior sequence), e_s the scenario embedding and
sg the stop-gradient:

Behavior sequences: pooled by target attention on the candidate, as the paper's embedding
layer does (DIN's activation unit, one per sequence): behavior b_j = mean of its attribute
embeddings, t = mean of the candidate's fields that query those attributes (the same rows
where the sequence shares the candidate's vocabulary; the item's field of the same kind on
Ali-CCP), w_j = MLP([b_j, t, b_j - t, b_j * t]), u = sum_j w_j b_j over valid behaviors.

Feature scaling (FS): one factor per embedding element, in (0, gamma), gamma = 2:
    alpha = gamma * sigmoid(W2 ReLU(W1 [e_s ++ sg(E)]))          [B, n * d]
    E'    = alpha (x) E
  The gate reads the embeddings through a stop-gradient (as EPNet does), so its loss does
  not reshape them; they are trained through E' only.

Feature refinement (FR): per field f, R refiners (one FC each) and a selector that scores
them from the scenario and the field itself; the refiners' outputs are weighted by the
selection and concatenated:
    r_fj   = ReLU(E'_f W_fj + b_fj)                                [B, k], j = 1..R
    beta_f = GumbelSoftmax(e_s V_f + E'_f U_f + c_f, tau)          [B, R] (training)
    beta_f = softmax((e_s V_f + E'_f U_f + c_f) / tau)              [B, R] (evaluation)
    h_f    = [beta_f1 r_f1 ++ ... ++ beta_fR r_fR]                  [B, R * k]
  All n * R refiners run as one batched matmul over fields (weights [n, d, R * k]).

Feature correlation modeling (FCM): every field projected to a common length k_c, and the
inner product of every pair of fields, concatenated to the refined features:
    p_f  = E'_f P_f                                                [B, k_c]
    c_ij = <p_i, p_j>, i < j                                        [B, n (n - 1) / 2]

MoE and towers: x = [h_1 ++ ... ++ h_n ++ c]; E shared experts mixed by one softmax gate,
then the sample's own scenario tower plus a shared tower weighted by a coupling gate,
the mean similarity of the scenario to the other scenarios:
    m       = sum_e softmax(x W_g)_e expert_e(x)
    a_s     = mean_{s' != s} (1 + cos(u_s, u_s')) / 2               in [0, 1]
    logit   = tower_s(m) + a_s * tower_shared(m)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import (
    MLP,
    GateNU,
    GumbelSoftmax,
    StackedMLP,
    at_least_fp32,
    autocast_input,
)
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, need_layers, register
from msctr.models.scenario import ScenarioGroups, ScenarioMLP
from msctr.models.sfpnet import TargetAttention


@dataclass
class MariaParams(ModelParams):
    # feature scaling: GateNU width and range (0, fs_gamma); the paper bounds factors by 2
    fs_hidden: int = 64
    fs_gamma: float = 2.0
    # feature refinement: refiners per field (the paper uses 1 or 2), each refiner's output
    # size, and the temperature of the Gumbel-softmax selection; hard = straight-through
    # one-hot selection in training and the arg-max refiner at evaluation
    num_refiners: int = 2
    refine_dim: int = 8  # R * k = 16 = d: the refined field as wide as the raw one
    tau: float = 1.0
    hard: bool = False
    gumbel: bool = True  # false: the noise-free softmax(logits / tau) in training too
    # feature correlation: the common length the fields are projected to before the inner
    # products
    fcm_dim: int = 16
    # MoE and towers; SFPNet's MMoE baseline uses as many experts as this
    num_experts: int = 4
    expert_hidden: list[int] = field(default_factory=lambda: [256, 128])
    tower_hidden: list[int] = field(default_factory=lambda: [64])
    shared_tower: bool = True  # the extra tower shared by all scenarios, with its coupling gate
    dropout: float = 0.1
    batch_norm: bool = True  # inside the experts, as in this project's MMoE
    # target attention over each behavior sequence (DIN's activation unit, as SFPNet's)
    din_hidden: list[int] = field(default_factory=lambda: [80, 40])
    din_softmax: bool = False  # DIN: raw (unnormalized) attention weights

    def check(self, where: str) -> None:
        need_layers(where, "expert_hidden", self.expert_hidden, "[256, 128]")
        if self.fs_gamma <= 0:
            raise UserError(f"{where}.fs_gamma must be > 0, got {self.fs_gamma}")
        if self.tau <= 0:
            raise UserError(f"{where}.tau must be > 0, got {self.tau}")

    def check_schema(self, schema: Schema, where: str) -> None:
        # E's fields and one vector per behavior sequence, as __init__ counts them
        n = len(FeatureEmbedding.names(schema, pool_sequences=False)) + len(schema.sequences)
        if "fcm" not in self.drop and n < 2:
            raise UserError("model 'maria': feature correlation needs at least two fields")


class FeatureScaling(nn.Module):
    """E' = gamma * sigmoid(W2 ReLU(W1 [e_s ++ sg(E)])) (x) E, one factor per element."""

    def __init__(self, n_fields: int, dim: int, hidden: int, gamma: float):
        super().__init__()
        self.gate = GateNU(dim + n_fields * dim, n_fields * dim, hidden, gamma)

    def factors(self, emb: torch.Tensor, e_s: torch.Tensor) -> torch.Tensor:
        # emb [B, n, d], e_s [B, d] -> alpha [B, n, d]
        return self.gate(torch.cat([e_s, emb.flatten(1).detach()], dim=1)).view_as(emb)

    def forward(self, emb: torch.Tensor, e_s: torch.Tensor) -> torch.Tensor:
        return self.factors(emb, e_s) * emb


class FeatureRefinement(nn.Module):
    """Per field, R refiners (Linear + ReLU, d -> k) weighted by a scenario-aware selector of
    (e_s, the field) and concatenated: [B, n, d] -> [B, n * R * k]."""

    def __init__(
        self,
        n_fields: int,
        dim: int,
        num_refiners: int,
        out_dim: int,
        tau: float,
        hard: bool,
        gumbel: bool = True,
    ):
        super().__init__()
        n, R, k = n_fields, num_refiners, out_dim
        self.n, self.R, self.k, self.tau, self.hard, self.gumbel = n, R, k, tau, hard, gumbel
        bound = 1 / math.sqrt(dim)  # nn.Linear's init, per field
        # all n * R refiners: field f's R refiners side by side in weight[f] [d, R * k]
        self.weight = nn.Parameter(torch.empty(n, dim, R * k).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, R * k).uniform_(-bound, bound))
        self.sample = GumbelSoftmax()  # its noise per row of the whole batch (data parallel)
        # selector logits of field f: e_s V_f + E'_f U_f + c_f; V for all fields in one Linear
        self.select_scenario = nn.Linear(dim, n * R)
        self.select_field = nn.Parameter(torch.empty(n, dim, R).uniform_(-bound, bound))

    def selection(self, emb: torch.Tensor, e_s: torch.Tensor) -> torch.Tensor:
        """beta [B, n, R]: the weight of each refiner of each field (rows sum to 1)."""
        logits = self.select_scenario(e_s).view(-1, self.n, self.R)
        logits = logits + torch.einsum("bfd,fdr->bfr", emb, self.select_field)
        if self.training and self.gumbel:  # a differentiable sample of the discrete choice
            sample = self.sample(at_least_fp32(logits), self.tau, self.hard)
            return sample.to(emb.dtype)
        if self.hard:  # the selected refiner itself (straight-through when training)
            soft = torch.softmax(logits / self.tau, dim=-1)
            one_hot = nn.functional.one_hot(logits.argmax(-1), self.R).to(soft.dtype)
            return one_hot + soft - soft.detach() if self.training else one_hot
        return torch.softmax(logits / self.tau, dim=-1)  # the noise-free weights

    def refiners(self, emb: torch.Tensor) -> torch.Tensor:
        """r [B, n, R, k]: every refiner of every field, one batched matmul over fields."""
        B = emb.shape[0]
        r = torch.baddbmm(self.bias, emb.transpose(0, 1), self.weight)  # [n, B, R * k]
        return torch.relu(r).view(self.n, B, self.R, self.k).transpose(0, 1)

    def forward(self, emb: torch.Tensor, e_s: torch.Tensor) -> torch.Tensor:
        beta = self.selection(emb, e_s)  # [B, n, R]
        return (beta.unsqueeze(-1) * self.refiners(emb)).flatten(1)  # [B, n * R * k]


class FeatureCorrelation(nn.Module):
    """c_ij = <E'_i P_i, E'_j P_j> for every field pair i < j: [B, n, d] -> [B, n(n-1)/2]."""

    def __init__(self, n_fields: int, dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Parameter(torch.empty(n_fields, dim, out_dim))
        nn.init.xavier_uniform_(self.proj)
        rows, cols = torch.triu_indices(n_fields, n_fields, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        p = torch.einsum("bfd,fdk->bfk", emb, self.proj)  # [B, n, k_c]: a common length
        gram = torch.bmm(p, p.transpose(1, 2))  # [B, n, n]
        return gram[:, self.rows, self.cols]


@register(
    "maria",
    MariaParams,
    paper="MARIA (Tian et al., SIGIR 2023): scenario-aware feature scaling and refinement",
    switches={
        "fs": "no feature scaling: the later parts read the raw field embeddings",
        "fr": "no feature refinement: the MoE reads the (scaled) field embeddings themselves",
        "fcm": "no feature correlation modeling: no pairwise field inner products",
    },
)
class Maria(nn.Module):
    def __init__(self, schema: Schema, p: MariaParams):
        super().__init__()
        S, d = schema.num_scenarios, p.embed_dim
        # field 0 is the scenario (e_s); the sequences' vectors come from target attention
        self.embedding = FeatureEmbedding(schema, d, pool_sequences=False)
        S_q = len(schema.sequences)
        query = torch.zeros(S_q, self.embedding.num_fields)  # each sequence's query weights
        for i, seq in enumerate(schema.sequences):
            for sf in seq.fields:  # + 1: the scenario field comes first
                query[i, schema.sparse_index(sf.target) + 1] += 1.0 / len(seq.fields)
        self.register_buffer("query_weight", query, persistent=False)
        self.attention = nn.ModuleList(
            TargetAttention(d, p.din_hidden, p.din_softmax) for _ in range(S_q)
        )
        n = self.num_fields = self.embedding.num_fields + S_q  # E's fields, sequences included
        self.scaling = FeatureScaling(n, d, p.fs_hidden, p.fs_gamma) if "fs" not in p.drop else None
        self.refinement = (
            FeatureRefinement(n, d, p.num_refiners, p.refine_dim, p.tau, p.hard, p.gumbel)
            if "fr" not in p.drop
            else None
        )
        self.correlation = FeatureCorrelation(n, d, p.fcm_dim) if "fcm" not in p.drop else None
        in_dim = n * (p.num_refiners * p.refine_dim if self.refinement is not None else d)
        in_dim += n * (n - 1) // 2 if self.correlation is not None else 0
        self.experts = StackedMLP(p.num_experts, in_dim, p.expert_hidden, p.dropout, p.batch_norm)
        self.gate = nn.Linear(in_dim, p.num_experts)  # one gate: the paper's "simple MoE"
        h = self.experts.out_dim
        self.towers = ScenarioMLP(S, h, p.tower_hidden, 1, p.dropout)
        self.shared_tower = MLP(h, p.tower_hidden, p.dropout, out_dim=1) if p.shared_tower else None
        # the coupling gate's scenario vectors u_s (its own table, see coupling()); with one
        # scenario there is nothing to compare and the shared tower's weight is 1
        self.coupling_vectors = (
            nn.Parameter(torch.randn(S, d)) if p.shared_tower and S > 1 else None
        )
        self.num_scenarios = S

    def coupling(self) -> torch.Tensor:
        """a [S]: the mean similarity (1 + cos) / 2 of each scenario to the other scenarios,
        the weight of the shared tower; 1 when there is no other scenario."""
        S = self.num_scenarios
        if self.coupling_vectors is None:
            return torch.ones(S, device=self.towers.out.weight.device)
        u = nn.functional.normalize(self.coupling_vectors, dim=1)
        sim = (1 + u @ u.T) / 2  # [S, S]
        return (sim.sum(1) - sim.diagonal()) / (S - 1)

    def fields(self, batch: Batch) -> torch.Tensor:
        """E [B, n, d]: scenario, sparse and dense fields, then each behavior sequence pooled
        by target attention on the candidate."""
        emb = self.embedding.fields(batch)  # [B, n - S_q, d]
        if not len(self.attention):
            return emb
        t = torch.einsum("sn,bnd->bsd", self.query_weight.to(emb.dtype), emb)  # [B, S_q, d]
        pooled = []
        for i, attend in enumerate(self.attention):  # one per sequence (a handful)
            v, mask = self.embedding.sequence(batch, i)  # [B, L, d], [B, L]
            pooled.append(attend(v, t[:, i : i + 1].expand_as(v), mask))  # [B, d]
        return torch.cat([emb, torch.stack(pooled, dim=1)], dim=1)

    def features(self, batch: Batch) -> torch.Tensor:
        """The MoE input x [B, in]: refined fields (or the fields) ++ correlations."""
        emb = self.fields(batch)  # [B, n, d]
        e_s = emb[:, 0]  # the scenario embedding, unscaled
        if self.scaling is not None:
            emb = self.scaling(emb, e_s)
        parts = [self.refinement(emb, e_s) if self.refinement is not None else emb.flatten(1)]
        if self.correlation is not None:
            parts.append(self.correlation(emb))
        return torch.cat(parts, dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = autocast_input(self.features(batch))
        experts = self.experts(x)  # [B, E, h]
        gate = torch.softmax(self.gate(x), dim=-1)  # [B, E]
        mixed = torch.bmm(gate.unsqueeze(1), experts).squeeze(1)  # [B, h]
        groups = ScenarioGroups(batch.scenario, self.num_scenarios)
        logit = self.towers(mixed, groups).squeeze(-1)  # [B]: each row its own scenario's tower
        if self.shared_tower is not None:
            a = self.coupling()[batch.scenario]  # [B]
            logit = logit + a * self.shared_tower(mixed).squeeze(-1)
        return logit

"""AESM2 (Zou et al., "Automatic Expert Selection for Multi-Scenario and Multi-Task Search",
SIGIR 2022), with the multi-scenario layers only: the task here is click alone.

L stacked multi-scenario layers. Layer l holds E experts and one gate per scenario:

    experts   X_l = [Expert_1(h_l), ..., Expert_E(h_l)]              [B, E, h]
    gates     G_l = W_l [h_l ++ e_s] (+ BatchNorm), one row per scenario   [B, S, E]
              (h_0 = all field embeddings, e_s = the scenario embedding)

Expert selection, per instance. Column j of G (expert j's gate logit under every scenario),
softmax-normalized over the S scenarios, P_j = softmax_s(G[:, j]), says how expert j is used
across scenarios. An expert specific to the instance's scenario s* has P_j close to the
one-hot p_sp = onehot(s*); a shared one has P_j close to the uniform p_sh = 1/S:

    KL_sp(j) = KL(p_sp || P_j) = -log P_j[s*]
    KL_sh(j) = KL(p_sh || P_j) = -log S - (1/S) sum_s log P_j[s]

The top_k_specific experts with the smallest KL_sp are the instance's specific experts, the
top_k_shared with the smallest KL_sh its shared experts (an expert may be both). In training
Gaussian noise is added to G before the selection (not to the mixing weights), so experts
off the current choice still get picked now and then.

Combination: the instance's own scenario gate, softmax over the selected experts only,
    h_(l+1) = sum_(j selected) softmax_(selected)(G[s*, j]) X_l[j]
and a tower (MLP) on h_L gives the logit.

Auxiliary losses, per layer, the mean over the batch of the selected experts' divergences,
    L_sp = mean_(b, j in specific(b)) KL_sp,   L_sh = mean_(b, j in shared(b)) KL_sh,
push each selected expert's gate column further towards the role it was selected for;
aux = specific_weight * sum_l L_sp + shared_weight * sum_l L_sh.

Why the gates are not routed per scenario (msctr.models.scenario): the selection compares an
expert's gate logit under the instance's scenario with its logits under every other
scenario, so every row needs all S gates. They are one Linear to S * E outputs, computed for
all rows (as ScenarioGroups does for narrow per-scenario layers anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import MLP, GaussianNoise, StackedMLP, at_least_fp32, autocast_input
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelOutput, ModelParams, need_layers, register


@dataclass
class AESM2Params(ModelParams):
    num_layers: int = 2  # stacked multi-scenario layers
    num_experts: int = 8  # E, per layer
    expert_hidden: list[int] = field(default_factory=lambda: [128])  # each expert's MLP
    top_k_specific: int = 2  # experts selected as scenario-specific, per instance and layer
    top_k_shared: int = 2  # experts selected as scenario-shared
    gate_noise: float = 0.1  # std of the Gaussian noise on the gate logits for the selection
    specific_weight: float = 0.1  # weight of sum_l L_sp in the total loss
    shared_weight: float = 0.1  # weight of sum_l L_sh
    tower_hidden: list[int] = field(default_factory=lambda: [64])
    dropout: float = 0.1
    # BatchNorm inside the experts and on the gate logits, as in the authors' code (and as
    # this project's MMoE, whose experts learn little beyond additive effects without it)
    batch_norm: bool = True

    def check(self, where: str) -> None:
        need_layers(where, "expert_hidden", self.expert_hidden, "[128]")
        for key in ("top_k_specific", "top_k_shared"):
            if getattr(self, key) > self.num_experts:
                raise UserError(
                    f"{where}.{key} ({getattr(self, key)}) cannot exceed num_experts "
                    f"({self.num_experts})"
                )
        for key in ("gate_noise", "specific_weight", "shared_weight"):
            if getattr(self, key) < 0:
                raise UserError(f"{where}.{key} must be >= 0, got {getattr(self, key)}")


class Selection(NamedTuple):
    specific: torch.Tensor  # [B, k_sp] indices of the specific experts
    shared: torch.Tensor  # [B, k_sh] indices of the shared experts
    loss_sp: torch.Tensor  # scalar L_sp
    loss_sh: torch.Tensor  # scalar L_sh


def select_experts(gates: torch.Tensor, scenario: torch.Tensor, k_sp: int, k_sh: int) -> Selection:
    """The paper's selection rule on gate logits [B, S, E] (noise already added) for rows of
    scenario [B]: per expert, KL of the one-hot / uniform distribution over scenarios from
    the expert's softmax over scenarios; the k smallest of each are selected."""
    B, S, _ = gates.shape
    gates = at_least_fp32(gates)  # the divergences in fp32 at least
    log_p = torch.log_softmax(gates, dim=1)  # log P_j[s], over scenarios: [B, S, E]
    rows = torch.arange(B, device=gates.device)
    kl_sp = -log_p[rows, scenario]  # KL(onehot(s*) || P_j) = -log P_j[s*]   [B, E]
    kl_sh = -math.log(S) - log_p.mean(1)  # KL(1/S || P_j)                    [B, E]
    with torch.no_grad():  # the choice itself is discrete
        specific = torch.topk(kl_sp, k_sp, dim=1, largest=False).indices  # [B, k_sp]
        shared = torch.topk(kl_sh, k_sh, dim=1, largest=False).indices  # [B, k_sh]
    return Selection(
        specific,
        shared,
        kl_sp.gather(1, specific).mean(),
        kl_sh.gather(1, shared).mean(),
    )


class ScenarioLayer(nn.Module):
    """One multi-scenario layer: E experts, S gates, per-instance expert selection."""

    def __init__(
        self, in_dim: int, scenario_dim: int, num_scenarios: int, p: AESM2Params, select: bool
    ):
        super().__init__()
        S, E = num_scenarios, p.num_experts
        self.S, self.E, self.p, self.select = S, E, p, select
        self.experts = StackedMLP(E, in_dim, p.expert_hidden, p.dropout, p.batch_norm)
        self.noise = GaussianNoise()  # on the gate logits, per row of the whole batch
        # all S gates as one Linear to S * E logits (scenario-major), BatchNorm per logit
        self.gate = nn.Linear(in_dim + scenario_dim, S * E)
        self.gate_norm = nn.BatchNorm1d(S * E) if p.batch_norm else nn.Identity()
        self.out_dim = self.experts.out_dim
        # training-time counts of how often each expert was selected, per scenario
        self.register_buffer("specific_counts", torch.zeros(S, E, dtype=torch.long))
        self.register_buffer("shared_counts", torch.zeros(S, E, dtype=torch.long))

    def gates(self, h: torch.Tensor, e_s: torch.Tensor) -> torch.Tensor:
        """Gate logits of every scenario for every row: [B, S, E]."""
        g = self.gate_norm(self.gate(torch.cat([h, e_s], dim=1)))
        return g.view(h.shape[0], self.S, self.E)

    def forward(
        self, h: torch.Tensor, e_s: torch.Tensor, scenario: torch.Tensor
    ) -> tuple[torch.Tensor, Selection | None]:
        experts = self.experts(h)  # [B, E, h]: all experts at once
        gates = self.gates(h, e_s)  # [B, S, E]
        own = gates[torch.arange(h.shape[0], device=h.device), scenario]  # G[s*, :] [B, E]
        own = at_least_fp32(own)  # the softmax in fp32 at least
        if not self.select:  # plain softmax gating over all experts (the `select` switch)
            w = torch.softmax(own, dim=-1)
            return torch.bmm(w.to(experts.dtype).unsqueeze(1), experts).squeeze(1), None
        noisy = gates
        if self.training and self.p.gate_noise > 0:
            noisy = gates + self.p.gate_noise * self.noise(gates)
        sel = select_experts(noisy, scenario, self.p.top_k_specific, self.p.top_k_shared)
        # out of place, with tensor sources: TorchScript's tracer cannot save an in-place
        # scatter of a Python scalar (msctr export)
        chosen = (
            torch.zeros_like(own, dtype=torch.bool)
            .scatter(1, sel.specific, torch.ones_like(sel.specific, dtype=torch.bool))
            .scatter(1, sel.shared, torch.ones_like(sel.shared, dtype=torch.bool))
        )
        # softmax over the selected experts only (the others get weight exactly 0)
        w = torch.softmax(own.masked_fill(~chosen, float("-inf")), dim=-1)
        if self.training:
            self._count(scenario, sel)
        return torch.bmm(w.to(experts.dtype).unsqueeze(1), experts).squeeze(1), sel

    @torch.no_grad()
    def _count(self, scenario: torch.Tensor, sel: Selection) -> None:
        for counts, idx in ((self.specific_counts, sel.specific), (self.shared_counts, sel.shared)):
            s = scenario.unsqueeze(1).expand_as(idx)
            counts.index_put_((s, idx), torch.ones_like(idx), accumulate=True)


@register(
    "aesm2",
    AESM2Params,
    paper="AESM2 (Zou et al., SIGIR 2022): per-instance KL-based specific/shared expert selection",
    switches={
        "select": "no expert selection: each layer mixes all experts by the row's scenario gate "
        "(plain softmax), and no auxiliary losses",
        "aux": "no auxiliary KL losses (the selection stays)",
    },
)
class AESM2(nn.Module):
    def __init__(self, schema: Schema, p: AESM2Params):
        super().__init__()
        self.p = p
        self.embedding = FeatureEmbedding(schema, p.embed_dim)
        (pos,) = self.embedding.positions(["scenario"], "scenario")
        self.scenario_pos = pos
        self.use_aux = "aux" not in p.drop and "select" not in p.drop
        in_dim = self.embedding.num_fields * p.embed_dim
        layers = []
        for _ in range(p.num_layers):
            layer = ScenarioLayer(
                in_dim, p.embed_dim, schema.num_scenarios, p, "select" not in p.drop
            )
            layers.append(layer)
            in_dim = layer.out_dim
        self.layers = nn.ModuleList(layers)
        # one task (click), so one tower; the paper's towers are per task, not per scenario
        self.tower = MLP(in_dim, p.tower_hidden, p.dropout, out_dim=1)

    def forward(self, batch: Batch) -> ModelOutput:
        emb = self.embedding.fields(batch)  # [B, n, d]
        e_s = autocast_input(emb[:, self.scenario_pos])  # [B, d] scenario indicator
        h = autocast_input(emb.flatten(1))  # h_0 [B, n*d]
        aux = h.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            h, sel = layer(h, e_s, batch.scenario)
            if sel is not None and self.use_aux:
                aux = aux + self.p.specific_weight * sel.loss_sp
                aux = aux + self.p.shared_weight * sel.loss_sh
        return ModelOutput(self.tower(h).squeeze(-1), aux)

    def selection_rates(self) -> dict[str, torch.Tensor]:
        """Per layer, scenario and expert: the fraction of the scenario's training rows that
        selected the expert as specific / as shared ([L, S, E] each)."""
        out = {}
        for kind in ("specific", "shared"):
            counts = torch.stack([getattr(m, f"{kind}_counts") for m in self.layers]).cpu()
            k = self.p.top_k_specific if kind == "specific" else self.p.top_k_shared
            rows = counts.sum(-1, keepdim=True).double() / k  # rows seen per (layer, scenario)
            out[kind] = counts.double() / rows.clamp_min(1)
        return out

    def report(self) -> dict | None:
        """How often each expert was selected as specific / shared per scenario (training)."""
        if "select" in self.p.drop:
            return None
        rates = self.selection_rates()
        return {
            "specific_selection_rate": rates["specific"].round(decimals=4).tolist(),
            "shared_selection_rate": rates["shared"].round(decimals=4).tolist(),
        }

"""M3oE (Zhang, Liu, Yu, Cai, Zhao, Zhang, Liu, Liu, Zhao, Hu, Jiang and Gai, "M3oE:
Multi-Domain Multi-Task Mixture-of-Experts Recommendation Framework", SIGIR 2024), with
scenarios in the role of domains and one task (CTR).

1. Bottom, on the field embeddings x: a star-topology layer whose weight is the shared one
   times the scenario's, W_shared * W_s (as the authors' code), then shared layers, plus a
   linear skip from x: e = MLP(x (W_shared * W_s) + b) + skip(x).
2. Multi-view expert layer on e, three mixture-of-experts modules:
   - shared experts S_1..S_E, mixed by a softmax gate of the row's scenario (and task);
   - one domain expert D_j per scenario;
   - one task expert per task: with one task, T.
3. Two-level fusion: first each module's own level, the row's own domain expert against
   the others, D = sigma(a) D_s + (1 - sigma(a)) / (S - 1) sum_{j != s} D_j; then the three
   modules, f = sum_e g_e S_e + sigma(b_d) D + sigma(b_t) T.
4. A tower per scenario (and task) on f -> logit.

The fusion weights a, b_d, b_t are the paper's AutoML-searched structure parameters; here
they are learned jointly with the network by the same optimizer on the training loss (a
one-level relaxation; docs/models/m3oe.md says why). All E + S + 1 expert MLPs run as one
stacked MLP (every row needs every domain expert for the fusion); the star layer, gate and
tower run for the row's own scenario only (`ScenarioGroups`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import MLP, Dropout, StackedMLP, autocast_input
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, need_layers, register
from msctr.models.scenario import ScenarioBatchNorm, ScenarioGroups, ScenarioLinear, ScenarioMLP
from msctr.models.star import StarLinear

MODULES = ("shared", "domain", "task")


class StarBottom(nn.Module):
    """e = MLP(ReLU(N_s(x (W_shared * W_s) + b_shared + b_s))) + ReLU(N(x W_skip + c)):
    [B, in] -> [B, hidden[-1]], N a batch normalization (the star layer's per scenario) when
    `batch_norm`."""

    def __init__(
        self, num_scenarios: int, in_dim: int, hidden: list[int], dropout: float, batch_norm: bool
    ):
        super().__init__()
        self.star = StarLinear(num_scenarios, in_dim, hidden[0])
        self.norm = ScenarioBatchNorm(num_scenarios, hidden[0]) if batch_norm else None
        self.mlp = MLP(hidden[0], hidden[1:], dropout, batch_norm)
        self.skip = nn.Linear(in_dim, hidden[-1])
        self.skip_norm = nn.BatchNorm1d(hidden[-1]) if batch_norm else nn.Identity()
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, groups: ScenarioGroups) -> torch.Tensor:
        h = self.star(x, groups)
        if self.norm is not None:
            h = self.norm(h, groups.scenario)
        h = self.mlp(self.dropout(h, relu=True))
        return h + torch.relu(self.skip_norm(self.skip(x)))


@dataclass
class M3oEParams(ModelParams):
    # Scenario-Wise Rec's KuaiRand setting (the authors' layout): star bottom [128, 64],
    # 4 shared experts of [32] on it, towers [32]
    bottom_hidden: list[int] = field(default_factory=lambda: [128, 64])
    num_experts: int = 4  # shared experts
    expert_hidden: list[int] = field(default_factory=lambda: [32])  # every expert's MLP
    tower_hidden: list[int] = field(default_factory=lambda: [32])
    fusion_init: float = 1.0  # every fusion weight's logit at the start (sigmoid(1) = 0.73)
    # BatchNorm after the bottom's and the experts' hidden linears (the authors' code has a
    # LayerNorm there); the star layer's per scenario
    batch_norm: bool = True
    dropout: float = 0.1

    def check(self, where: str) -> None:
        need_layers(where, "bottom_hidden", self.bottom_hidden, "[128, 64]")
        need_layers(where, "expert_hidden", self.expert_hidden, "[32]")
        if all(m in self.drop for m in MODULES):
            raise UserError(
                f"{where}.drop removes all three expert modules ({', '.join(MODULES)}); "
                "keep at least one"
            )


@register(
    "m3oe",
    M3oEParams,
    paper="M3oE (Zhang et al., SIGIR 2024)",
    switches={
        "shared": "the shared expert module and its gates",
        "domain": "the domain expert module (and its fusion weights a, b_d)",
        "task": "the task expert module (and its fusion weight b_t)",
        "automl": "the learned fusion weights: a, b_d, b_t stay at fusion_init",
    },
)
class M3oE(nn.Module):
    def __init__(self, schema: Schema, p: M3oEParams):
        super().__init__()
        S = schema.num_scenarios
        self.num_scenarios = S
        self.embedding = FeatureEmbedding(schema, p.embed_dim)
        in_dim = self.embedding.num_fields * p.embed_dim
        self.bottom = StarBottom(S, in_dim, p.bottom_hidden, p.dropout, p.batch_norm)
        h = p.bottom_hidden[-1]
        self.E = 0 if "shared" in p.drop else p.num_experts
        self.D = 0 if "domain" in p.drop else S
        self.T = 0 if "task" in p.drop else 1
        # experts 0..E-1 shared, E..E+S-1 one per scenario, the last one the task's
        self.experts = StackedMLP(
            self.E + self.D + self.T, h, p.expert_hidden, p.dropout, p.batch_norm
        )
        self.gate = ScenarioLinear(S, h, self.E) if self.E else None
        # fusion logits: a (own domain against the others; none with one scenario), b_d (the
        # domain module), b_t (the task module); fixed without the AutoML part
        learned = "automl" not in p.drop
        for name, used in [("a", self.D > 1), ("b_d", self.D), ("b_t", self.T)]:
            init = torch.tensor(p.fusion_init)
            if not used:
                setattr(self, name, None)
            elif learned:
                setattr(self, name, nn.Parameter(init))
            else:
                self.register_buffer(name, init)
        self.towers = ScenarioMLP(S, self.experts.out_dim, p.tower_hidden, 1, p.dropout)

    def weight(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """sigmoid of fusion logit `name`, a scalar."""
        return torch.sigmoid(getattr(self, name)).to(dtype)

    def fused(self, batch: Batch, groups: ScenarioGroups | None = None) -> torch.Tensor:
        """The two-level fusion's output f [B, h] (before the tower)."""
        s = batch.scenario
        groups = groups or ScenarioGroups(s, self.num_scenarios)
        e = autocast_input(self.bottom(self.embedding.fields(batch).flatten(1), groups))
        out = self.experts(e)  # [B, E + D + T, h]
        f = out.new_zeros(out.shape[0], out.shape[2])
        if self.E:
            g = torch.softmax(self.gate(e, groups), dim=-1).to(out.dtype)  # [B, E]
            f = f + torch.einsum("be,beh->bh", g, out[:, : self.E])
        if self.D:
            w = nn.functional.one_hot(s, self.D).to(out.dtype)  # [B, S]: the row's own expert
            if self.a is not None:  # ... weighted a, the others sharing 1 - a equally
                a = self.weight("a", out.dtype)
                w = a * w + (1 - a) * (1 - w) / (self.D - 1)
            domain = torch.einsum("bs,bsh->bh", w, out[:, self.E : self.E + self.D])
            f = f + self.weight("b_d", out.dtype) * domain
        if self.T:
            f = f + self.weight("b_t", out.dtype) * out[:, -1]
        return f

    def forward(self, batch: Batch) -> torch.Tensor:
        groups = ScenarioGroups(batch.scenario, self.num_scenarios)
        return self.towers(self.fused(batch, groups), groups).squeeze(-1)  # [B]

"""HierRec: Scenario-Aware Hierarchical Dynamic Network (Gao et al., 2024).

    E_c        = [e_1 .. e_I]                         common-field embeddings        (Eq. 3)
    O_global   = FC(E_c)                              Linear+BN+Dropout+ReLU
    SC_exp     = FC(e_s)                                                             (Eq. 4-5)
    O_explicit = SOM(O_global; SC_exp)                two generated linears          (Eq. 1-2)
    w_norm     = softmax_fields(Reshape(FC(e_s)))     [G, I] per sample              (Eq. 6)
    IE[g]      = w_norm[g] * E_c                      (+ field self-attention)       (Eq. 7)
    SC_imp[g]  = FC_shared(IE[g])                                                    (Eq. 8)
    O_imp[g]   = SOM(O_explicit; SC_imp[g])           all G heads at once
    y          = sigmoid(FC(concat_g O_imp[g]))                                      (Eq. 9)

Defaults follow the authors' reference code (Applied-Machine-Learning-Lab/HierRec, KuaiRand
run): d 16, G 4, dims [[64], [16, 64], [16, 64], [64]], dropout 0.2. Shapes: B batch,
I common fields, d embedding, G heads, M = I*d, J/K/O the SOM input/bottleneck/output sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import MLP, Dropout
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, register


@dataclass
class HierRecParams(ModelParams):
    heads: int = 4  # G, implicit heads ("im_num" in the reference code)
    global_dims: list[int] = field(default_factory=lambda: [64])  # FC(E_c) -> O_global
    explicit_dims: list[int] = field(default_factory=lambda: [16, 64])  # SOM [bottleneck, out]
    implicit_dims: list[int] = field(default_factory=lambda: [16, 64])  # SOM [bottleneck, out]
    output_dims: list[int] = field(default_factory=lambda: [64, 64])  # MLP before the logit
    dropout: float = 0.2
    # paper Eq. 4-5 allows K FC layers (BN/Dropout/ReLU) before SC_explicit; reference: none
    explicit_fc: list[int] = field(default_factory=list)
    # reference: split e_s into G chunks, chunk g -> Linear(d/G -> I); paper: Linear(d -> G*I)
    head_weights_from: Literal["chunks", "full"] = "chunks"
    field_attention: bool = True  # reference-only single-head self-attention over fields
    attention_dropout: float = 0.2  # reference passes the model dropout to the attention
    som_activation: Literal["none", "relu"] = "none"  # between the two generated layers
    # how the implicit SOM's first layer is applied: build W1 per sample and head, or
    # contract O_explicit with the generator first (same result, G times fewer MACs there)
    som_apply: Literal["materialize", "factored"] = "factored"

    def check(self, where: str) -> None:
        for name in ("explicit_dims", "implicit_dims"):
            dims = getattr(self, name)
            if len(dims) != 2 or min(dims) < 1:
                raise UserError(
                    f"{where}.{name} must be two positive sizes [bottleneck, out], got {dims}"
                )
        if not self.global_dims or not self.output_dims:
            raise UserError(f"{where}.global_dims and output_dims need at least one layer each")
        heads = 1 if "mi" in self.drop else self.heads
        if self.head_weights_from == "chunks" and self.embed_dim % heads:
            raise UserError(
                f"{where}: embed_dim {self.embed_dim} must be divisible by heads {heads} "
                "(each head reads an embed_dim/heads chunk of e_s); change one of them "
                "or set head_weights_from: full"
            )


class FieldSelfAttention(nn.Module):
    """Single-head self-attention across the fields of each row (reference's embed_atten).

    x [..., I, d] -> [..., I, d]; called with [B, G, I, d], every head of every sample attends
    on its own.
    """

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = Dropout(dropout)  # on the attention weights, as in SDPA's dropout_p
        self.scale = dim**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # [..., I, d] each
        if not self.training or self.dropout.p == 0.0:
            return self.out(F.scaled_dot_product_attention(q, k, v))
        # spelled out in training: SDPA's own dropout draws a Bernoulli per attention weight
        # on the CPU, which cost more than the rest of the attention (see blocks.Dropout)
        a = torch.softmax((q * self.scale) @ k.transpose(-1, -2), dim=-1)  # [..., I, I]
        return self.out(self.dropout(a) @ v)


class ScenarioOrientedModule(nn.Module):
    """SOM (Eq. 1-2): two linears J -> K -> O whose weights are generated per sample.

    One Linear(C -> P) turns the scenario condition into SC of size
    P = J*K + K + K*O + O, split as [W1 | b1 | W2 | b2]; the reference code's four
    generator linears are this one Linear's row blocks.
    x [B, J] is shared by all H conditions cond [B, H, C] -> output [B, H, O].
    """

    def __init__(
        self,
        in_dim: int,
        cond_dim: int,
        bottleneck: int,
        out_dim: int,
        activation: str = "none",
        apply: str = "materialize",
    ):
        super().__init__()
        self.J, self.K, self.O = in_dim, bottleneck, out_dim
        self.sizes = [in_dim * bottleneck, bottleneck, bottleneck * out_dim, out_dim]
        self.generator = nn.Linear(cond_dim, sum(self.sizes))
        self.activation = activation
        self.apply_mode = apply

    def generated(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-sample (W1 [.., J, K], b1 [.., K], W2 [.., K, O], b2 [.., O]) from cond [.., C]."""
        w1, b1, w2, b2 = self.generator(cond).split(self.sizes, dim=-1)
        lead = cond.shape[:-1]
        return w1.view(*lead, self.J, self.K), b1, w2.view(*lead, self.K, self.O), b2

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        B, H, C = cond.shape
        J, K = self.J, self.K
        n1 = J * K
        if self.apply_mode == "factored":
            # W1[b,h] = A1 cond[b,h] + c1 with A1 [J, K, C], so
            # x W1 = sum_c cond[b,h,c] * (x A1)[b,k,c] + x c1: contract x with A1 once per
            # sample (J*K*C MACs) instead of once per head, and never build W1.
            # A1 reordered to [J, C*K] (a weight-sized copy) so that x A1 comes out as
            # [B, C, K], the layout bmm reads without copying the [B, K, C] activations
            a1 = self.generator.weight[:n1].view(J, K, C).transpose(1, 2).reshape(J, C * K)
            c1 = self.generator.bias[:n1].view(J, K)
            xa = (x @ a1).view(B, C, K)  # [B, C, K]
            h1 = torch.bmm(cond, xa) + (x @ c1).unsqueeze(1)  # [B, H, K]
            rest = F.linear(cond, self.generator.weight[n1:], self.generator.bias[n1:])
            b1, w2, b2 = rest.split(self.sizes[1:], dim=-1)
            w2 = w2.view(B, H, K, self.O)
            h1 = h1 + b1
        else:
            w1, b1, w2, b2 = self.generated(cond)  # [B, H, J, K], [B, H, K], ...
            h1 = torch.matmul(x[:, None, None, :], w1).squeeze(-2) + b1  # [B, H, K]
        if self.activation == "relu":
            h1 = torch.relu(h1)
        return torch.matmul(h1.unsqueeze(-2), w2).squeeze(-2) + b2  # [B, H, O]


SWITCHES = {
    "mi": "multi-head implicit modeling (single head, G = 1)",
    "i": "implicit scenario-oriented layers (output layer reads O_explicit)",
    "e": "explicit scenario-oriented layer (implicit layers read O_global)",
}


@register(
    "hierrec",
    HierRecParams,
    paper="HierRec (Gao et al., 2024): Scenario-Aware Hierarchical Dynamic Network",
    switches=SWITCHES,
)
class HierRec(nn.Module):
    def __init__(self, schema: Schema, p: HierRecParams):
        super().__init__()
        d = p.embed_dim
        self.use_explicit = "e" not in p.drop
        self.use_implicit = "i" not in p.drop
        self.heads = 1 if "mi" in p.drop else p.heads
        self.head_weights_from = p.head_weights_from
        self.embedding = FeatureEmbedding(schema, d, include_scenario=False)
        # e_s conditions every generated layer and the head weights; the reference draws it
        # Xavier-uniform (bound sqrt(6 / (S + d)), 0.53 for 5 x 16), not the shared N(0, 0.01):
        # from 0.01 the explicit SOM and the heads start (and stay) nearly the same in every
        # scenario (docs/models/hierrec.md, "Initialisation")
        nn.init.xavier_uniform_(self.embedding.scenario_table.weight)
        I = self.embedding.num_fields
        self.num_scenarios = schema.num_scenarios
        self.num_common_fields, self.dim = I, d

        # O_global = FC(E_c)
        self.global_fc = MLP(I * d, p.global_dims, p.dropout, batch_norm=True)
        rep = self.global_fc.out_dim  # J of the next SOM

        if self.use_explicit:
            # SC_explicit = FC(e_s) (Eq. 4-5); O_explicit = SOM(O_global; SC_explicit)
            self.explicit_fc = MLP(d, p.explicit_fc, p.dropout, batch_norm=True)
            nb, out = p.explicit_dims
            self.explicit_som = ScenarioOrientedModule(
                rep, self.explicit_fc.out_dim, nb, out, p.som_activation, "materialize"
            )
            rep = out

        if self.use_implicit:
            G = self.heads
            if p.head_weights_from == "chunks":
                # chunk g of e_s -> Linear(d/G -> I), all chunks in one einsum
                self.head_weight = nn.Parameter(torch.empty(G, d // G, I))
                self.head_bias = nn.Parameter(torch.empty(G, I))
                bound = (G / d) ** 0.5  # nn.Linear's default init with fan_in d/G
            else:
                self.head_weight = nn.Parameter(torch.empty(d, G * I))
                self.head_bias = nn.Parameter(torch.empty(G * I))
                bound = (1 / d) ** 0.5
            nn.init.uniform_(self.head_weight, -bound, bound)
            nn.init.uniform_(self.head_bias, -bound, bound)
            self.field_attention = (
                FieldSelfAttention(d, p.attention_dropout) if p.field_attention else None
            )
            nb, out = p.implicit_dims
            self.implicit_som = ScenarioOrientedModule(
                rep, I * d, nb, out, p.som_activation, p.som_apply
            )
            rep = G * out

        # y = sigmoid(FC(concat_g O_implicit[g])) (Eq. 9); the engine applies the sigmoid
        self.output = MLP(rep, p.output_dims, p.dropout, batch_norm=True, out_dim=1)

    @property
    def field_names(self) -> list[str]:
        """The I common fields, in the order of head_weights' last axis (paper Figure 6)."""
        return list(self.embedding.field_names)

    def _head_weights(self, e_s: torch.Tensor) -> torch.Tensor:
        """weight_norm (Eq. 6): e_s [N, d] -> softmax over fields [N, G, I]."""
        G, I = self.heads, self.num_common_fields
        if self.head_weights_from == "chunks":
            chunks = e_s.view(-1, G, self.dim // G)  # [N, G, d/G]
            logits = torch.einsum("ngk,gki->ngi", chunks, self.head_weight) + self.head_bias
        else:
            logits = (e_s @ self.head_weight + self.head_bias).view(-1, G, I)
        return logits.softmax(dim=-1)

    @torch.no_grad()
    def head_weights(self, scenarios: torch.Tensor | None = None) -> torch.Tensor:
        """Per-scenario implicit head weights [S, G, I] (all scenarios when None)."""
        if not self.use_implicit:
            raise UserError(
                "this HierRec was built with drop: [i] and has no implicit heads; "
                "build it without the 'i' switch to read head weights"
            )
        table = self.embedding.scenario_table.weight
        if scenarios is None:
            scenarios = torch.arange(self.num_scenarios, device=table.device)
        return self._head_weights(table[scenarios])

    def report(self) -> dict | None:
        """Head-by-field weights per scenario for run.json (the paper's Figure 6 heat map)."""
        if not self.use_implicit:
            return None
        return {"fields": self.field_names, "head_weights": self.head_weights().tolist()}

    def forward(self, batch: Batch) -> torch.Tensor:
        e_c = self.embedding.fields(batch)  # [B, I, d]
        e_s = self.embedding.scenario(batch)  # [B, d]
        B, I, d = e_c.shape
        h = self.global_fc(e_c.reshape(B, I * d))  # O_global [B, 64]
        if self.use_explicit:
            sc = self.explicit_fc(e_s).unsqueeze(1)  # SC_explicit [B, 1, C]
            h = self.explicit_som(h, sc).squeeze(1)  # O_explicit [B, 64]
        if self.use_implicit:
            G = self.heads
            w = self._head_weights(e_s)  # [B, G, I]
            ie = w.unsqueeze(-1) * e_c.unsqueeze(1)  # IE [B, G, I, d] (Eq. 7)
            if self.field_attention is not None:
                ie = self.field_attention(ie)  # [B, G, I, d]: 4-D keeps the fused CPU kernel
            # SC_implicit[g] = FC_shared(IE[g]) and O_implicit[g] = SOM(h; SC_implicit[g])
            h = self.implicit_som(h, ie.reshape(B, G, I * d)).reshape(B, -1)  # [B, G*64]
        return self.output(h).squeeze(-1)  # [B]

    def multiply_adds_per_sample(self) -> dict[str, int]:
        """Forward multiply-adds per sample, by part (look-ups, softmax, BN not counted)."""
        I, d = self.num_common_fields, self.dim
        M = I * d
        parts: dict[str, int] = {}

        def mlp(m: nn.Module) -> int:
            return sum(
                x.in_features * x.out_features for x in m.modules() if isinstance(x, nn.Linear)
            )

        def som_apply(s: ScenarioOrientedModule, H: int) -> int:
            return H * (s.J * s.K + s.K * s.O)

        parts["global_fc"] = mlp(self.global_fc)
        if self.use_explicit:
            s = self.explicit_som
            parts["explicit_fc"] = mlp(self.explicit_fc)
            parts["explicit_generate"] = s.generator.in_features * sum(s.sizes)
            parts["explicit_apply"] = som_apply(s, 1)
        if self.use_implicit:
            G, s = self.heads, self.implicit_som
            parts["head_weights"] = (d // G if self.head_weights_from == "chunks" else d) * G * I
            parts["implicit_weighting"] = G * M
            if self.field_attention is not None:
                # qkv + out projections, scores and weighted sum over I x I field pairs
                parts["field_attention"] = G * (4 * I * d * d + 2 * I * I * d)
            if s.apply_mode == "factored":
                parts["implicit_generate"] = s.J * s.K * M + G * M * (sum(s.sizes) - s.J * s.K)
                parts["implicit_apply"] = G * (M * s.K + s.K * s.O) + s.J * s.K
            else:
                parts["implicit_generate"] = G * M * sum(s.sizes)
                parts["implicit_apply"] = som_apply(s, G)
        parts["output"] = mlp(self.output)
        parts["total"] = sum(parts.values())
        return parts

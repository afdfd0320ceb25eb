"""SFPNet: Scenario-Adaptive Fine-Grained Personalization Network (Zhang et al., SIGIR 2024).

L stacked Scenario-Tailoring Blocks re-encode every feature *and every single behavior* of the
user's sequence with the scenario context, then DIN target attention pools the tailored
behaviors and a scenario-aware DNN predicts. Equation numbers refer to the paper.

Shapes: B batch, n non-sequence fields, Lb behaviors, d_{l-1} -> d_l a block's feature sizes,
k = 2 (mean and std of DAP) or 1 (mean pooling), d_s the scenario-prior size.
Choices where the paper is silent are listed in docs/models/sfpnet.md.
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
from msctr.models.registry import ModelParams, need_fields, need_layers, register


@dataclass
class SFPNetParams(ModelParams):
    num_blocks: int = 3  # L (paper: 3, 2 on Ali-CCP)
    block_dims: list[int] = field(default_factory=list)  # d_1..d_L; empty = all embed_dim
    gate_hidden: int | None = None  # SAM gate width (W0); None = the gated size (n+k)*d_{l-1}
    agg_hidden: int | None = None  # RTM aggregation width (W2); None = the output size
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64])  # S-DNN layers
    sdnn_gate_hidden: int | None = None  # S-DNN gate width (W5); None = the layer's input size
    din_hidden: list[int] = field(default_factory=lambda: [80, 40])  # DIN attention MLP
    din_softmax: bool = False  # DIN paper: raw (unnormalized) attention weights
    dap_eps: float = 1e-6  # added to the variance inside the square root
    dropout: float = 0.0  # after each S-DNN hidden layer (paper: none mentioned)
    prior_fields: list[str] = field(default_factory=list)  # sparse fields joining s_m
    scenario_in_fields: bool = False  # also feed the scenario embedding as an ordinary x_i
    sequences: list[str] = field(default_factory=list)  # behavior sequences to use; [] = all

    def check(self, where: str) -> None:
        need_layers(where, "hidden", self.hidden, "[256, 128, 64]")
        if self.dap_eps <= 0:  # the std's square root needs it above 0 where a variance is 0
            raise UserError(f"{where}.dap_eps must be positive, got {self.dap_eps}")
        if self.block_dims and len(self.block_dims) != self.num_blocks:
            raise UserError(
                f"sfpnet: {where}.block_dims has {len(self.block_dims)} sizes but num_blocks is "
                f"{self.num_blocks}; give one size per block or leave block_dims empty"
            )

    def check_schema(self, schema: Schema, where: str) -> None:
        need_fields(schema.sparse_names, self.prior_fields, f"{where}.prior_fields", "sparse field")
        names = [s.name for s in schema.sequences]
        for name in self.sequences:
            if name not in names:
                raise UserError(
                    f"sfpnet: {where}.sequences names '{name}', which is not a sequence of "
                    f"this dataset; choose from: {', '.join(names)}"
                )


def distribution_aware_pooling(
    v: torch.Tensor, mask: torch.Tensor, eps: float, with_std: bool = True
) -> torch.Tensor:
    """Eq. 2: concat(mean, std) of the valid behaviors; rows with none give zeros.

    v [B, Lb, d], mask [B, Lb] -> [B, 2d] (or [B, d], the mean alone, when with_std is False).
    """
    m = mask.unsqueeze(-1).to(v.dtype)  # [B, Lb, 1]
    count = m.sum(1)  # [B, 1]
    mean = (v * m).sum(1) / count.clamp_min(1.0)  # [B, d]
    if not with_std:
        return mean
    # population variance as E[b^2] - E[b]^2; rounding can make it slightly negative, and
    # sqrt has an infinite slope at 0, hence the clamp and eps
    var = ((v * v * m).sum(1) / count.clamp_min(1.0) - mean * mean).clamp_min(0.0)
    std = torch.sqrt(var + eps) * (count > 0).to(v.dtype)  # [B, d]; empty rows -> 0
    return torch.cat([mean, std], dim=1)


class FieldTailoring(nn.Module):
    """Eq. 6 for all n fields at once.

    x_i' = ReLU(W_i1 x_i + b_i1) + sigmoid(W_i2 x_i + b_i2) * c_i.

    W_i1 and W_i2 of every field live in one [n, d_in, 2*d_out] tensor, so all fields and both
    branches are a single einsum.
    """

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        self.d_out = d_out
        self.weight = nn.Parameter(torch.empty(n, d_in, 2 * d_out))
        self.bias = nn.Parameter(torch.zeros(n, 2 * d_out))
        bound = math.sqrt(6.0 / (d_in + d_out))  # Xavier-uniform of each d_in x d_out matrix
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # x [B, n, d_in], c [B, n, d_out] -> [B, n, d_out]
        h = torch.einsum("bni,nio->bno", x, self.weight) + self.bias  # [B, n, 2*d_out]
        return torch.relu(h[..., : self.d_out]) + torch.sigmoid(h[..., self.d_out :]) * c


class ScenarioTailoringBlock(nn.Module):
    """One block: SAM (DAP + gate personalization) then RTM (aggregation + residual tailoring)."""

    def __init__(
        self,
        n: int,
        d_in: int,
        d_out: int,
        d_s: int,
        p: SFPNetParams,
        use_dap: bool,
        use_sam: bool,
        use_rtm: bool,
    ):
        super().__init__()
        self.n, self.d_in, self.d_out = n, d_in, d_out
        self.k = 2 if use_dap else 1  # width of the pooled sequence slot, in units of d
        self.eps = p.dap_eps
        width_in = (n + self.k) * d_in  # size of (x_1..x_n, B)
        if use_sam:
            # Eq. 3: A = sigmoid(W1 LN(ReLU(W0 X + b0)) + b1), X = (x_1..x_n, B, s_m)
            g = p.gate_hidden or width_in
            self.gate = nn.Sequential(
                nn.Linear(width_in + d_s, g), nn.ReLU(), nn.LayerNorm(g), nn.Linear(g, width_in)
            )
        else:
            self.gate = None
        if use_rtm:
            # Eq. 5: C = W3 ReLU(W2 X_hat + b2) + b3, size (n+k)*d_l
            width_out = (n + self.k) * d_out
            h = p.agg_hidden or width_out
            self.aggregate = nn.Sequential(
                nn.Linear(width_in, h), nn.ReLU(), nn.Linear(h, width_out)
            )
            # the paper writes c_b = C[n*d_l:(n+2)*d_l] (2*d_l values) yet multiplies it with a
            # d_l vector in Eq. 7: a learned map closes that gap
            self.seq_context = nn.Linear(self.k * d_out, d_out)
            self.tailor_fields = FieldTailoring(n, d_in, d_out)  # Eq. 6
            self.tailor_behaviors = nn.Linear(d_in, 2 * d_out)  # Eq. 7: [W4; W5], shared
        else:
            self.aggregate = None

    def forward(
        self, x: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # x [B, n, d_in], v [B, Lb, d_in], mask [B, Lb], s [B, d_s]
        B = x.shape[0]
        pooled = distribution_aware_pooling(v, mask, self.eps, with_std=self.k == 2)  # Eq. 2
        X = torch.cat([x.flatten(1), pooled], dim=1)  # [B, (n+k)*d_in]
        if self.gate is not None:
            A = torch.sigmoid(self.gate(torch.cat([X, s], dim=1)))  # Eq. 3, [B, (n+k)*d_in]
            X = X * A  # Eq. 4: X_hat
        x_hat = X[:, : self.n * self.d_in].view(B, self.n, self.d_in)  # [B, n, d_in]
        if self.aggregate is None:
            # ablation `rtm`: the block's output is the SAM-gated input. Behaviors have no gate of
            # their own, so they take the gate of the pooled mean (coarse, same for all behaviors)
            if self.gate is not None:
                a_b = A[:, self.n * self.d_in : (self.n + 1) * self.d_in]  # [B, d_in]
                v = v * a_b.unsqueeze(1)
            return x_hat, v
        C = self.aggregate(X)  # Eq. 5, [B, (n+k)*d_out]
        c_x = C[:, : self.n * self.d_out].view(B, self.n, self.d_out)  # c_i, [B, n, d_out]
        c_b = self.seq_context(C[:, self.n * self.d_out :])  # [B, d_out]
        x_new = self.tailor_fields(x_hat, c_x)  # Eq. 6, [B, n, d_out]
        h = self.tailor_behaviors(v)  # [B, Lb, 2*d_out]
        v_new = torch.relu(h[..., : self.d_out]) + torch.sigmoid(
            h[..., self.d_out :]
        ) * c_b.unsqueeze(1)  # Eq. 7, [B, Lb, d_out]
        return x_new, v_new


class TargetAttention(nn.Module):
    """DIN's activation unit (Eq. 8): w_j = MLP([v_j, t, v_j - t, v_j * t]), V = sum_j w_j v_j."""

    def __init__(self, d: int, hidden: list[int], softmax: bool):
        super().__init__()
        self.mlp = MLP(4 * d, hidden, out_dim=1, activation=nn.PReLU)
        self.softmax = softmax

    def forward(self, v: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # v [B, Lb, d], t [B, Lb, d] (each behavior's target), mask [B, Lb] -> [B, d]
        score = self.mlp(torch.cat([v, t, v - t, v * t], dim=-1)).squeeze(-1)  # [B, Lb]
        if self.softmax:
            # a finite fill keeps all-masked rows finite; the mask then zeroes them
            score = torch.softmax(score.masked_fill(~mask, -1e9), dim=1)
        w = score * mask.to(score.dtype)  # padded behaviors weigh 0; empty rows give V = 0
        return torch.einsum("bl,bld->bd", w, v)


class ScenarioAwareLayer(nn.Module):
    """One S-DNN layer: Eq. 10 gate from (H, s_m), Eq. 11 H' = ReLU(W7 (H * A) + b7)."""

    def __init__(self, d_in: int, d_out: int, d_s: int, gate_hidden: int | None):
        super().__init__()
        g = gate_hidden or d_in
        self.gate = nn.Sequential(
            nn.Linear(d_in + d_s, g), nn.ReLU(), nn.LayerNorm(g), nn.Linear(g, d_in)
        )
        self.fc = nn.Linear(d_in, d_out)

    def forward(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.gate(torch.cat([h, s], dim=1)))  # Eq. 10, [B, d_in]
        return torch.relu(self.fc(h * a))  # Eq. 11, [B, d_out]


@register(
    "sfpnet",
    SFPNetParams,
    paper="SFPNet (Zhang et al., SIGIR 2024): Scenario-Adaptive Fine-Grained Personalization",
    switches={
        "dap": "distribution-aware pooling (mean pooling instead)",
        "sam": "the SAM gate (A = 1)",
        "rtm": "aggregation and residual tailoring (block output = SAM-gated input)",
        "sdnn": "the scenario-aware DNN (plain MLP of the same sizes)",
        "stb": "the Scenario-Tailoring Blocks (L = 0)",
    },
    needs_sequences=True,
)
class SFPNet(nn.Module):
    def __init__(self, schema: Schema, p: SFPNetParams):
        super().__init__()
        d = p.embed_dim
        drop = set(p.drop)
        self.embedding = FeatureEmbedding(
            schema, d, include_scenario=p.scenario_in_fields, pool_sequences=False
        )
        shift = 1 if p.scenario_in_fields else 0  # sparse fields follow the scenario field
        n = self.embedding.num_fields  # [scenario] + sparse + dense
        prior = [schema.sparse_index(f) + shift for f in p.prior_fields]
        self.register_buffer("prior_idx", torch.tensor(prior, dtype=torch.long), persistent=False)
        d_s = d * (1 + len(p.prior_fields))

        # behaviors: the chosen sequences, concatenated along the behavior axis. Each
        # behavior is the mean of its attributes' embeddings, so its DIN query (the target
        # item, Eq. 8) is the mean of the candidate's fields that query those attributes: the
        # same rows when a sequence shares the candidate's vocabulary (a clicked item that is
        # the candidate matches it exactly), the item's field of the same kind on Ali-CCP
        chosen = set(p.sequences or [s.name for s in schema.sequences])
        self.seq_index = [i for i, seq in enumerate(schema.sequences) if seq.name in chosen]
        query = torch.zeros(len(self.seq_index), n)  # [S', n]: each sequence's query weights
        for row, i in enumerate(self.seq_index):
            fields = schema.sequences[i].fields
            for sf in fields:
                query[row, schema.sparse_index(sf.target) + shift] += 1.0 / len(fields)
        self.register_buffer("query_weight", query, persistent=False)
        owner = [
            row for row, i in enumerate(self.seq_index) for _ in range(schema.sequences[i].max_len)
        ]
        # [Lb]: the sequence of each behavior (a list: models are also built on the meta device)
        self.register_buffer(
            "behavior_seq", torch.tensor(owner, dtype=torch.long), persistent=False
        )

        L = 0 if "stb" in drop else p.num_blocks
        # without RTM nothing maps d_{l-1} -> d_l, so every block keeps the embedding size
        dims = [d] + (list(p.block_dims) if p.block_dims and "rtm" not in drop else [d] * L)
        dims = dims[: L + 1]
        self.blocks = nn.ModuleList(
            ScenarioTailoringBlock(
                n,
                dims[l],
                dims[l + 1],
                d_s,
                p,
                use_dap="dap" not in drop,
                use_sam="sam" not in drop,
                use_rtm="rtm" not in drop,
            )
            for l in range(L)
        )
        d_L = dims[-1]
        self.attention = TargetAttention(d_L, p.din_hidden, p.din_softmax)

        h0 = (n + 1) * d_L  # H^1 = (x_1^L .. x_n^L, V)
        if "sdnn" in drop:
            self.tower = None
            self.mlp = MLP(h0, p.hidden, p.dropout)
        else:
            sizes = [h0, *p.hidden]
            self.tower = nn.ModuleList(
                ScenarioAwareLayer(a, b, d_s, p.sdnn_gate_hidden)
                for a, b in zip(sizes[:-1], sizes[1:])
            )
            self.mlp = None
        self.dropout = Dropout(p.dropout)
        self.out = nn.Linear(p.hidden[-1] if p.hidden else h0, 1)

        # paper: Xavier initialization of the parameters. The scenario table, which feeds
        # every SAM and S-DNN gate, gets it too (bound sqrt(6 / (S + d))): from the shared
        # N(0, 0.01) the gates start alike in every scenario and Adam's small steps keep them
        # so for many epochs (docs/models/sfpnet.md). The shared feature table keeps the shared
        # init, whose scale Xavier over its many rows would give anyway.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.embedding.scenario_table.weight)

    def behaviors(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """b_j = mean of the behavior's attribute embeddings: ([B, Lb, d], mask [B, Lb])."""
        parts = [self.embedding.sequence(batch, i) for i in self.seq_index]
        return torch.cat([v for v, _ in parts], dim=1), torch.cat([m for _, m in parts], dim=1)

    def represent(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x^L [B, n, d_L], V [B, d_L] the behaviors pooled by target attention, s_m)."""
        x = self.embedding.fields(batch)  # x_1..x_n, [B, n, d]
        s = torch.cat(
            [self.embedding.scenario(batch), x[:, self.prior_idx].flatten(1)], dim=1
        )  # s_m, [B, d_s]
        v, mask = self.behaviors(batch)  # [B, Lb, d], [B, Lb]
        for block in self.blocks:
            x, v = block(x, v, mask, s)  # [B, n, d_l], [B, Lb, d_l]
        # the target item's block-L representation per sequence [B, S', d_L], then per behavior
        t = torch.einsum("sn,bnd->bsd", self.query_weight.to(x.dtype), x)[:, self.behavior_seq]
        return x, self.attention(v, t, mask), s  # Eq. 8: V [B, d_L]

    def forward(self, batch: Batch) -> torch.Tensor:
        x, V, s = self.represent(batch)
        h = torch.cat([x.flatten(1), V], dim=1)  # H^1, [B, (n+1)*d_L]
        if self.tower is None:
            h = self.mlp(h)
        else:
            for layer in self.tower:
                h = self.dropout(layer(h, s))  # Eqs. 10-11
        return self.out(h).squeeze(-1)  # Eq. 9 (sigmoid in the loss), [B]

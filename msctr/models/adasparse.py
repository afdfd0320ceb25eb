"""AdaSparse (Yang et al., CIKM 2022): adaptively sparse structures for multi-domain CTR.

A plain MLP over all field embeddings whose every hidden layer's neurons are weighted by
domain-aware factors pi^l, produced per sample by a lightweight "pruner" (one Linear):

    v^l  = W_p^l [e_d ++ h^l] + b_p^l            e_d: domain embedding, h^l: layer l's units
    h^l <- pi^l (x) h^l                         [B, N_l]

with e_d = the scenario embedding (++ `domain_fields`). The three forms of pi (`mode`):
    binarization  pi = 1[sigmoid(alpha v) >= 1/2]        exact 0/1, straight-through gradient
    scaling       pi = beta * sigmoid(v)                  soft weights in (0, beta)
    fusion        pi = beta * sigmoid(alpha v) * 1[beta * sigmoid(alpha v) >= eps]
                                                           scaled, with small ones cut to 0
alpha grows during training (alpha_init + alpha_step per training forward, capped at
alpha_max) so sigmoid(alpha v) approaches the step it stands in for. Fusion is the default:
the paper's best form.

Sparsity regularizer (returned as the auxiliary loss): rho^l, the exact fraction of layer
l's factors that are pruned over the batch (binarization: sigmoid(alpha v) < 1/2; fusion:
beta * sigmoid(alpha v) < epsilon; scaling never zeroes a factor, and a factor below epsilon
counts as pruned), with a straight-through gradient (see `factor`), and
    R = sparsity_weight * sum_l relu(|rho^l - sparsity_target| - sparsity_tolerance)^2
pulls each layer toward the expected sparsity ratio; the dead band of +-tolerance is the
paper's "flexible" regularizer, which keeps the ratio inside a range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import MLP, Dropout
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelOutput, ModelParams, need_layers, register


@dataclass
class AdaSparseParams(ModelParams):
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64])
    dropout: float = 0.1
    batch_norm: bool = True
    mode: Literal["binarization", "scaling", "fusion"] = "fusion"
    domain_fields: list[str] = field(default_factory=list)  # joined to the scenario embedding
    beta: float = 2.0  # scaling / fusion: factors lie in (0, beta)
    epsilon: float = 0.01  # fusion: factors below epsilon are pruned to exactly 0
    alpha_init: float = 1.0  # sharpness of sigmoid(alpha v) (binarization, fusion)
    alpha_step: float = 1e-4  # added to alpha after each training forward
    alpha_max: float = 5.0  # cap: a larger alpha would starve the pruner of gradient
    sparsity_target: float = 0.3  # expected fraction of pruned neurons per layer
    sparsity_tolerance: float = 0.0  # no penalty while |rho - target| <= tolerance
    sparsity_weight: float = 0.1  # weight of the regularizer in the total loss

    def check(self, where: str) -> None:
        need_layers(where, "hidden", self.hidden, "[256, 128, 64]")
        if not 0.0 < self.epsilon < self.beta:
            raise UserError(f"{where}: need 0 < epsilon < beta, got {self.epsilon}, {self.beta}")
        if not 0.0 <= self.sparsity_target < 1.0:
            raise UserError(
                f"{where}.sparsity_target must be in [0, 1), got {self.sparsity_target}"
            )
        if self.alpha_init <= 0 or self.alpha_max < self.alpha_init or self.alpha_step < 0:
            raise UserError(f"{where}: need 0 < alpha_init <= alpha_max and alpha_step >= 0")
        if self.sparsity_weight < 0 or self.sparsity_tolerance < 0:
            raise UserError(f"{where}: sparsity_weight and sparsity_tolerance must be >= 0")


@register(
    "adasparse",
    AdaSparseParams,
    paper="AdaSparse (Yang et al., CIKM 2022): domain-aware neuron-level weighting factors",
)
class AdaSparse(nn.Module):
    def __init__(self, schema: Schema, p: AdaSparseParams):
        super().__init__()
        self.p = p
        self.embedding = FeatureEmbedding(schema, p.embed_dim)
        domain = self.embedding.positions(["scenario", *p.domain_fields], "domain_fields")
        self.register_buffer("domain_idx", torch.tensor(domain), persistent=False)
        # persistent so a resumed run keeps its annealing position
        self.register_buffer("alpha", torch.tensor(float(p.alpha_init)))
        dims = [self.embedding.num_fields * p.embed_dim, *p.hidden]
        domain_dim = len(domain) * p.embed_dim
        self.layers = nn.ModuleList(
            MLP(a, [b], 0.0, p.batch_norm) for a, b in zip(dims[:-1], dims[1:])
        )
        self.pruners = nn.ModuleList(nn.Linear(domain_dim + h, h) for h in p.hidden)
        self.dropout = Dropout(p.dropout)
        self.out = nn.Linear(dims[-1], 1)

    def factor(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pruner logits v [B, N] -> (factors pi [B, N], keep indicator [B, N]).

        A neuron is pruned when sigmoid(alpha v) < 1/2 (binarization) or beta * sigmoid(alpha v)
        < epsilon (fusion, and "effectively pruned" for scaling). `keep` is exactly 1 or 0 in
        value, so the regularizer sees the true sparsity ratio; its gradient is a constant
        alpha / 4 (the steepest slope of the smooth step) per logit, so gates far from the
        threshold move as well as near ones (a sigmoid surrogate starves them).
        """
        p = self.p
        a = 1.0 if p.mode == "scaling" else self.alpha.clone()  # forward() anneals in place
        u = torch.sigmoid(a * v)
        hard = ((u >= 0.5) if p.mode == "binarization" else (p.beta * u >= p.epsilon)).to(v.dtype)
        if p.mode == "binarization":
            pi = u + (hard - u).detach()  # forward: exact 0/1; backward: sigmoid(alpha v)'s
        elif p.mode == "scaling":
            pi = p.beta * u
        else:  # fusion: the mask is a constant for autograd
            pi = p.beta * u * hard
        slope = 0.25 * a * v
        keep = slope + (hard - slope).detach()
        return pi, keep

    def run(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Logits [B], factors pi^l [B, N_l] per layer, and the sparsity regularizer."""
        emb = self.embedding.fields(batch)  # [B, n, d]
        e_d = emb[:, self.domain_idx].flatten(1)  # [B, g]
        h = emb.flatten(1)
        factors, reg = [], h.new_zeros(())
        for layer, pruner in zip(self.layers, self.pruners):
            h = layer(h)  # [B, N_l]
            pi, keep = self.factor(pruner(torch.cat([e_d, h], dim=1)))
            h = self.dropout(h * pi)
            factors.append(pi)
            rho = 1.0 - keep.mean()  # fraction of pruned neurons in this layer
            gap = torch.relu((rho - self.p.sparsity_target).abs() - self.p.sparsity_tolerance)
            reg = reg + gap.square()
        return self.out(h).squeeze(-1), factors, self.p.sparsity_weight * reg

    def factors(self, batch: Batch) -> list[torch.Tensor]:
        """The weighting factors pi^l [B, N_l] of every hidden layer (for inspection)."""
        return self.run(batch)[1]

    @torch.no_grad()
    def sparsity(self, batch: Batch) -> list[float]:
        """Exact fraction of neurons pruned to 0, per layer, on this batch."""
        return [float((pi == 0).float().mean()) for pi in self.run(batch)[1]]

    def forward(self, batch: Batch) -> ModelOutput:
        logit, _, reg = self.run(batch)
        if self.training and self.p.mode != "scaling":  # anneal once per training step
            with torch.no_grad():
                self.alpha.add_(self.p.alpha_step).clamp_(max=self.p.alpha_max)
        return ModelOutput(logit, reg)

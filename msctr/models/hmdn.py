"""HMDN (Lou et al., 2024): Hierarchical Multi-Distribution Network.

1. Embeddings (sec. 2.3.1): x = all field embeddings [B, n*d]; x_b = the embeddings of the
   multi-distribution fields (scenario, gender, city, ...) concatenated [B, m*d]. Both are
   views of one embedding table: x_b's fields are also part of x.
2. Residual quantization (eqs. 1-4), depth D, one codebook C of K codes shared by all levels:
       r_0 = x_b;  c_d = argmin_k ||r_(d-1) - e_k||^2;  r_d = r_(d-1) - e(c_d)
       s_D = sum_d e(c_d)
   ("implicit extraction"). "Explicit extraction" instead splits x_b into its m field parts,
   level d quantizes part d alone with its own codebook (so D = m, `depth` is not used), and
   each level's code is projected to the common size m*d before the sum (no residual chain).
3. Loss (eq. 5 and 11): with x_b^(d) the input of level d (r_(d-1), or part d),
       L_rq = sum_d ||e(c_d) - sg(x_b^(d))||^2 + beta * ||sg(e(c_d)) - x_b^(d)||^2
   per sample (squared L2, summed over units and levels), averaged over the batch; the model
   returns ModelOutput(logit, alpha * L_rq) and the training loop adds BCE.
4. Backbones, where s_D replaces x_b as the gate input (eqs. 8-10):
       mmoe:   y = head(sum_i softmax(s_D W_g)_i Expert_i(x)), 3 experts of 128-64-32
       pepnet: PEPNet's EPNet and PPNet gates both read s_D (msctr.models.pepnet)
   Dropping the `rq` switch leaves the plain backbone: the MMoE gate reads x (eq. 7), the
   PEPNet gates read x_b (eq. 10).

How the CTR gradient reaches x_b (the paper is silent; `rq_gradient`):
- "plain": s_D = sum_d e(c_d) exactly. The CTR loss trains the selected codebook rows (and in
  explicit mode the projections); x_b is moved only by the commitment term of L_rq (and, as
  part of x, by the backbone).
- "straight_through" (the default: the paper builds on RQ-VAE, which trains this way): the
  quantized vector q keeps its value but takes the gradient of its input,
  q = input + sg(q - input). Implicit: q = s_D, input = x_b, so
  s_D = x_b + sg(s_D - x_b). Explicit: per level, q_d = part_d + sg(e(c_d) - part_d), then
  projected and summed. The CTR gradient then reaches x_b; codebooks learn only from L_rq.

Residuals are chained with detached codes, r_d = r_(d-1) - sg(e(c_d)), as residual-VQ
practice does, so the commitment term moves x_b only and each code moves only by its own
codebook term (the literal eq. 5 would also pull earlier codes through r_(d-1)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import StackedMLP
from msctr.models.embedding import FeatureEmbedding
from msctr.models.pepnet import EPNet, PPNet
from msctr.models.registry import (
    ModelOutput,
    ModelParams,
    need_fields,
    need_layers,
    register,
)


@dataclass
class HMDNParams(ModelParams):
    backbone: Literal["mmoe", "pepnet"] = "mmoe"
    # names of the multi-distribution fields; None = scenario + the schema's partition fields
    distribution_fields: list[str] | None = None
    extraction: Literal["implicit", "explicit"] = "implicit"
    depth: int = 6  # D, implicit extraction only (the paper's best; stable for 3..9)
    codebook_size: int = 64  # K (the paper gives none)
    alpha: float = 1.0  # weight of L_rq in the total loss
    beta: float = 0.25  # commitment weight inside L_rq
    # straight-through: the paper builds on RQ-VAE, whose estimator trains x_b by the CTR loss
    rq_gradient: Literal["plain", "straight_through"] = "straight_through"
    hidden: list[int] = field(default_factory=lambda: [128, 64, 32])
    dropout: float = 0.1
    # BatchNorm after each hidden linear (experts and PEPNet MLP). The paper names none; on,
    # like this project's DNN baseline: with small initial embeddings an MLP without it
    # learns little beyond the additive part of the signal in short runs
    batch_norm: bool = True
    num_experts: int = 3  # mmoe backbone
    gate_hidden: int = 64  # pepnet backbone: GateNU width
    gamma: float = 2.0  # pepnet backbone: gate range (0, gamma)

    def check(self, where: str) -> None:
        need_layers(where, "hidden", self.hidden, "[128, 64, 32]")
        if self.alpha < 0 or self.beta < 0:
            raise UserError(f"{where}: alpha and beta must be >= 0")
        if self.gamma <= 0:  # the pepnet backbone's gate range (0, gamma), as PEPNet checks
            raise UserError(f"{where}.gamma must be > 0, got {self.gamma}")

    def check_schema(self, schema: Schema, where: str) -> None:
        names = self.distribution_names(schema)
        if not names:
            raise UserError(f"{where}.distribution_fields is empty; name at least one field")
        key = f"{where}.distribution_fields"
        need_fields(FeatureEmbedding.names(schema), names, key, once=True)

    def distribution_names(self, schema: Schema) -> list[str]:
        """The multi-distribution fields; by default the scenario and the schema's partition
        fields."""
        if self.distribution_fields is not None:
            return self.distribution_fields
        return ["scenario"] + [f for f in schema.partition_fields if f in schema.sparse_names]


class Quantized(NamedTuple):
    s: torch.Tensor  # [B, z] hierarchical representation s_D (as the backbone receives it)
    codes: torch.Tensor  # [B, D] chosen code per level
    loss: torch.Tensor  # scalar L_rq


def _nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code: x [..., B, z], codebook [..., K, z] -> [..., B].

    ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2, and ||x||^2 does not change the argmin.
    """
    with torch.no_grad():
        dist = (codebook * codebook).sum(-1).unsqueeze(-2) - 2 * x @ codebook.transpose(-1, -2)
        return dist.argmin(-1)


class CodeUsage(nn.Module):
    """Counts how often each code of each level is chosen during training."""

    def __init__(self, levels: int, codebook_size: int):
        super().__init__()
        self.levels, self.size = levels, codebook_size
        self.register_buffer("counts", torch.zeros(levels, codebook_size, dtype=torch.long))

    @torch.no_grad()
    def record(self, codes: torch.Tensor) -> None:
        # codes [B, D]: one bincount over (level, code) pairs, no loop
        flat = (codes + torch.arange(self.levels, device=codes.device) * self.size).flatten()
        self.counts += torch.bincount(flat, minlength=self.levels * self.size).view_as(self.counts)

    def stats(self) -> dict[str, torch.Tensor]:
        counts = self.counts.detach().cpu().clone()  # a report: float64 on the CPU
        p = counts.double() / counts.sum(1, keepdim=True).clamp_min(1)
        entropy = -(p * p.clamp_min(1e-300).log()).sum(1)
        return {
            "counts": counts,  # [D, K]
            "perplexity": entropy.exp(),  # [D]: effective number of codes in use, 1..K
            "dead_fraction": (counts == 0).double().mean(1),  # [D]: codes never chosen
        }


class ResidualQuantizer(nn.Module):
    """Implicit extraction: D levels of residual quantization with one shared codebook."""

    def __init__(
        self, dim: int, codebook_size: int, depth: int, beta: float, gradient: str = "plain"
    ):
        super().__init__()
        self.depth, self.beta, self.gradient = depth, beta, gradient
        # VQ-VAE's init: uniform in +-1/K, the scale of freshly initialized embeddings
        self.codebook = nn.Parameter(
            torch.empty(codebook_size, dim).uniform_(-1 / codebook_size, 1 / codebook_size)
        )
        self.usage = CodeUsage(depth, codebook_size)

    def forward(self, x_b: torch.Tensor) -> Quantized:
        r = x_b  # r_0 [B, z]
        codes, quantized, loss = [], [], x_b.new_zeros(x_b.shape[0])
        for _ in range(self.depth):  # the levels are sequential: each reads the last residual
            c = _nearest(r.detach(), self.codebook)  # [B]
            e = self.codebook[c]  # e(c_d) [B, z]
            loss = loss + (e - r.detach()).square().sum(1)
            loss = loss + self.beta * (e.detach() - r).square().sum(1)
            r = r - e.detach()  # r_d
            codes.append(c)
            quantized.append(e)
        s = torch.stack(quantized).sum(0)  # s_D [B, z]
        if self.gradient == "straight_through":
            s = x_b + (s - x_b).detach()
        codes_t = torch.stack(codes, 1)  # [B, D]
        if self.training:
            self.usage.record(codes_t)
        return Quantized(s, codes_t, loss.mean())


class ExplicitQuantizer(nn.Module):
    """Explicit extraction: one level per distribution field, each with its own codebook.

    x_b [B, P*p] is split into P parts of size p; level d quantizes part d with codebook d
    (no residual chain), and e(c_d) is projected p -> out by a per-level linear before the sum.
    """

    def __init__(
        self,
        parts: int,
        part_dim: int,
        out_dim: int,
        codebook_size: int,
        beta: float,
        gradient: str = "plain",
    ):
        super().__init__()
        self.parts, self.part_dim, self.beta, self.gradient = parts, part_dim, beta, gradient
        k = codebook_size
        self.codebooks = nn.Parameter(torch.empty(parts, k, part_dim).uniform_(-1 / k, 1 / k))
        bound = 1 / math.sqrt(part_dim)
        self.proj = nn.Parameter(torch.empty(parts, part_dim, out_dim).uniform_(-bound, bound))
        self.usage = CodeUsage(parts, codebook_size)

    def forward(self, x_b: torch.Tensor) -> Quantized:
        parts = x_b.view(x_b.shape[0], self.parts, self.part_dim).transpose(0, 1)  # [P, B, p]
        c = _nearest(parts.detach(), self.codebooks)  # [P, B], all levels in one batched matmul
        level = torch.arange(self.parts, device=x_b.device).unsqueeze(1)
        e = self.codebooks[level, c]  # [P, B, p]
        loss = (e - parts.detach()).square().sum(-1) + self.beta * (
            e.detach() - parts
        ).square().sum(-1)  # [P, B]
        q = parts + (e - parts).detach() if self.gradient == "straight_through" else e
        s = torch.einsum("pbi,pio->bo", q, self.proj)  # sum_d proj_d(e(c_d)) [B, out]
        codes = c.transpose(0, 1)  # [B, P]
        if self.training:
            self.usage.record(codes)
        return Quantized(s, codes, loss.sum(0).mean())


@register(
    "hmdn",
    HMDNParams,
    paper="HMDN (Lou et al., 2024): residual-quantized hierarchical representation as gate input",
    switches={
        "rq": "no quantization: the backbone alone, gating on x (mmoe) or x_b (pepnet)",
        "explicit": "implicit extraction swapped for explicit (one codebook per field)",
    },
)
class HMDN(nn.Module):
    def __init__(self, schema: Schema, p: HMDNParams):
        super().__init__()
        self.p = p
        self.embedding = FeatureEmbedding(schema, p.embed_dim)
        d, n = p.embed_dim, self.embedding.num_fields
        dist = self.embedding.positions(p.distribution_names(schema), "distribution_fields")
        self.register_buffer("dist_idx", torch.tensor(dist), persistent=False)
        z = len(dist) * d  # size of x_b and of s_D
        self.use_rq = "rq" not in p.drop
        explicit = p.extraction == "explicit" or "explicit" in p.drop
        self.quantizer: ResidualQuantizer | ExplicitQuantizer | None = None
        if self.use_rq and explicit:
            self.quantizer = ExplicitQuantizer(
                len(dist), d, z, p.codebook_size, p.beta, p.rq_gradient
            )
        elif self.use_rq:
            self.quantizer = ResidualQuantizer(z, p.codebook_size, p.depth, p.beta, p.rq_gradient)

        if p.backbone == "mmoe":
            gate_dim = z if self.use_rq else n * d  # eq. 8 reads s_D, eq. 7 reads x
            self.experts = StackedMLP(p.num_experts, n * d, p.hidden, p.dropout, p.batch_norm)
            self.gate = nn.Linear(gate_dim, p.num_experts, bias=False)  # W_g of eq. 7
            self.head = nn.Linear(p.hidden[-1], 1)  # the single task's tower
        else:
            self.epnet = EPNet(z, n, d, p.gate_hidden, p.gamma)
            self.ppnet = PPNet(n * d, z, p.hidden, p.dropout, p.batch_norm, p.gate_hidden, p.gamma)

    def distribution_input(self, batch: Batch) -> torch.Tensor:
        """x_b [B, m*d]: the multi-distribution fields' embeddings, concatenated."""
        return self.embedding.fields(batch)[:, self.dist_idx].flatten(1)

    def forward(self, batch: Batch) -> ModelOutput:
        emb = self.embedding.fields(batch)  # [B, n, d]
        x = emb.flatten(1)  # [B, n*d]
        x_b = emb[:, self.dist_idx].flatten(1)  # [B, m*d]
        if self.quantizer is not None:
            s, _, l_rq = self.quantizer(x_b)  # s_D [B, m*d]
            aux = self.p.alpha * l_rq
        else:
            s, aux = x_b, x.new_zeros(())
        if self.p.backbone == "mmoe":
            g = torch.softmax(self.gate(s if self.quantizer is not None else x), dim=-1)  # [B, E]
            mixed = torch.bmm(g.unsqueeze(1), self.experts(x)).squeeze(1)  # [B, h]
            logit = self.head(mixed).squeeze(-1)
        else:
            o_ep, _ = self.epnet(emb, s)  # [B, n, d]
            logit, _ = self.ppnet(o_ep.flatten(1), s)
        return ModelOutput(logit, aux)

    def code_usage(self) -> dict[str, torch.Tensor] | None:
        """Per-level code hit counts [D, K], perplexity [D] and dead-code fraction [D] over
        the training forwards so far; None when the `rq` switch is dropped."""
        return None if self.quantizer is None else self.quantizer.usage.stats()

    def report(self) -> dict | None:
        """Code usage for the run's run.json: dead codes are a known failure of VQ."""
        usage = self.code_usage()
        if usage is None:
            return None
        return {
            "perplexity_per_level": usage["perplexity"].tolist(),
            "dead_code_fraction_per_level": usage["dead_fraction"].tolist(),
        }

    def reset_code_usage(self) -> None:
        if self.quantizer is not None:
            self.quantizer.usage.counts.zero_()

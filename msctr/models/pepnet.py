"""PEPNet (Chang et al., KDD 2023): Parameter and Embedding Personalized Network.

Two gate networks, both GateNU: delta = gamma * sigmoid(W2 ReLU(W1 input)), values in (0, gamma).

EPNet (embedding personalization), paper eq. for delta_domain:
    delta_ep = GateNU(E(F_d) ++ sg(E))          per field (default) or per element
    O_ep     = delta_ep (x) E                    each field embedding scaled by its gate
with F_d the domain-side fields (scenario + `domain_fields`), E all field embeddings and
sg the stop-gradient, so the gate can read the general embeddings without the gate's loss
reshaping them.

PPNet (parameter personalization), paper eq. for delta_pp:
    delta_pp^l = GateNU^l(O_prior ++ sg(O_ep))   one gate per hidden layer
    H^l        = delta_pp^l (x) ReLU(W^l H^(l-1) + b^l)
with O_prior the prior fields' embeddings (user / item ids in the paper; here `prior_fields`).
The paper gates the input of every DNN layer; the first layer's input is O_ep, which EPNet
already gates, so here every hidden layer's output (= the next layer's input, the output
layer's included) is gated. Single task: one tower, one logit.

`EPNet` and `PPNet` are also HMDN's dynamic-weight backbone (msctr.models.hmdn), which feeds
them the hierarchical representation s_D in place of the domain and prior inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import MLP, Dropout, GateNU
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, need_fields, need_layers, register


@dataclass
class PEPNetParams(ModelParams):
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64])
    dropout: float = 0.1
    batch_norm: bool = True
    gate_hidden: int = 64  # width of GateNU's first layer (the paper gives none)
    gamma: float = 2.0  # gate range (0, gamma); the paper uses 2
    # EPNet's domain side: the scenario embedding plus these fields' embeddings
    domain_fields: list[str] = field(default_factory=list)
    # PPNet's prior fields; None = scenario + the first sparse field (the user id on KuaiRand
    # and Ali-CCP, the paper's main prior)
    prior_fields: list[str] | None = None
    epnet_scale: Literal["field", "element"] = "field"  # one gate value per field or per unit

    def check(self, where: str) -> None:
        need_layers(where, "hidden", self.hidden, "[256, 128, 64]")
        if self.gamma <= 0:
            raise UserError(f"{where}.gamma must be > 0, got {self.gamma}")
        if self.prior_fields is not None and not self.prior_fields:
            raise UserError(f"{where}.prior_fields is empty; name at least one field")

    def check_schema(self, schema: Schema, where: str) -> None:
        names = FeatureEmbedding.names(schema)
        need_fields(names, ["scenario", *self.domain_fields], f"{where}.domain_fields", once=True)
        need_fields(names, self.prior_names(schema), f"{where}.prior_fields", once=True)

    def prior_names(self, schema: Schema) -> list[str]:
        if self.prior_fields is None:
            return ["scenario", *schema.sparse_names[:1]]
        return self.prior_fields


class EPNet(nn.Module):
    """Embedding personalization: O_ep = GateNU(domain ++ sg(E)) (x) E."""

    def __init__(
        self,
        domain_dim: int,
        n_fields: int,
        dim: int,
        gate_hidden: int,
        gamma: float = 2.0,
        per_element: bool = False,
    ):
        super().__init__()
        self.n_fields, self.dim, self.per_element = n_fields, dim, per_element
        out = n_fields * dim if per_element else n_fields
        self.gate = GateNU(domain_dim + n_fields * dim, out, gate_hidden, gamma)

    def forward(self, emb: torch.Tensor, domain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # emb [B, n, d], domain [B, g] -> O_ep [B, n, d], delta [B, n, 1] or [B, n, d]
        delta = self.gate(torch.cat([domain, emb.flatten(1).detach()], dim=1))
        delta = delta.view(emb.shape[0], self.n_fields, self.dim if self.per_element else 1)
        return emb * delta, delta


class PPNet(nn.Module):
    """An MLP whose every hidden layer is scaled by a GateNU of (prior ++ sg(input)).

    With `gated=False` it is the plain MLP of the same sizes (PEPNet's `ppnet` ablation).
    """

    def __init__(
        self,
        in_dim: int,
        prior_dim: int,
        hidden: list[int],
        dropout: float = 0.0,
        batch_norm: bool = False,
        gate_hidden: int = 64,
        gamma: float = 2.0,
        gated: bool = True,
    ):
        super().__init__()
        dims = [in_dim, *hidden]
        # one Linear [-> BN] -> ReLU block per layer: the gate sits between blocks
        self.layers = nn.ModuleList(
            MLP(a, [b], 0.0, batch_norm) for a, b in zip(dims[:-1], dims[1:])
        )
        self.gates = (
            nn.ModuleList(GateNU(prior_dim + in_dim, h, gate_hidden, gamma) for h in hidden)
            if gated
            else None
        )
        self.dropout = Dropout(dropout)
        self.out = nn.Linear(dims[-1], 1)

    def forward(
        self, x: torch.Tensor, prior: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # x [B, in] (O_ep flattened), prior [B, p] -> logit [B], gates [B, h_l] per layer
        gate_in = torch.cat([prior, x.detach()], dim=1) if self.gates is not None else None
        h, deltas = x, []
        for i, layer in enumerate(self.layers):
            h = layer(h)  # [B, h_l]
            if self.gates is not None:
                delta = self.gates[i](gate_in)
                deltas.append(delta)
                h = h * delta
            h = self.dropout(h)
        return self.out(h).squeeze(-1), deltas


@register(
    "pepnet",
    PEPNetParams,
    paper="PEPNet (Chang et al., KDD 2023): EPNet + PPNet gates; baseline in HMDN",
    switches={
        "epnet": "no embedding gate: the MLP reads the raw field embeddings",
        "ppnet": "no hidden-layer gates: a plain MLP on the EPNet output",
    },
)
class PEPNet(nn.Module):
    def __init__(self, schema: Schema, p: PEPNetParams):
        super().__init__()
        self.embedding = FeatureEmbedding(schema, p.embed_dim)
        d, n = p.embed_dim, self.embedding.num_fields
        domain = self.embedding.positions(["scenario", *p.domain_fields], "domain_fields")
        prior = self.embedding.positions(p.prior_names(schema), "prior_fields")
        self.register_buffer("domain_idx", torch.tensor(domain), persistent=False)
        self.register_buffer("prior_idx", torch.tensor(prior), persistent=False)
        self.epnet = (
            EPNet(len(domain) * d, n, d, p.gate_hidden, p.gamma, p.epnet_scale == "element")
            if "epnet" not in p.drop
            else None
        )
        self.ppnet = PPNet(
            n * d,
            len(prior) * d,
            p.hidden,
            p.dropout,
            p.batch_norm,
            p.gate_hidden,
            p.gamma,
            gated="ppnet" not in p.drop,
        )

    def run(self, batch: Batch) -> tuple[torch.Tensor, dict[str, object]]:
        """Logits [B] and the gates: {"epnet": [B, n, 1|d] or None, "ppnet": [[B, h_l], ...]}."""
        emb = self.embedding.fields(batch)  # [B, n, d]
        prior = emb[:, self.prior_idx].flatten(1)  # [B, p*d]: raw priors, not EPNet-scaled
        delta_ep = None
        if self.epnet is not None:
            emb, delta_ep = self.epnet(emb, emb[:, self.domain_idx].flatten(1))  # O_ep [B, n, d]
        logit, deltas = self.ppnet(emb.flatten(1), prior)
        return logit, {"epnet": delta_ep, "ppnet": deltas}

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.run(batch)[0]

"""DeepFM (Guo et al., IJCAI 2017): a factorization machine and a DNN on shared embeddings.

logit = first-order term + FM pairwise term + DNN, all three over the same input fields.
Shapes in comments: B batch, n fields, d embedding size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.blocks import MLP
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, register

PARTS = ("fm", "linear", "dnn")


@dataclass
class DeepFMParams(ModelParams):
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64])
    dropout: float = 0.1
    batch_norm: bool = True

    def check(self, where: str) -> None:
        if all(part in self.drop for part in PARTS):
            raise UserError(
                f"{where}.drop removes every part of DeepFM ({', '.join(PARTS)}); keep at least one"
            )


def fm_pairwise(v: torch.Tensor) -> torch.Tensor:  # [B, n, d] -> [B]
    """sum_{i<j} <v_i, v_j> = 0.5 * sum_k [(sum_i v_ik)^2 - sum_i v_ik^2] (the FM identity)."""
    return 0.5 * (v.sum(1).square() - v.square().sum(1)).sum(-1)


@register(
    "deepfm",
    DeepFMParams,
    paper="DeepFM (Guo et al., IJCAI 2017)",
    switches={
        "fm": "the FM pairwise term",
        "linear": "the first-order term",
        "dnn": "the deep part",
    },
)
class DeepFM(nn.Module):
    def __init__(self, schema: Schema, p: DeepFMParams):
        super().__init__()
        self.use_fm = "fm" not in p.drop
        self.use_linear = "linear" not in p.drop
        self.use_dnn = "dnn" not in p.drop
        if self.use_linear:  # one scalar weight per feature value (w in the paper) + bias
            self.linear = FeatureEmbedding(schema, 1)
            self.bias = nn.Parameter(torch.zeros(1))
        if self.use_fm or self.use_dnn:  # V: shared by the FM and the deep part
            self.embedding = FeatureEmbedding(schema, p.embed_dim)
        if self.use_dnn:
            in_dim = self.embedding.num_fields * p.embed_dim
            self.mlp = MLP(in_dim, p.hidden, p.dropout, p.batch_norm, out_dim=1)

    def parts(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Each built part's contribution to the logit, [B] each; the logit is their sum."""
        out = {}
        if self.use_linear:
            out["linear"] = self.linear.fields(batch).sum(dim=(1, 2)) + self.bias  # [B]
        if self.use_fm or self.use_dnn:
            v = self.embedding.fields(batch)  # [B, n, d]
            if self.use_fm:
                out["fm"] = fm_pairwise(v)
            if self.use_dnn:
                out["dnn"] = self.mlp(v.flatten(1)).squeeze(-1)
        return out

    def forward(self, batch: Batch) -> torch.Tensor:
        return sum(self.parts(batch).values())  # [B]

"""DNN (BaseDNN): every field's embedding, scenario included, concatenated into one MLP.

The single-scenario reference point of all three papers' tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.models.blocks import MLP
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, register


@dataclass
class DNNParams(ModelParams):
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64])
    dropout: float = 0.1
    batch_norm: bool = True


@register("dnn", DNNParams, paper="BaseDNN (baseline in HierRec, SFPNet and HMDN)")
class DNN(nn.Module):
    def __init__(self, schema: Schema, p: DNNParams):
        super().__init__()
        self.embedding = FeatureEmbedding(schema, p.embed_dim)
        in_dim = self.embedding.num_fields * p.embed_dim
        self.mlp = MLP(in_dim, p.hidden, p.dropout, p.batch_norm, out_dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.embedding.fields(batch).flatten(1)  # [B, n*d]
        return self.mlp(x).squeeze(-1)  # [B]

"""Shared Bottom (Caruana, "Multitask Learning", Machine Learning 1997), one tower per scenario.

Hard parameter sharing read as multi-scenario learning: every scenario shares the embeddings
and a bottom MLP; each scenario owns a tower, and a sample passes only through its own tower.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.models.blocks import MLP
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import ModelParams, need_layers, register
from msctr.models.scenario import ScenarioMLP


@dataclass
class SharedBottomParams(ModelParams):
    bottom_hidden: list[int] = field(default_factory=lambda: [256, 128])
    tower_hidden: list[int] = field(default_factory=lambda: [64])
    dropout: float = 0.1
    batch_norm: bool = True  # in the shared bottom only; the towers see one scenario each

    def check(self, where: str) -> None:
        need_layers(where, "bottom_hidden", self.bottom_hidden, "[256, 128]")


@register(
    "shared_bottom", SharedBottomParams, paper="Shared Bottom (Caruana, Machine Learning 1997)"
)
class SharedBottom(nn.Module):
    def __init__(self, schema: Schema, p: SharedBottomParams):
        super().__init__()
        self.embedding = FeatureEmbedding(schema, p.embed_dim)
        in_dim = self.embedding.num_fields * p.embed_dim
        self.bottom = MLP(in_dim, p.bottom_hidden, p.dropout, p.batch_norm)
        # towers: weights [S, in, out] per layer, gathered by each sample's scenario
        self.towers = ScenarioMLP(
            schema.num_scenarios, self.bottom.out_dim, p.tower_hidden, out_dim=1, dropout=p.dropout
        )

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.embedding.fields(batch).flatten(1)  # [B, n*d]
        h = self.bottom(x)  # [B, h]
        return self.towers(h, batch.scenario).squeeze(-1)  # [B]

"""Wide & Deep (Cheng et al., DLRS 2016): a linear model over the features and hashed
cross-product features (wide), plus an MLP over the field embeddings (deep), trained jointly.

Shapes in comments: B batch, n fields, d embedding size, C cross-products.
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
from msctr.models.registry import ModelParams, need_fields, register

# cross-product hashing: the exact mixed-radix id of the tuple, reduced modulo a Mersenne
# prime to stay in int64, then multiplied by a prime modulo the bucket count
HASH_MODULUS = 2_147_483_647  # 2^31 - 1
HASH_MULTIPLIER = 1_000_000_007


@dataclass
class WideDeepParams(ModelParams):
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64])
    dropout: float = 0.1
    batch_norm: bool = True
    cross_fields: list[list[str]] = field(default_factory=list)
    cross_buckets: int = 100_000

    def check(self, where: str) -> None:
        if "wide" in self.drop and "deep" in self.drop:
            raise UserError(f"{where}.drop removes both parts of Wide & Deep; keep one")
        for i, names in enumerate(self.cross_fields):
            if len(names) < 2:
                raise UserError(
                    f"{where}.cross_fields.{i} needs at least two sparse fields, got {names}"
                )
            if len(set(names)) != len(names):
                raise UserError(f"{where}.cross_fields.{i} lists a field twice: {names}")

    def check_schema(self, schema: Schema, where: str) -> None:
        for names in self.cross_fields:
            need_fields(schema.sparse_names, names, f"{where}.cross_fields", "sparse field")


def cross_ids(sparse: torch.Tensor, columns: list[int], sizes: list[int], buckets: int):
    """Hashed cross-product ids of one tuple of sparse fields: [B, F] ids -> [B] in [0, buckets).

    h = mixed-radix id of (id_1, ..., id_k) mod (2^31 - 1), then (h * 1_000_000_007) mod
    buckets. Deterministic; every product stays below 2^63. Collision-free when the product of
    the vocabularies is at most `buckets` (multiplying by a prime not dividing `buckets` is a
    bijection modulo `buckets`). Vectorized over rows; the loop runs over the k fields.
    """
    h = torch.zeros(sparse.shape[0], dtype=torch.long, device=sparse.device)
    for c, size in zip(columns, sizes):
        h = (h * size + sparse[:, c]) % HASH_MODULUS
    return (h * HASH_MULTIPLIER) % buckets


@register(
    "wide_deep",
    WideDeepParams,
    paper="Wide & Deep (Cheng et al., DLRS 2016)",
    switches={
        "wide": "the wide part (linear weights and cross-product features)",
        "deep": "the deep part (embeddings and MLP)",
    },
)
class WideDeep(nn.Module):
    def __init__(self, schema: Schema, p: WideDeepParams):
        super().__init__()
        self.use_wide = "wide" not in p.drop
        self.use_deep = "deep" not in p.drop
        self.buckets = p.cross_buckets
        # column of each crossed field in batch.sparse
        self.crosses = [[schema.sparse_index(n) for n in names] for names in p.cross_fields]
        self.cross_sizes = [[schema.sparse[i].vocab_size for i in c] for c in self.crosses]
        if self.use_wide:  # w_wide: one weight per feature value, one per cross bucket, + b
            self.linear = FeatureEmbedding(schema, 1)
            self.bias = nn.Parameter(torch.zeros(1))
            if self.crosses:
                self.cross_table = nn.Embedding(len(self.crosses) * p.cross_buckets, 1)
                nn.init.normal_(self.cross_table.weight, std=1e-2)
                offsets = torch.arange(len(self.crosses)) * p.cross_buckets
                self.register_buffer("cross_offsets", offsets, persistent=False)
        if self.use_deep:
            self.embedding = FeatureEmbedding(schema, p.embed_dim)
            in_dim = self.embedding.num_fields * p.embed_dim
            self.mlp = MLP(in_dim, p.hidden, p.dropout, p.batch_norm, out_dim=1)

    def cross_ids(self, batch: Batch) -> torch.Tensor:  # [B, C], each in [0, cross_buckets)
        cols = [
            cross_ids(batch.sparse, c, sizes, self.buckets)
            for c, sizes in zip(self.crosses, self.cross_sizes)
        ]
        return torch.stack(cols, dim=1)

    def parts(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Each built part's contribution to the logit, [B] each; the logit is their sum."""
        out = {}
        if self.use_wide:
            wide = self.linear.fields(batch).sum(dim=(1, 2)) + self.bias  # [B]
            if self.crosses:
                ids = self.cross_ids(batch) + self.cross_offsets  # [B, C]
                wide = wide + self.cross_table(ids).sum(dim=(1, 2))
            out["wide"] = wide
        if self.use_deep:
            x = self.embedding.fields(batch).flatten(1)  # [B, n*d]
            out["deep"] = self.mlp(x).squeeze(-1)
        return out

    def forward(self, batch: Batch) -> torch.Tensor:
        return sum(self.parts(batch).values())  # [B]

"""The embedding layer every model shares: one table for all categorical fields, the scenario
as a field, dense fields as value x learned vector, behavior sequences mean-pooled.

Shapes in comments: B batch, F fields, d embedding size, L behaviors, K attributes.
"""

from __future__ import annotations

import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.models.kernels import _TouchedRows, _WeightedBag
from msctr.models.registry import need_fields


class FeatureEmbedding(nn.Module):
    """All categorical inputs in one table (per-field offsets), plus dense and sequence fields.

    `fields(batch)` gives one d-vector per input field, in this order:
    [scenario] + sparse fields + dense fields (value x learned vector) + [one masked-mean
    pooled vector per behavior sequence]. Sequence ids share their target field's rows,
    so a clicked video and a candidate video have the same embedding.
    """

    def __init__(
        self,
        schema: Schema,
        dim: int,
        include_scenario: bool = True,
        pool_sequences: bool = True,
        sparse_grad: bool = False,
    ):
        super().__init__()
        self.schema = schema
        self.dim = dim
        self.include_scenario = include_scenario
        self.pool_sequences = pool_sequences and bool(schema.sequences)
        sizes = [f.vocab_size for f in schema.sparse]
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.table = nn.Embedding(sum(sizes), dim, sparse=sparse_grad)
        self.scenario_table = nn.Embedding(schema.num_scenarios, dim)
        self.dense_vectors = nn.Parameter(torch.empty(len(schema.dense), dim))
        seq_offsets = [
            torch.tensor([offsets[schema.sparse_index(f.shares)] for f in seq.fields])
            for seq in schema.sequences
        ]
        for i, o in enumerate(seq_offsets):
            self.register_buffer(f"seq_offsets_{i}", o, persistent=False)
        nn.init.normal_(self.table.weight, std=1e-2)
        nn.init.normal_(self.scenario_table.weight, std=1e-2)
        nn.init.normal_(self.dense_vectors, std=1e-2)
        self.field_names = self.names(schema, include_scenario, pool_sequences)

    @staticmethod
    def names(schema: Schema, include_scenario: bool = True, pool_sequences: bool = True):
        """The fields `fields(batch)` gives, in order ("scenario" names the scenario); known
        before any table is built, so params can be checked against them."""
        return (
            (["scenario"] if include_scenario else [])
            + schema.sparse_names
            + schema.dense_names
            + ([s.name for s in schema.sequences] if pool_sequences else [])
        )

    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    def positions(self, names: list[str], key: str) -> list[int]:
        """Positions of named fields in `fields(batch)` ("scenario" names the scenario);
        `key` is the recipe parameter that listed them, for the error message of a model
        that did not check them in `check_schema`."""
        need_fields(self.field_names, names, f"model.params.{key}", once=True)
        return [self.field_names.index(n) for n in names]

    def scenario(self, batch: Batch) -> torch.Tensor:  # [B, d]
        return self.scenario_table(batch.scenario)

    def touched(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-sparse mode: (the distinct rows of `ids` [U, d], each id's position [...] in
        them). Gradients then flow into [U, d] and reach the table as one sparse tensor."""
        small = self.table.num_embeddings < 2**31  # int32 ids sort about 2x faster
        uniq, pos = torch.unique(ids.reshape(-1).int() if small else ids, return_inverse=True)
        return _TouchedRows.apply(self.table.weight, uniq.long()), pos.view(ids.shape)

    def row_sparse_gradients(self, on: bool) -> None:
        """Give the table row-sparse gradients (the touched rows only), or dense ones. The
        optimizer that steps the table must agree (LazyAdam for row-sparse), so the trainer's
        `make_optimizer` alone calls this; a model never does."""
        self.table.sparse = on

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:  # [...] -> [..., d]
        """Rows of the shared table. On CPU: index_select, whose backward is one index_add,
        about 2x cheaper than nn.Embedding's sort-based one, on the table itself or, with
        row-sparse gradients (`row_sparse_gradients`, for big tables), on the touched rows.
        On GPU the embedding module itself (it reads `table.sparse`)."""
        if ids.device.type != "cpu":
            return self.table(ids)
        rows, pos = self.touched(ids) if self.table.sparse else (self.table.weight, ids)
        return rows.index_select(0, pos.reshape(-1)).view(*ids.shape, self.dim)

    def sparse(self, batch: Batch) -> torch.Tensor:  # [B, F, d]
        return self.lookup(batch.sparse + self.offsets)

    def sequence(self, batch: Batch, i: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Behaviors of sequence i: ([B, L, d] mean over attribute embeddings, mask [B, L])."""
        ids = batch.seq_ids[i] + getattr(self, f"seq_offsets_{i}")  # [B, L, K]
        return self.lookup(ids).mean(dim=2), batch.seq_mask[i]

    def pooled_sequence(self, batch: Batch, i: int = 0) -> torch.Tensor:  # [B, d]
        """Masked mean over behaviors of the mean over attributes, as one weighted bag sum:
        sum_{l,k} mask_l / (K * n_valid) * E[id_lk]. The fused bag never builds the
        [B, L, K, d] tensor, which made this the costliest part of most models' steps."""
        ids = batch.seq_ids[i] + getattr(self, f"seq_offsets_{i}")  # [B, L, K]
        B, L, K = ids.shape
        m = batch.seq_mask[i].to(self.table.weight.dtype)  # [B, L]
        w = m / (K * m.sum(1, keepdim=True).clamp_min(1.0))  # [B, L]; empty rows -> zeros
        w = w.unsqueeze(-1).expand(B, L, K).reshape(B, L * K)
        # the custom backward only matters with gradients; without them the plain op below is
        # the same forward, and one a tracer can save (msctr export: TorchScript)
        if ids.device.type == "cpu" and torch.is_grad_enabled():
            rows, pos = self.touched(ids) if self.table.sparse else (self.table.weight, ids)
            return _WeightedBag.apply(rows, pos.reshape(B, L * K), w)
        return nn.functional.embedding_bag(
            ids.view(B, L * K), self.table.weight, per_sample_weights=w, mode="sum",
            sparse=self.table.sparse,
        )  # fmt: skip

    def fields(self, batch: Batch) -> torch.Tensor:  # [B, n_fields, d]
        parts = []
        if self.include_scenario:
            parts.append(self.scenario(batch).unsqueeze(1))
        parts.append(self.sparse(batch))
        if self.schema.dense:
            parts.append(batch.dense.unsqueeze(-1) * self.dense_vectors)
        if self.pool_sequences:
            parts.extend(
                self.pooled_sequence(batch, i).unsqueeze(1)
                for i in range(len(self.schema.sequences))
            )
        return torch.cat(parts, dim=1)

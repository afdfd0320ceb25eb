"""Prepared Parquet -> batches of column tensors.

In-memory mode reads a split once into column tensors and cuts batches by slicing a (seeded)
permutation; streamed mode reads row groups one at a time through a seeded shuffle buffer, for
data larger than memory. Both yield the same `Batch` type; neither touches rows one by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from msctr.data import schema as S
from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.io import reading


def _fixed_list(col: pa.ChunkedArray, width: int) -> np.ndarray:
    arr = col.combine_chunks()
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), width)


@dataclass
class Columns:
    """One split (or part of it) as column tensors; index i is one row."""

    scenario: torch.Tensor  # [N] int32
    sparse: torch.Tensor  # [N, F] int32
    dense: torch.Tensor  # [N, D] float32
    label: torch.Tensor  # [N] float32
    partition: torch.Tensor  # [N] int32
    seq_ids: tuple[torch.Tensor, ...]  # [N, L, K] int32
    seq_len: tuple[torch.Tensor, ...]  # [N] int32

    def __len__(self) -> int:
        return self.label.shape[0]

    @classmethod
    def from_arrow(cls, table: pa.Table, schema: Schema) -> Columns:
        n = table.num_rows

        def ints(name: str) -> np.ndarray:
            return table.column(name).to_numpy().astype(np.int32)

        sparse = np.empty((n, len(schema.sparse)), dtype=np.int32)
        for j, f in enumerate(schema.sparse):
            sparse[:, j] = ints(f.name)
        dense = np.empty((n, len(schema.dense)), dtype=np.float32)
        for j, f in enumerate(schema.dense):
            dense[:, j] = table.column(f.name).to_numpy()
        seq_ids, seq_len = [], []
        for seq in schema.sequences:
            ids = np.stack(
                [_fixed_list(table.column(f.column), seq.max_len) for f in seq.fields], -1
            )
            seq_ids.append(torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int32)))
            seq_len.append(torch.from_numpy(ints(seq.length_column)))
        label = table.column(S.LABEL).to_numpy()
        return cls(
            scenario=torch.from_numpy(ints(S.SCENARIO)),
            sparse=torch.from_numpy(sparse),
            dense=torch.from_numpy(dense),
            label=torch.from_numpy(label.astype(np.float32)),
            partition=torch.from_numpy(ints(S.PARTITION)),
            seq_ids=tuple(seq_ids),
            seq_len=tuple(seq_len),
        )

    def take(self, index: torch.Tensor | slice) -> Columns:
        """Rows `index`: a slice gives views (no copy); positions, one gather per column."""
        if isinstance(index, slice):

            def pick(t: torch.Tensor) -> torch.Tensor:
                return t[index]
        else:

            def pick(t: torch.Tensor) -> torch.Tensor:
                return t.index_select(0, index)

        return Columns(
            pick(self.scenario),
            pick(self.sparse),
            pick(self.dense),
            pick(self.label),
            pick(self.partition),
            tuple(map(pick, self.seq_ids)),
            tuple(map(pick, self.seq_len)),
        )

    @staticmethod
    def concat(parts: list[Columns]) -> Columns:
        def cat(name: str) -> torch.Tensor:
            return torch.cat([getattr(p, name) for p in parts])

        seqs = range(len(parts[0].seq_ids))
        return Columns(
            cat("scenario"),
            cat("sparse"),
            cat("dense"),
            cat("label"),
            cat("partition"),
            tuple(torch.cat([p.seq_ids[i] for p in parts]) for i in seqs),
            tuple(torch.cat([p.seq_len[i] for p in parts]) for i in seqs),
        )

    def batch(self, index: torch.Tensor | slice) -> Batch:
        rows = self.take(index)
        return Batch(
            scenario=rows.scenario.long(),
            sparse=rows.sparse.long(),
            dense=rows.dense,
            label=rows.label,
            partition=rows.partition.long(),
            seq_ids=tuple(t.long() for t in rows.seq_ids),
            seq_mask=tuple(
                torch.arange(t.shape[1]) < n.unsqueeze(1)
                for t, n in zip(rows.seq_ids, rows.seq_len)
            ),
        )

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        part: tuple[int, int] = (0, 1),
    ) -> Iterator[Batch]:
        """Batches of `batch_size` rows (the last one shorter), in a seeded order when
        shuffled. `part=(r, n)`: only share r of n of each batch (`share`), the same order and
        batches for every r, so n processes together see each batch, each row once."""
        for rows in self.batch_rows(batch_size, shuffle, seed, epoch, part):
            yield self.batch(rows)

    def batch_rows(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        part: tuple[int, int] = (0, 1),
    ) -> Iterator[torch.Tensor | slice]:
        """The rows of each of `batches`' batches: positions when shuffled, else a slice."""
        n = len(self)
        if shuffle:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g)
            for start in range(0, n, batch_size):
                lo, hi = share(start, min(start + batch_size, n), part)
                yield order[lo:hi]
        else:
            for start in range(0, n, batch_size):
                yield slice(*share(start, min(start + batch_size, n), part))


def share(start: int, end: int, part: tuple[int, int]) -> tuple[int, int]:
    """Share r of n of the batch of rows [start, end): contiguous, sizes within one of each
    other, disjoint, together the whole batch. A share that would be empty (a batch of fewer
    than n rows) is the batch's first row instead, a stand-in the trainer gives weight 0."""
    r, parts = part
    rows = end - start
    lo, hi = start + rows * r // parts, start + rows * (r + 1) // parts
    return (lo, hi) if hi > lo else (start, start + 1)


REPREPARE = "re-run `msctr prepare` for this dataset"


def split_path(folder: str | Path, split: str) -> Path:
    path = Path(folder) / f"{split}.parquet"
    if not path.is_file():
        raise UserError(
            f"prepared dataset '{folder}' has no {split}.parquet; re-run `msctr prepare`"
        )
    return path


def model_columns(schema: Schema) -> list[str]:
    cols = [S.LABEL, S.SCENARIO, S.PARTITION, *schema.sparse_names, *schema.dense_names]
    for seq in schema.sequences:
        cols += [seq.length_column, *(f.column for f in seq.fields)]
    return cols


def load_columns(
    folder: str | Path, split: str, schema: Schema, limit: int | None = None
) -> Columns:
    """Read a whole split into memory as column tensors (first `limit` rows if given)."""
    path = split_path(folder, split)
    with reading(path, REPREPARE):
        pf = pq.ParquetFile(path)
        missing = [c for c in model_columns(schema) if c not in pf.schema_arrow.names]
        if missing:
            raise UserError(
                f"'{path}' lacks column(s) {', '.join(missing)} that its schema.json names; "
                f"{REPREPARE}"
            )
        if limit is None:
            table = pf.read(columns=model_columns(schema))
        else:
            table = pa.Table.from_batches(
                [next(pf.iter_batches(batch_size=limit, columns=model_columns(schema)))]
            )
    return Columns.from_arrow(table, schema)


def load_eval_columns(folder: str | Path, split: str, schema: Schema, limit: int | None = None):
    """The columns the evaluator needs beside the predictions (label, scenario, groups, truth)."""
    import polars as pl

    wanted = [S.LABEL, S.SCENARIO, S.PARTITION]
    wanted += [
        c
        for c, has in (
            (S.USER, schema.has_user),
            (S.SESSION, schema.has_session),
            (S.TRUE_PROB, schema.has_true_prob),
        )
        if has
    ]
    path = split_path(folder, split)
    frame = pl.scan_parquet(path).select(wanted)
    if limit is not None:
        frame = frame.head(limit)
    with reading(path, REPREPARE):
        return frame.collect()


def stream_batches(
    folder: str | Path,
    split: str,
    schema: Schema,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    buffer_rows: int = 1_000_000,
    part: tuple[int, int] = (0, 1),
) -> Iterator[Batch]:
    """Batches from row groups read one at a time; with shuffle, row-group order is permuted and
    rows are mixed in a buffer of about `buffer_rows` rows. Memory stays bounded by the buffer.

    `part=(r, n)`: share r of n of each batch (`share`). Every part reads every row group and
    draws the same permutations, so the batches are those of one process, split n ways."""
    path = split_path(folder, split)
    with reading(path, REPREPARE):
        pf = pq.ParquetFile(path)
    cols = model_columns(schema)
    groups = np.arange(pf.num_row_groups)
    rng = np.random.default_rng(seed * 1_000_003 + epoch)
    if shuffle:
        rng.shuffle(groups)
    buffer: Columns | None = None

    def emit(data: Columns, final: bool) -> Iterator[Batch]:
        if shuffle:
            data = data.take(torch.from_numpy(rng.permutation(len(data))))
        # keep the remainder in the buffer so batches stay full until the very end
        usable = len(data) if final else (len(data) // batch_size) * batch_size
        for start in range(0, usable, batch_size):
            yield data.batch(slice(*share(start, min(start + batch_size, usable), part)))
        return data.take(slice(usable, len(data)))

    for g in groups:
        with reading(path, REPREPARE):  # a damaged row group surfaces only when read
            table = pf.read_row_group(int(g), columns=cols)
        group = Columns.from_arrow(table, schema)
        buffer = group if buffer is None else Columns.concat([buffer, group])
        if len(buffer) >= buffer_rows:
            buffer = yield from emit(buffer, final=False)
    if buffer is not None and len(buffer):
        yield from emit(buffer, final=True)

"""Split a `SourceTable`, fit encoders on its training rows only, and write the prepared dataset.

Output folder: train/val/test.parquet (row groups), encoders.parquet, schema.json. The folder is
built under a temporary name and renamed into place at the end, so a failed or killed prepare
never leaves a dataset that looks complete. Same input and seed -> byte-identical files.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from msctr.data import schema as S
from msctr.data.schema import DenseField, Schema, Sequence, SequenceField, SparseField
from msctr.data.sources.base import SourceTable
from msctr.errors import UserError

ROW = "__row"
SPLIT = "__split"
ROW_GROUP_SIZE = 100_000


@dataclass
class Vocabulary:
    """Raw value -> id, ids 1..V by descending training frequency (ties by value); 0 = OOV."""

    field: str
    values: pl.Series

    @classmethod
    def fit(cls, train: pl.LazyFrame, column: str, min_count: int) -> Vocabulary:
        counts = (
            train.group_by(column)
            .len()
            .filter(pl.col("len") >= min_count)
            .sort(["len", column], descending=[True, False], nulls_last=True)
            .collect()
        )
        return cls(column, counts.get_column(column))

    @property
    def size(self) -> int:
        return len(self.values) + 1

    def encode(self, expr: pl.Expr) -> pl.Expr:
        ids = pl.Series(range(1, len(self.values) + 1), dtype=pl.Int32)
        coded = expr.replace_strict(
            self.values.drop_nulls(),
            ids.filter(self.values.is_not_null()),
            default=0,
            return_dtype=pl.Int32,
        )
        null_pos = self.values.is_null().arg_true()
        if len(null_pos):  # missing is a value of its own when it occurs in training
            return (
                pl.when(expr.is_null())
                .then(pl.lit(int(null_pos[0]) + 1, pl.Int32))
                .otherwise(coded)
            )
        return coded.fill_null(0)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "field": pl.Series([self.field] * len(self.values), dtype=pl.String),
                "value": self.values.cast(pl.String),
                "id": pl.Series(range(1, len(self.values) + 1), dtype=pl.Int32),
            }
        )


def _check_columns(table: SourceTable, columns: set[str]) -> None:
    f = table.fields
    needed = {f.label, f.scenario, *f.sparse, *f.dense, *f.partition}
    needed |= {c for seq in f.sequences for c in seq.columns}
    needed |= {c for c in (f.user, f.session, f.true_prob, f.order, table.split_column) if c}
    missing = sorted(needed - columns)
    if missing:
        raise UserError(
            f"{table.name}: missing column(s) {', '.join(missing)}; "
            f"the table has: {', '.join(sorted(columns))}"
        )
    for seq in f.sequences:
        for col, target in seq.columns.items():
            if target not in f.sparse:
                raise UserError(
                    f"sequence column '{col}' shares '{target}', which is not a sparse field"
                )


def _check_labels(frame: pl.LazyFrame, label: str) -> None:
    bad = (
        frame.select(pl.col(label))
        .filter(pl.col(label).is_null() | ~pl.col(label).is_in([0, 1]))
        .select(pl.len(), pl.col(label).first())
        .collect()
    )
    if bad.item(0, 0):
        raise UserError(
            f"label column '{label}' has {bad.item(0, 0)} value(s) outside {{0, 1}} "
            f"(e.g. {bad.item(0, 1)!r}); map the labels to 0/1 before preparing"
        )


def _assign_split(table: SourceTable, frame: pl.LazyFrame, n: int, seed: int) -> pl.LazyFrame:
    ftrain, fval, _ = table.split_fractions
    if table.split == "given":
        return frame.with_columns(pl.col(table.split_column).cast(pl.String).alias(SPLIT))
    if table.split == "sequential":
        position = pl.col(ROW)
    else:  # seeded random: a reproducible permutation of row positions
        position = pl.col(ROW).shuffle(seed=seed)
    n_train, n_trval = int(n * ftrain), int(n * (ftrain + fval))
    return frame.with_columns(
        pl.when(position < n_train)
        .then(pl.lit("train"))
        .when(position < n_trval)
        .then(pl.lit("val"))
        .otherwise(pl.lit("test"))
        .alias(SPLIT)
    )


def prepare(
    table: SourceTable,
    out: str | Path,
    seed: int = 0,
    min_count: int = 1,
    row_group_size: int = ROW_GROUP_SIZE,
) -> Schema:
    f = table.fields
    frame = table.frame
    columns = set(frame.collect_schema().names())
    _check_columns(table, columns)
    _check_labels(frame, f.label)

    if f.order:
        frame = frame.sort(f.order, maintain_order=True)
    frame = frame.with_row_index(ROW)
    n = frame.select(pl.len()).collect().item()
    if n == 0:
        raise UserError(f"{table.name}: the table has no rows")
    frame = _assign_split(table, frame, n, seed)
    train = frame.filter(pl.col(SPLIT) == "train")

    # -- encoders, fit on the training rows only ----------------------------------------------
    scen_values = train.select(pl.col(f.scenario).unique().sort()).collect().to_series()
    if len(scen_values) == 0:
        raise UserError(f"{table.name}: the training split is empty; give more rows")
    unseen = (
        frame.filter(~pl.col(f.scenario).is_in(scen_values.implode()))
        .select(pl.col(f.scenario).unique())
        .collect()
        .to_series()
        .to_list()
    )
    if unseen:
        raise UserError(
            f"scenario value(s) {unseen} occur in val/test but not in the training rows; "
            "filter them out or use a split that puts them in training"
        )
    names = table.scenario_names or {}
    scenario_names = [str(names.get(v, v)) for v in scen_values.to_list()]
    vocabs = {c: Vocabulary.fit(train, c, min_count) for c in f.sparse}
    dense_stats = (
        train.select(
            [pl.col(c).cast(pl.Float64).mean().alias(f"{c}__m") for c in f.dense]
            + [pl.col(c).cast(pl.Float64).std().alias(f"{c}__s") for c in f.dense]
        ).collect()
        if f.dense
        else None
    )
    dense_fields = []
    for c in f.dense:
        m, s = dense_stats[f"{c}__m"][0], dense_stats[f"{c}__s"][0]
        if m is None:
            raise UserError(f"dense field '{c}' has no values in the training rows")
        dense_fields.append(DenseField(c, float(m), float(s) if s and s > 0 else 1.0))

    # -- transform every split with the fitted encoders ---------------------------------------
    exprs: list[pl.Expr] = [
        pl.col(f.label).cast(pl.Int8).alias(S.LABEL),
        pl.col(f.scenario)
        .replace_strict(
            scen_values, pl.Series(range(len(scen_values)), dtype=pl.Int32), return_dtype=pl.Int32
        )
        .alias(S.SCENARIO),
    ]
    exprs += [vocabs[c].encode(pl.col(c)).alias(c) for c in f.sparse]
    exprs += [
        ((pl.col(c).cast(pl.Float64) - d.mean) / d.std)
        .fill_null(0.0)
        .fill_nan(0.0)
        .cast(pl.Float32)
        .alias(c)
        for c, d in zip(f.dense, dense_fields)
    ]
    sequences = []
    for seq in f.sequences:
        L = seq.max_len
        pad = pl.lit([0] * L, dtype=pl.List(pl.Int32))
        first = next(iter(seq.columns))
        length = f"{seq.name}_len"
        exprs.append(
            pl.col(first).list.head(L).list.len().fill_null(0).cast(pl.Int32).alias(length)
        )
        for col, target in seq.columns.items():
            coded = pl.col(col).list.head(L).list.eval(vocabs[target].encode(pl.element()))
            exprs.append(
                pl.concat_list([coded.fill_null(pl.lit([], dtype=pl.List(pl.Int32))), pad])
                .list.head(L)
                .list.to_array(L)
                .alias(col)
            )
        sequences.append(
            Sequence(seq.name, L, length, [SequenceField(c, t) for c, t in seq.columns.items()])
        )
    if f.user:
        exprs.append(pl.col(f.user).hash(seed=0).reinterpret(signed=True).alias(S.USER))
    if f.session:
        exprs.append(pl.col(f.session).hash(seed=0).reinterpret(signed=True).alias(S.SESSION))
    if f.true_prob:
        exprs.append(pl.col(f.true_prob).cast(pl.Float64).alias(S.TRUE_PROB))
    encoded = frame.select([pl.col(SPLIT), pl.col(ROW), *exprs])

    # partitions (HMDN's multi-distribution groups): the scenario x partition-field combinations
    # seen in training, densely numbered; unseen combinations map to 0
    part_fields = [S.SCENARIO] + [c for c in f.partition if c != f.scenario]
    key = pl.concat_str([pl.col(c).cast(pl.String) for c in part_fields], separator="|")
    part_vocab = Vocabulary.fit(
        encoded.filter(pl.col(SPLIT) == "train").select(key.alias("_key")), "_key", 1
    )
    encoded = encoded.with_columns(part_vocab.encode(key).alias(S.PARTITION))

    # -- write everything under a temporary folder, then move it into place --------------------
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows, counts, clicks = {}, {}, {}
        for split in S.SPLITS:
            part = encoded.filter(pl.col(SPLIT) == split).drop(SPLIT, ROW)
            path = tmp / f"{split}.parquet"
            part.sink_parquet(path, row_group_size=row_group_size, statistics=False)
            stats = (
                pl.scan_parquet(path)
                .group_by(S.SCENARIO)
                .agg(pl.len().alias("n"), pl.col(S.LABEL).cast(pl.Int64).sum().alias("c"))
                .collect()
            )
            n_s = [0] * len(scen_values)
            c_s = [0] * len(scen_values)
            for s, cnt, clk in stats.iter_rows():
                n_s[s], c_s[s] = cnt, clk
            rows[split], counts[split], clicks[split] = sum(n_s), n_s, c_s
            if rows[split] == 0:
                raise UserError(f"the {split} split is empty; give more rows or other fractions")
        pl.concat([v.frame() for v in vocabs.values()] + [part_vocab.frame()]).write_parquet(
            tmp / "encoders.parquet", statistics=False
        )
        digest = hashlib.md5()
        for split in S.SPLITS:
            digest.update((tmp / f"{split}.parquet").read_bytes())
        schema = Schema(
            source=table.name,
            num_scenarios=len(scen_values),
            scenario_names=scenario_names,
            sparse=[SparseField(c, vocabs[c].size) for c in f.sparse],
            dense=dense_fields,
            sequences=sequences,
            partition_fields=part_fields,
            num_partitions=part_vocab.size,
            has_user=f.user is not None,
            has_session=f.session is not None,
            has_true_prob=f.true_prob is not None,
            rows=rows,
            scenario_counts=counts,
            scenario_clicks=clicks,
            info={
                **table.info,
                "split": table.split,
                "split_fractions": list(table.split_fractions),
                "seed": seed,
                "min_count": min_count,
                "label": f.label,
                "scenario_column": f.scenario,
                "user_column": f.user,
                "session_column": f.session,
                "encoders": "encoders.parquet",
                "prepared_md5": digest.hexdigest(),
            },
        )
        schema.save(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return schema

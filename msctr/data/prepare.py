"""Split a `SourceTable`, fit encoders on its training rows only, and write the prepared dataset.

Output folder: train/val/test.parquet (row groups), encoders.parquet, schema.json. The folder is
built under a temporary name and renamed into place at the end, so a failed or killed prepare
never leaves a dataset that looks complete, and an existing --out is replaced only when it is a
dataset msctr prepared (or the user says --overwrite). Same input and seed -> byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from msctr.data import schema as S
from msctr.data.schema import DenseField, Schema, Sequence, SequenceField, SparseField
from msctr.data.sources.base import FieldMap, SequenceSpec, SourceTable
from msctr.errors import UserError
from msctr.io import (
    atomic_dir,
    os_errors,
    reading,
    scratch_dir,
    sweep_stale,
)
from msctr.paths import refuse_protected

ROW = "__row"
SPLIT = "__split"
POSITION = "__position"
ROW_GROUP_SIZE = 100_000
INT_DTYPES = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)
# integer vocabularies spanning fewer raw values than this are looked up in a dense table
DENSE_LOOKUP_LIMIT = 1 << 25
PREPARED_FILES = frozenset(
    {"train.parquet", "val.parquet", "test.parquet", "encoders.parquet", "schema.json"}
)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def is_dataset(folder: Path) -> bool:
    """Whether `folder` holds a schema.json that msctr wrote (it has "version" and "source")."""
    try:
        d = json.loads((folder / "schema.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "version" in d and "source" in d


def check_out(
    out: str | Path, overwrite: bool = False, inputs: tuple[Path | None, ...] = ()
) -> Path:
    """Refuse an output folder whose replacement would lose something of the user's; sweep the
    temporary folders that killed earlier runs left beside it. Returns the folder to write.

    Replaced without asking: nothing there, an empty folder, or a dataset msctr prepared and
    nothing else. With `overwrite`: anything, except the current folder, home, the `inputs`
    being read, and folders holding any of them (one typo there would delete far too much).
    """
    given = str(out)
    out = Path(os.path.abspath(out))
    hint = "give a new folder for the dataset, e.g. --out data/mine"
    refuse_protected(out, f"--out '{given}'", hint, inputs)
    sweep_stale(out.parent, out.name)
    sweep_stale(out.parent, f"{out.name}.work")
    if overwrite or not os.path.lexists(out):
        return out
    again = "or add --overwrite to replace"
    if out.is_symlink():
        raise UserError(f"--out '{given}' is a symbolic link; {hint}, {again} the link")
    if not out.is_dir():
        raise UserError(f"--out '{given}' is a file; {hint}, {again} the file")
    with os_errors("prepare"):
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    extra = [e for e in entries if e not in PREPARED_FILES]
    if extra:
        raise UserError(
            f"--out '{given}' holds files that are not part of a prepared dataset "
            f"(e.g. '{extra[0]}'); {hint}, {again} everything in it"
        )
    if entries and not is_dataset(out):
        raise UserError(
            f"--out '{given}' holds a schema.json that msctr did not write; {hint}, {again} it"
        )
    return out


def check_min_count(min_count: int) -> None:
    """The vocabulary threshold of `prepare --min-count`: a whole number, at least 1."""
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise UserError(
            f"--min-count must be a whole number of at least 1, got {min_count!r}; "
            "1 keeps every value seen in training"
        )


class _Lookup:
    """Raw values -> vocabulary ids for a whole batch at once (what `Vocabulary.encode` computes).

    Integer values go through a NumPy table (dense when the values span a small range, a sorted
    search otherwise): hash lookups of hundreds of millions of sequence elements would dominate
    the preparation time of a real dataset. Other types use Polars' replace_strict.
    """

    def __init__(self, values: pl.Series) -> None:
        ids = np.arange(1, len(values) + 1, dtype=np.int32)
        present = values.is_not_null().to_numpy()
        self.null_id = int(ids[~present][0]) if (~present).any() else 0
        self.values = values.filter(values.is_not_null())
        self.ids = ids[present]
        self.integer = values.dtype in INT_DTYPES
        self.table: np.ndarray | None = None
        if self.integer and len(self.values):
            v = self.values.cast(pl.Int64).to_numpy()
            self.lo = int(v.min())
            span = int(v.max()) - self.lo + 1
            if span <= DENSE_LOOKUP_LIMIT:
                self.table = np.zeros(span, np.int32)
                self.table[v - self.lo] = self.ids
            else:
                order = np.argsort(v, kind="stable")
                self.sorted, self.sorted_ids = v[order], self.ids[order]

    def _integers(self, x: np.ndarray) -> np.ndarray:
        if self.table is not None:
            idx = x - self.lo
            inside = (idx >= 0) & (idx < len(self.table))
            if inside.all():
                return self.table[idx]
            out = self.table[np.where(inside, idx, 0)]
            out[~inside] = 0
            return out
        pos = np.minimum(np.searchsorted(self.sorted, x), len(self.sorted) - 1)
        return np.where(self.sorted[pos] == x, self.sorted_ids[pos], 0).astype(np.int32)

    def __call__(self, s: pl.Series) -> np.ndarray:
        nulls = s.null_count()
        if not len(self.values):
            out = np.zeros(len(s), np.int32)
        elif self.integer and s.dtype in INT_DTYPES:
            out = self._integers((s.fill_null(0) if nulls else s).cast(pl.Int64).to_numpy())
        else:
            coded = s.replace_strict(
                self.values, pl.Series(self.ids), default=0, return_dtype=pl.Int32
            )
            out = coded.fill_null(0).to_numpy().astype(np.int32, copy=False)
        if nulls:
            out = out.copy()
            out[s.is_null().to_numpy()] = self.null_id
        return out


@dataclass
class Vocabulary:
    """Raw value -> id, ids 1..V by descending training frequency (ties by value); 0 = OOV:
    values never seen in training, and those seen there fewer than `min_count` times (one
    shared id, as the Ali-CCP processing the papers use gives them)."""

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

    @cached_property
    def lookup(self) -> _Lookup:
        return _Lookup(self.values)

    def encode(self, expr: pl.Expr) -> pl.Expr:
        """Raw values -> ids (0 = unseen; a missing value seen in training has its own id).

        Computed batch by batch in a UDF: a `replace_strict` with the vocabulary inside the plan
        made Polars' streaming sinks hold memory in proportion to the split, not the batch.
        """
        look = self.lookup

        def codes(s: pl.Series) -> pl.Series:
            return pl.Series(s.name, look(s), dtype=pl.Int32)

        return expr.map_batches(codes, return_dtype=pl.Int32, is_elementwise=True)

    def encode_sequence(self, column: str, max_len: int) -> pl.Expr:
        """A list column -> fixed-size lists of ids: the first `max_len` elements, 0-padded."""
        look = self.lookup
        dtype = pl.Array(pl.Int32, max_len)

        def codes(s: pl.Series) -> pl.Series:
            heads = s.list.head(max_len)
            lens = heads.list.len().fill_null(0).cast(pl.Int64).to_numpy()
            flat = pl.Series(heads.to_arrow().flatten())
            out = np.zeros((len(s), max_len), np.int32)
            if len(flat):  # row-major boolean mask: fills each row's first lens[i] slots in order
                out[np.arange(max_len)[None, :] < lens[:, None]] = look(flat)
            return pl.Series(s.name, out, dtype=dtype)

        return pl.col(column).map_batches(codes, return_dtype=dtype, is_elementwise=True)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "field": pl.Series([self.field] * len(self.values), dtype=pl.String),
                "value": self.values.cast(pl.String),
                "id": pl.Series(range(1, len(self.values) + 1), dtype=pl.Int32),
            }
        )


def gathered(index: str, table: pl.DataFrame, columns: list[str]) -> list[pl.Expr]:
    """Columns of an in-memory `table` taken at the row numbers in column `index` (null -> null).

    For sources whose list columns come from a smaller table (one behavior window per click,
    one history per request): the source is written to disk with the index only, and the lists
    are gathered batch by batch as prepare streams the rows, so the per-row lists never all sit
    in memory, and passes that do not read them (the encoder fits) skip the gather entirely.
    """
    exprs = []
    for c in columns:
        values = table.get_column(c).rechunk()

        def take(idx: pl.Series, values: pl.Series = values) -> pl.Series:
            return values.gather(idx)

        exprs.append(
            pl.col(index).map_batches(take, return_dtype=values.dtype, is_elementwise=True).alias(c)
        )
    return exprs


def _first_repeat(names: list[str]) -> str | None:
    seen: set[str] = set()
    for c in names:
        if c in seen:
            return c
        seen.add(c)
    return None


def _check_roles(f: FieldMap) -> None:
    """One column, one role: a repeat would be silently dropped, the label as an input would
    leak the answer, and a field named like a prepared column would overwrite it."""
    for kind, names in (("sparse", f.sparse), ("dense", f.dense), ("partition", f.partition)):
        if (c := _first_repeat(names)) is not None:
            raise UserError(f"column '{c}' is listed twice among the {kind} fields; list it once")
    if both := [c for c in f.sparse if c in f.dense]:
        raise UserError(
            f"column '{both[0]}' is given both as a sparse and as a dense field; give it one role"
        )
    seq_cols = [c for seq in f.sequences for c in seq.columns]
    roles = {
        "the scenario column": [f.scenario],
        "a sparse field": f.sparse,
        "a dense field": f.dense,
        "a sequence column": seq_cols,
        "the user column": [f.user],
        "the session column": [f.session],
        "the order column": [f.order],
        "a partition field": f.partition,
        "the true-probability column": [f.true_prob],
    }
    for role, names in roles.items():
        if f.label in names:
            raise UserError(
                f"the label column '{f.label}' is also given as {role}; the label can have no "
                "other role, choose another column"
            )
    reserved = {S.LABEL, S.SCENARIO, S.USER, S.SESSION, S.PARTITION, S.TRUE_PROB}
    reserved |= {f"{seq.name}_len" for seq in f.sequences}
    for c in [*f.sparse, *f.dense, *seq_cols]:
        if c in reserved:
            raise UserError(
                f"field '{c}' has the name of a column msctr writes itself; rename it in the table"
            )


def _check_columns(table: SourceTable, columns: set[str]) -> None:
    f = table.fields
    _check_roles(f)
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
        for col, query in seq.queries.items():
            if col not in seq.columns or query not in f.sparse:
                raise UserError(
                    f"sequence '{seq.name}': column '{col}' is queried by '{query}'; give a "
                    "column of the sequence and a sparse field"
                )


def _label_codes(label: str, dtype: pl.DataType) -> pl.Expr:
    """The label as int8 0/1: integers 0/1, floats 0.0/1.0, booleans, and the texts 0/1 and
    true/false are the ordinary encodings; anything else (2, 0.5, NaN, "yes", null) -> null."""
    col = pl.col(label)
    if dtype == pl.Boolean:
        return col.cast(pl.Int8)
    if dtype.is_numeric():  # no cast: 300 or 1e10 would overflow int8 before the check
        return pl.when(col == 1).then(pl.lit(1, pl.Int8)).when(col == 0).then(pl.lit(0, pl.Int8))
    if dtype == pl.String:
        text = col.str.strip_chars().str.to_lowercase()
        codes = {"0": 0, "1": 1, "false": 0, "true": 1}
        return text.replace_strict(codes, default=None, return_dtype=pl.Int8)
    return pl.lit(None, dtype=pl.Int8)


def _check_labels(frame: pl.LazyFrame, label: str, codes: pl.Expr) -> None:
    bad = (
        frame.select(pl.col(label), codes.alias("__code"))
        .filter(pl.col("__code").is_null())
        .select(pl.len(), pl.col(label).first())
        .collect()
    )
    if bad.item(0, 0):
        raise UserError(
            f"label column '{label}' has {bad.item(0, 0)} value(s) outside {{0, 1}} "
            f"(e.g. {bad.item(0, 1)!r}); map the labels to 0/1 before preparing"
        )


def _dense_values(frame: pl.LazyFrame, dense: list[str], types: pl.Schema) -> dict[str, pl.Expr]:
    """Each dense column as float64 (null and NaN = missing); text that is not a number, or a
    type that is not numeric, is refused with the column and an example."""
    out = {}
    for c in dense:
        dtype = types[c]
        if dtype.is_numeric() or dtype in (pl.Boolean, pl.Null):
            out[c] = pl.col(c).cast(pl.Float64)
        elif dtype == pl.String:
            out[c] = pl.col(c).str.strip_chars().cast(pl.Float64, strict=False)
        else:
            raise UserError(f"dense column '{c}' has type {dtype}, not numbers; give it as sparse")
    texts = [c for c in dense if types[c] == pl.String]
    if texts:
        bad = {c: pl.col(c).is_not_null() & out[c].is_null() for c in texts}
        found = frame.select(
            [bad[c].sum().alias(f"{c}__n") for c in texts]
            + [pl.col(c).filter(bad[c]).first().alias(f"{c}__e") for c in texts]
        ).collect()
        for c in texts:
            if n := found.item(0, f"{c}__n"):
                raise UserError(
                    f"dense column '{c}' has {n} value(s) that are not numbers "
                    f"(e.g. {found.item(0, f'{c}__e')!r}); fix them, or give the column as sparse"
                )
    return out


def _dense_fields(frame: pl.LazyFrame, values: dict[str, pl.Expr]) -> list[DenseField]:
    """Mean and std of each dense column over its finite training values (NaN and null are
    missing); an infinite value in any split is refused: it is almost always a bug upstream,
    and it would turn the whole column into +-inf."""
    infinite = (
        frame.group_by(SPLIT)
        .agg(x.is_infinite().sum().alias(c) for c, x in values.items())
        .collect()
    )
    # the statistics in a select over the training rows, as before NaN was handled: the same
    # summation, so datasets without NaN keep bit-identical schema.json values
    finite = [x.filter(x.is_finite()) for x in values.values()]
    stats = (
        frame.filter(pl.col(SPLIT) == "train")
        .select(
            [x.mean().alias(f"{c}__m") for c, x in zip(values, finite, strict=True)]
            + [x.std().alias(f"{c}__s") for c, x in zip(values, finite, strict=True)]
        )
        .collect()
    )
    per_split = {row[SPLIT]: row for row in infinite.iter_rows(named=True)}
    fields = []
    for c in values:
        infs = [(sp, per_split[sp][c]) for sp in S.SPLITS if sp in per_split]
        if where := [f"{n} in {sp}" for sp, n in infs if n]:
            raise UserError(
                f"dense column '{c}' has infinite values ({', '.join(where)}); fix the source, "
                "or write them as empty/NaN to have them treated as missing"
            )
        m, s = stats.item(0, f"{c}__m"), stats.item(0, f"{c}__s")
        if m is None:
            raise UserError(f"dense field '{c}' has no values in the training rows")
        s = s if s is not None and s > 0 else 1.0
        if not (math.isfinite(m) and math.isfinite(s)):
            raise UserError(
                f"dense column '{c}' has values too large to standardize (mean {m}, std {s}); "
                "rescale it (e.g. log) before preparing"
            )
        fields.append(DenseField(c, float(m), float(s)))
    return fields


def _assign_split(table: SourceTable, frame: pl.LazyFrame, n: int, seed: int) -> pl.LazyFrame:
    ftrain, fval, _ = table.split_fractions
    if table.split == "given":
        return frame.with_columns(pl.col(table.split_column).cast(pl.String).alias(SPLIT))
    if table.split == "sequential":
        position = pl.col(ROW)
    else:  # seeded random: a reproducible permutation of row positions, joined on the row
        # index (a shuffle inside the plan would force the whole frame into memory)
        perm = pl.select(pl.int_range(n, dtype=pl.UInt32).shuffle(seed=seed).alias(POSITION))
        frame = frame.join(
            perm.with_row_index(ROW).lazy(), on=ROW, how="left", maintain_order="left"
        )
        position = pl.col(POSITION)
    n_train, n_trval = int(n * ftrain), int(n * (ftrain + fval))
    return frame.with_columns(
        pl.when(position < n_train)
        .then(pl.lit("train"))
        .when(position < n_trval)
        .then(pl.lit("val"))
        .otherwise(pl.lit("test"))
        .alias(SPLIT)
    ).drop(POSITION, strict=False)


def split_rows(table: SourceTable, split: str, seed: int = 0) -> pl.LazyFrame:
    """The raw rows `prepare(table, seed=seed)` puts in `split`, in the order of its
    <split>.parquet: what `msctr predict` on a split's raw rows reads (its exactness test)."""
    if split not in S.SPLITS:
        raise UserError(f"split must be one of {', '.join(S.SPLITS)}, got {split!r}")
    frame = table.frame
    if table.fields.order:
        frame = frame.sort(table.fields.order, maintain_order=True)
    n = frame.select(pl.len()).collect().item()
    frame = _assign_split(table, frame.with_row_index(ROW), n, seed)
    return frame.filter(pl.col(SPLIT) == split).drop(SPLIT, ROW)


def prepare(
    table: SourceTable,
    out: str | Path,
    seed: int = 0,
    min_count: int = 1,
    row_group_size: int = ROW_GROUP_SIZE,
    materialize: bool = False,
    overwrite: bool = False,
) -> Schema:
    """Split `table`, fit the encoders on its training rows, write the prepared dataset to `out`.

    `out` must be new, empty or a dataset msctr prepared, unless `overwrite` (see `check_out`).
    With `materialize`, the source plan runs once into a temporary Parquet file next to `out`
    and every later pass (label check, one encoder fit per field, the split files) reads columns
    from it: for sources whose plan is expensive to re-run (CSV scans, joins, parsing), and the
    way to keep memory bounded, since each pass then streams from disk.
    """
    check_min_count(min_count)
    out = check_out(out, overwrite)
    frame = table.frame
    _check_columns(table, set(frame.collect_schema().names()))
    with os_errors("prepare"), atomic_dir(out) as tmp:
        if not materialize:
            return _prepare(table, frame, tmp, seed, min_count, row_group_size)
        with scratch_dir(out) as work:
            source = work / "source.parquet"
            what = table.info.get("path", table.name)
            with reading(what, "check that the file is complete and well-formed"):
                with os_errors("prepare"):
                    frame.sink_parquet(
                        source, row_group_size=row_group_size, statistics=False, compression="lz4"
                    )
            return _prepare(table, pl.scan_parquet(source), tmp, seed, min_count, row_group_size)


@dataclass
class Encoders:
    """Everything fitted on the training rows: scenario ids, vocabularies, dense statistics."""

    scenario_values: pl.Series  # raw scenario values in id order
    scenario_names: list[str]
    vocabs: dict[str, Vocabulary]
    dense: list[DenseField]


def _prepare(
    table: SourceTable,
    frame: pl.LazyFrame,
    tmp: Path,
    seed: int,
    min_count: int,
    row_group_size: int,
) -> Schema:
    """Everything after the source is readable; writes the dataset's files into `tmp`."""
    f = table.fields
    raw_types = input_types(f, frame.collect_schema())
    n, label_codes, dense_values = _check_source(table, frame)
    if f.order:
        frame = frame.sort(f.order, maintain_order=True)
    ordered = frame  # log order: what a sequential split slices
    frame = _assign_split(table, frame.with_row_index(ROW), n, seed)
    enc = _fit_encoders(table, frame, dense_values, min_count)
    exprs, sequences = _encoded_columns(f, enc, label_codes, dense_values)
    encoded = frame.select([pl.col(SPLIT), pl.col(ROW), *exprs])

    # partitions (HMDN's multi-distribution groups): the scenario x partition-field combinations
    # seen in training, densely numbered; unseen combinations map to 0
    part_fields = [S.SCENARIO] + [c for c in f.partition if c != f.scenario]
    key = pl.concat_str([pl.col(c).cast(pl.String) for c in part_fields], separator="|")
    part_vocab = Vocabulary.fit(
        encoded.filter(pl.col(SPLIT) == "train").select(key.alias("_key")), "_key", 1
    )
    if table.split == "sequential":
        # each split is a slice of the ordered rows: Polars pushes the slice into the scan, so
        # a split's pass reads (and encodes) only its own rows
        ftrain, fval, _ = table.split_fractions
        n_train, n_trval = int(n * ftrain), int(n * (ftrain + fval))
        sliced = ordered.select(exprs).with_columns(part_vocab.encode(key).alias(S.PARTITION))
        bounds = {"train": (0, n_train), "val": (n_train, n_trval), "test": (n_trval, n)}
        parts = {sp: sliced.slice(lo, hi - lo) for sp, (lo, hi) in bounds.items()}
    else:
        encoded = encoded.with_columns(part_vocab.encode(key).alias(S.PARTITION))
        parts = {sp: encoded.filter(pl.col(SPLIT) == sp).drop(SPLIT, ROW) for sp in S.SPLITS}

    rows, counts, clicks = _write_splits(parts, tmp, len(enc.scenario_values), row_group_size)
    pl.concat([v.frame() for v in enc.vocabs.values()] + [part_vocab.frame()]).write_parquet(
        tmp / "encoders.parquet", statistics=False
    )
    schema = Schema(
        source=table.name,
        num_scenarios=len(enc.scenario_values),
        scenario_names=enc.scenario_names,
        sparse=[SparseField(c, enc.vocabs[c].size) for c in f.sparse],
        dense=enc.dense,
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
            # each scenario's raw value, by name (the names may be the papers', e.g. #B1)
            "scenario_values": dict(
                zip(enc.scenario_names, map(str, enc.scenario_values.to_list()), strict=True)
            ),
            "user_column": f.user,
            "session_column": f.session,
            "encoders": "encoders.parquet",
            # the raw type of every model input column: `msctr predict` reads new rows as these
            "raw_types": raw_types,
            "prepared_md5": prepared_md5(tmp, min_count),
        },
    )
    schema.save(tmp)
    return schema


def _check_scalar(f: FieldMap, types: pl.Schema) -> None:
    """Every role but a sequence's takes one value per row: a list (or struct) column given
    as, say, a sparse field would reach the encoder and fail there with Polars' traceback."""
    roles = {f.label: "the label", f.scenario: "the scenario column"}
    roles |= {c: "a sparse field" for c in f.sparse} | {c: "a dense field" for c in f.dense}
    roles |= {c: f"the {r} column" for r in ("user", "session", "order") if (c := getattr(f, r))}
    for column, role in roles.items():
        if types[column].is_nested():
            raise UserError(
                f"column '{column}' holds {types[column]} values, not one value per row, so it "
                f"cannot be {role}; give a column with one value per row"
            )


def _check_source(table: SourceTable, frame: pl.LazyFrame) -> tuple[int, pl.Expr, dict]:
    """The checks that need the data: rows, labels, scenario nulls, dense types. Returns the
    row count, the label's 0/1 expression and each dense column as float64."""
    f = table.fields
    types = frame.collect_schema()
    n, null_scenarios = frame.select(pl.len(), pl.col(f.scenario).null_count()).collect().row(0)
    if n == 0:
        raise UserError(f"{table.name}: the table has no rows (only a header?); give rows")
    _check_scalar(f, types)
    label_codes = _label_codes(f.label, types[f.label])
    _check_labels(frame, f.label, label_codes)
    if null_scenarios:
        raise UserError(
            f"scenario column '{f.scenario}' has {null_scenarios} missing value(s); fill them "
            "(e.g. with an 'unknown' scenario) or drop those rows"
        )
    return n, label_codes, _dense_values(frame, f.dense, types)


def _fit_encoders(
    table: SourceTable, frame: pl.LazyFrame, dense_values: dict, min_count: int
) -> Encoders:
    """Scenario ids, vocabularies and dense statistics, fit on the training rows only."""
    f = table.fields
    train = frame.filter(pl.col(SPLIT) == "train")
    if table.scenario_order == "first_seen":
        # one pass: each value's first row in table order, kept when training holds it
        firsts = (
            frame.group_by(f.scenario)
            .agg(pl.col(ROW).min().alias("first"), (pl.col(SPLIT) == "train").any().alias("in"))
            .filter(pl.col("in"))
            .sort("first")
            .collect()
        )
        scen_values = firsts.get_column(f.scenario)
    else:
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
    if table.scenario_prefix:
        names = {v: f"{table.scenario_prefix}{k + 1}" for k, v in enumerate(scen_values)}
    return Encoders(
        scenario_values=scen_values,
        scenario_names=[str(names.get(v, v)) for v in scen_values.to_list()],
        vocabs={c: Vocabulary.fit(train, c, min_count) for c in f.sparse},
        dense=_dense_fields(frame, dense_values) if f.dense else [],
    )


def _encoded_columns(
    f: FieldMap, enc: Encoders, label_codes: pl.Expr, dense_values: dict
) -> tuple[list[pl.Expr], list[Sequence]]:
    """Every prepared column as an expression over the raw rows, and the sequences' schema."""
    exprs: list[pl.Expr] = [
        label_codes.alias(S.LABEL),
        # scenario ids 0..S-1 in sorted order of the training values (all values are seen)
        (Vocabulary(f.scenario, enc.scenario_values).encode(pl.col(f.scenario)) - 1).alias(
            S.SCENARIO
        ),
    ]
    exprs += [enc.vocabs[c].encode(pl.col(c)).alias(c) for c in f.sparse]
    exprs += [
        # missing (null or NaN) -> the training mean, i.e. 0; the clip keeps a far outlier of
        # val/test finite in float32
        ((dense_values[c] - d.mean) / d.std)
        .fill_nan(0.0)
        .fill_null(0.0)
        .clip(-FLOAT32_MAX, FLOAT32_MAX)
        .cast(pl.Float32)
        .alias(c)
        for c, d in zip(f.dense, enc.dense, strict=True)
    ]
    sequences = []
    for seq in f.sequences:
        L = seq.max_len
        first = next(iter(seq.columns))
        length = f"{seq.name}_len"
        exprs.append(
            pl.col(first).list.head(L).list.len().fill_null(0).cast(pl.Int32).alias(length)
        )
        for col, target in seq.columns.items():
            exprs.append(enc.vocabs[target].encode_sequence(col, L).alias(col))
        fields = [SequenceField(c, t, seq.queries.get(c, t)) for c, t in seq.columns.items()]
        sequences.append(Sequence(seq.name, L, length, fields))
    if f.user:
        exprs.append(pl.col(f.user).hash(seed=0).reinterpret(signed=True).alias(S.USER))
    if f.session:
        exprs.append(pl.col(f.session).hash(seed=0).reinterpret(signed=True).alias(S.SESSION))
    if f.true_prob:
        exprs.append(pl.col(f.true_prob).cast(pl.Float64).alias(S.TRUE_PROB))
    return exprs, sequences


def _write_splits(
    parts: dict[str, pl.LazyFrame], folder: Path, num_scenarios: int, row_group_size: int
) -> tuple[dict, dict, dict]:
    """Stream each split to `folder`/<split>.parquet; rows, rows per scenario and clicks per
    scenario of each split, read back from the written files."""
    rows, counts, clicks = {}, {}, {}
    for split in S.SPLITS:
        path = folder / f"{split}.parquet"
        parts[split].sink_parquet(path, row_group_size=row_group_size, statistics=False)
        stats = (
            pl.scan_parquet(path)
            .group_by(S.SCENARIO)
            .agg(pl.len().alias("n"), pl.col(S.LABEL).cast(pl.Int64).sum().alias("c"))
            .collect()
        )
        n_s = [0] * num_scenarios
        c_s = [0] * num_scenarios
        for s, cnt, clk in stats.iter_rows():
            n_s[s], c_s[s] = cnt, clk
        rows[split], counts[split], clicks[split] = sum(n_s), n_s, c_s
        if rows[split] == 0:
            raise UserError(f"the {split} split is empty; give more rows or other fractions")
    return rows, counts, clicks


def prepared_md5(folder: Path, min_count: int) -> str:
    """The dataset's fingerprint: its split files, and the vocabulary threshold when it is not
    1 (a threshold no value falls below leaves the files as they were, yet a run trained
    under one setting must not pass for a run of the other). At 1 the md5 is the files' own,
    as it was before the threshold could be set."""
    paths = [folder / f"{split}.parquet" for split in S.SPLITS]
    if min_count == 1:
        return files_md5(paths)
    return hashlib.md5(f"{files_md5(paths)} min_count={min_count}".encode()).hexdigest()


def files_md5(paths: list[Path], chunk: int = 1 << 22) -> str:
    """One md5 over the files' bytes in order, read in 4 MiB chunks (a split can be larger
    than memory)."""
    digest = hashlib.md5()
    for path in paths:
        with path.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


# -- the fitted encoders, applied to new raw rows (msctr predict) ------------------------------


def input_types(f: FieldMap, types: pl.Schema) -> dict[str, str]:
    """The raw type of each column the prepared model inputs come from (scenario, sparse,
    dense, sequence columns), as Polars names it."""
    columns = [f.scenario, *f.sparse, *f.dense, *(c for seq in f.sequences for c in seq.columns)]
    return {c: str(types[c]) for c in dict.fromkeys(columns)}


def type_kind(dtype: pl.DataType) -> str:
    """What a column holds, in words: two types of one kind (Int32 and Int64) encode alike
    after a cast, two kinds (integers and text) do not."""
    if isinstance(dtype, (pl.List, pl.Array)):
        return f"lists of {type_kind(dtype.inner)}"
    if dtype.is_integer():
        return "integers"
    if dtype.is_float():
        return "decimals"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return "text"
    if dtype == pl.Boolean:
        return "booleans"
    if dtype == pl.Null:
        return "nothing (all missing)"
    return str(dtype)


def parse_type(name: str) -> pl.DataType | None:
    """A type `input_types` recorded, back as a Polars type (None for a type this msctr
    cannot name back, e.g. a struct: such a column is then read as the input gives it)."""
    if name.startswith("List(") and name.endswith(")"):
        inner = parse_type(name[5:-1])
        return None if inner is None else pl.List(inner)
    dtype = getattr(pl, name, None)
    if isinstance(dtype, type) and issubclass(dtype, pl.DataType):
        return dtype()
    return None


class FittedEncoders:
    """A prepared dataset's encoders, as fitted on its training rows, read back from its
    encoders.parquet and schema.json and applied to new raw rows exactly as `prepare` applied
    them to val/test: the same expressions (`_encoded_columns`), over vocabularies with the
    same values in the same id order, the same dense statistics, the same partition key.

    The input columns are cast to the types they had when the data was prepared (recorded in
    schema.json's info.raw_types): a value then reaches the vocabulary as the same value, so
    it gets the same id (an integer column read as Int32 instead of Int64 included). A column
    of another kind (text where there were integers) is refused: its values could never match.
    """

    def __init__(self, folder: str | Path, schema: Schema) -> None:
        self.folder = Path(folder)
        self.schema = schema
        info = schema.info
        if "scenario_column" not in info or "scenario_values" not in info:
            raise UserError(
                f"'{self.folder}/schema.json' does not record the scenario column and values "
                "(prepared by an older msctr); re-run `msctr prepare` and retrain"
            )
        self.fields = FieldMap(
            label=info.get("label") or S.LABEL,
            scenario=info["scenario_column"],
            sparse=schema.sparse_names,
            dense=schema.dense_names,
            sequences=[
                SequenceSpec(q.name, {f.column: f.shares for f in q.fields}, q.max_len)
                for q in schema.sequences
            ],
        )
        self.raw_types: dict[str, str] = dict(info.get("raw_types") or {})
        path = self.folder / "encoders.parquet"
        if not path.is_file():
            raise UserError(
                f"prepared dataset '{self.folder}' has no encoders.parquet; re-run `msctr prepare`"
            )
        with reading(path, "re-run `msctr prepare` for this dataset"):
            table = pl.read_parquet(path)
        self.vocab_text = {
            name: group.sort("id").get_column("value")
            for (name,), group in table.group_by("field", maintain_order=True)
        }
        for sf in schema.sparse:
            got = len(self.vocab_text.get(sf.name, ()))
            if got + 1 != sf.vocab_size:
                raise UserError(
                    f"'{path}' holds {got} values of field '{sf.name}', its schema.json says "
                    f"{sf.vocab_size - 1}; the dataset's files do not belong together: re-run "
                    "`msctr prepare`"
                )
        self.scenario_text = pl.Series(list(info["scenario_values"].values()), dtype=pl.String)

    @property
    def columns(self) -> list[str]:
        """The raw columns the model inputs come from."""
        f = self.fields
        seq = [c for s in f.sequences for c in s.columns]
        return list(dict.fromkeys([f.scenario, *f.sparse, *f.dense, *seq]))

    def trained_type(self, column: str) -> pl.DataType | None:
        name = self.raw_types.get(column)
        return None if name is None else parse_type(name)

    def check(self, types: pl.Schema, where: str) -> None:
        """Refuse an input that lacks a column, or holds one of another kind than in
        training, before anything is read."""
        missing = [c for c in self.columns if c not in types]
        if missing:
            raise UserError(
                f"{where} lacks column(s) {', '.join(missing)} that the model reads; give "
                "them as in the table the dataset was prepared from"
            )
        for c in self.columns:
            want = self.trained_type(c)
            if want is None or types[c] == pl.Null:  # an all-missing column: missing values
                continue
            if type_kind(types[c]) != type_kind(want):
                raise UserError(
                    f"{where}: column '{c}' holds {type_kind(types[c])} ({types[c]}), but when "
                    f"the dataset was prepared it held {type_kind(want)} ({want}); give it as "
                    "in training"
                )

    def _values(self, text: pl.Series, dtype: pl.DataType | None) -> pl.Series:
        """Vocabulary values (stored as text) back in the type they were fitted in."""
        if dtype is None or dtype == pl.String:
            return text
        try:
            return text.cast(dtype, strict=True)
        except (pl.exceptions.PolarsError, ValueError):
            return text  # compared as text, as encoders.parquet wrote them

    def encode(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """The prepared model columns (`schema` module docstring) of `frame`'s raw rows, in
        row order; an unseen scenario gets id -1 (`unseen_scenarios` finds them first)."""
        f = self.fields
        frame = frame.select(self.columns)
        types = frame.collect_schema()
        casts = []
        for c in self.columns:
            want = self.trained_type(c)
            if want is not None and types[c] != want:
                casts.append(pl.col(c).cast(want))
        if casts:
            frame = frame.with_columns(casts)
            types = frame.collect_schema()
        vocabs = {}
        for c in f.sparse:
            text = self.vocab_text.get(c, pl.Series([], dtype=pl.String))
            values = self._values(text, self.trained_type(c) or types[c])
            if values.dtype == pl.String and types[c] != pl.String:  # compared as text
                frame = frame.with_columns(pl.col(c).cast(pl.String))
            vocabs[c] = Vocabulary(c, values)
        enc = Encoders(
            scenario_values=self.scenario_values(types),
            scenario_names=self.schema.scenario_names,
            vocabs=vocabs,
            dense=self.schema.dense,
        )
        dense_values = _dense_values(frame, f.dense, types)
        exprs, _ = _encoded_columns(f, enc, pl.lit(0, pl.Int8), dense_values)
        key = pl.concat_str(
            [pl.col(c).cast(pl.String) for c in self.schema.partition_fields], separator="|"
        )
        part = Vocabulary("_key", self.vocab_text.get("_key", pl.Series([], dtype=pl.String)))
        return frame.select(exprs).with_columns(part.encode(key).alias(S.PARTITION))

    def scenario_values(self, types: pl.Schema) -> pl.Series:
        c = self.fields.scenario
        return self._values(self.scenario_text, self.trained_type(c) or types[c])

    def unseen_scenarios(self, frame: pl.LazyFrame) -> tuple[int, list]:
        """Rows of `frame` whose scenario value training never had (or is missing), and up
        to five of those values."""
        c = self.fields.scenario
        want = self.trained_type(c)
        col = pl.col(c) if want is None else pl.col(c).cast(want)
        known = self.scenario_values(frame.collect_schema() if want is None else {c: want})
        if known.dtype == pl.String:
            col = col.cast(pl.String)
        bad = frame.select(col.alias(c)).filter(
            ~pl.col(c).is_in(known.implode()) | pl.col(c).is_null()
        )
        found = bad.select(
            pl.len(), pl.col(c).unique(maintain_order=True).head(5).implode()
        ).collect()
        return int(found.item(0, 0)), list(found.item(0, 1))

"""The encoders `prepare` fits on the training rows (scenario ids, vocabularies, dense
statistics), the expressions that encode raw rows with them, and the same encoders read back
from a prepared dataset to encode new raw rows (`msctr predict`) exactly as `prepare` encoded
val/test."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from msctr.data import checks
from msctr.data.schema import (
    LABEL,
    PARTITION,
    SCENARIO,
    SESSION,
    TRUE_PROB,
    USER,
    DenseField,
    Schema,
    Sequence,
    SequenceField,
)
from msctr.data.sources.base import FieldMap, SequenceSpec
from msctr.errors import UserError
from msctr.io import reading

INT_DTYPES = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)
# integer vocabularies spanning fewer raw values than this are looked up in a dense table
DENSE_LOOKUP_LIMIT = 1 << 25
FLOAT32_MAX = float(np.finfo(np.float32).max)


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
    def fit(
        cls,
        train: pl.LazyFrame,
        column: str,
        min_count: int,
        sequences: list[tuple[str, int]] | None = None,
    ) -> Vocabulary:
        """The vocabulary of `column`'s training values; `sequences`, the (list column,
        max_len) pairs that share it, add the values their first max_len elements hold that
        the column does not: after the column's own, by descending frequency over both (a
        value only ever seen in histories, such as an Ali-CCP history entry that is no
        request's last, would otherwise take the out-of-vocabulary id 0 with every other)."""
        own = train.group_by(column).len()
        ranked = own.filter(pl.col("len") >= min_count).sort(
            ["len", column], descending=[True, False], nulls_last=True
        )
        values = ranked.collect().get_column(column)
        if not sequences:
            return cls(column, values)
        dtype = train.collect_schema()[column]
        elements = [
            train.select(pl.col(c).list.head(n).explode().cast(dtype, strict=False).alias(column))
            for c, n in sequences
        ]
        both = pl.concat([pl.concat(elements).group_by(column).len(), own])
        extra = (
            both.group_by(column)
            .agg(pl.col("len").sum())
            .filter(
                pl.col(column).is_not_null()
                & (pl.col("len") >= min_count)
                & ~pl.col(column).is_in(values.implode())
            )
            .sort(["len", column], descending=[True, False])
            .collect()
            .get_column(column)
        )
        return cls(column, pl.concat([values, extra]))

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


@dataclass
class Encoders:
    """Everything fitted on the training rows: scenario ids, vocabularies, dense statistics."""

    scenario_values: pl.Series  # raw scenario values in id order
    scenario_names: list[str]
    vocabs: dict[str, Vocabulary]
    dense: list[DenseField]


def encoded_columns(
    f: FieldMap, enc: Encoders, label_codes: pl.Expr, dense_values: dict
) -> tuple[list[pl.Expr], list[Sequence]]:
    """Every prepared column as an expression over the raw rows, and the sequences' schema."""
    exprs: list[pl.Expr] = [
        label_codes.alias(LABEL),
        # scenario ids 0..S-1 in sorted order of the training values (all values are seen)
        (Vocabulary(f.scenario, enc.scenario_values).encode(pl.col(f.scenario)) - 1).alias(
            SCENARIO
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
        exprs.append(pl.col(f.user).hash(seed=0).reinterpret(signed=True).alias(USER))
    if f.session:
        exprs.append(pl.col(f.session).hash(seed=0).reinterpret(signed=True).alias(SESSION))
    if f.true_prob:
        exprs.append(pl.col(f.true_prob).cast(pl.Float64).alias(TRUE_PROB))
    return exprs, sequences


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
    them to val/test: the same expressions (`encoded_columns`), over vocabularies with the
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
            label=info.get("label") or LABEL,
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
        dense_values = checks.dense_values(frame, f.dense, types)
        exprs, _ = encoded_columns(f, enc, pl.lit(0, pl.Int8), dense_values)
        key = pl.concat_str(
            [pl.col(c).cast(pl.String) for c in self.schema.partition_fields], separator="|"
        )
        part = Vocabulary("_key", self.vocab_text.get("_key", pl.Series([], dtype=pl.String)))
        return frame.select(exprs).with_columns(part.encode(key).alias(PARTITION))

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

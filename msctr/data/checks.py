"""The checks `prepare` makes of a source before fitting anything: one role per column, the
columns there, one value per row, labels 0/1, no missing scenario, dense columns numeric.
Each refuses with one line naming the column and the fix."""

from __future__ import annotations

import polars as pl

from msctr.data.schema import LABEL, PARTITION, SCENARIO, SESSION, TRUE_PROB, USER
from msctr.data.sources.base import FieldMap, SourceTable
from msctr.errors import UserError


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
    reserved = {LABEL, SCENARIO, USER, SESSION, PARTITION, TRUE_PROB}
    reserved |= {f"{seq.name}_len" for seq in f.sequences}
    for c in [*f.sparse, *f.dense, *seq_cols]:
        if c in reserved:
            raise UserError(
                f"field '{c}' has the name of a column msctr writes itself; rename it in the table"
            )


def check_columns(table: SourceTable, columns: set[str]) -> None:
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


def dense_values(frame: pl.LazyFrame, dense: list[str], types: pl.Schema) -> dict[str, pl.Expr]:
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


def check_source(table: SourceTable, frame: pl.LazyFrame) -> tuple[int, pl.Expr, dict]:
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
    return n, label_codes, dense_values(frame, f.dense, types)

"""Any table (CSV or Parquet) plus a field map given on the command line."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import polars as pl

from msctr.data.sources.base import FieldMap, SourceTable
from msctr.errors import UserError
from msctr.io import reading

# Polars renames a repeated CSV header name `a` to `a_duplicated_0`, `a_duplicated_1`, ...
_DUPLICATED = re.compile(r"^(?P<name>.+)_duplicated_\d+$")
# rows read to guess each CSV column's type: Polars' default of 100 misses a column whose
# first hundred values happen to look like integers
INFER_ROWS = 10_000
FIX = "check that the file is complete and in the format its name says"


def _names(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _check_text(path: Path, head: bytes) -> None:
    """A CSV must be UTF-8 text: Polars reads binary junk as a header of odd column names."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not merely a character cut at the end of the sample
            raise UserError(f"table '{path}' is not a UTF-8 text file; {FIX}") from None


def _check_complete(path: Path, head: bytes, separator: str) -> None:
    """A CSV cut off in the middle (a copy or download that stopped) ends in a line without
    its line end and with fewer fields than the header; Polars would fill them with nulls."""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - (1 << 16)))
        tail = fh.read()
    if not tail or tail.endswith((b"\n", b"\r")) or b"\n" not in tail:
        return
    last = tail.rsplit(b"\n", 1)[1].decode("utf-8", errors="replace")
    header = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
    want = len(next(csv.reader([header], delimiter=separator)))
    got = len(next(csv.reader([last], delimiter=separator)))
    if got < want:
        raise UserError(
            f"table '{path}' looks cut off: its last line has {got} of {want} fields and no "
            f"line end; {FIX}"
        )


def scan(path: str | Path, types: dict[str, pl.DataType] | None = None) -> pl.LazyFrame:
    """A CSV, TSV or Parquet file as a LazyFrame, after the checks a table gets (exists, its
    format, text that is UTF-8, a CSV not cut off, no repeated column name). `types`: read
    these CSV columns as these types (msctr predict reads new rows as the training rows were
    read) instead of guessing from the first rows."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"table '{path}' not found")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".tsv", ".txt"):
        raise UserError(f"table '{path}': expected a .csv, .tsv or .parquet file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError as e:
        raise UserError(f"table '{path}' cannot be read ({e.strerror}); {FIX}") from None
    separator = "\t" if suffix == ".tsv" else ","
    if suffix != ".parquet":
        _check_text(path, head)
        _check_complete(path, head, separator)
    with reading(path, FIX):
        if suffix == ".parquet":
            frame = pl.scan_parquet(path)
        else:
            frame = pl.scan_csv(
                path,
                separator=separator,
                infer_schema_length=INFER_ROWS,
                schema_overrides=types or None,
            )
        columns = frame.collect_schema().names()
    for c in columns:
        m = _DUPLICATED.match(c)
        if m and m["name"] in columns:
            raise UserError(
                f"table '{path}' has the column name '{m['name']}' twice in its header; "
                "rename one of them"
            )
    return frame


def read_table(
    path: str | Path,
    label: str,
    scenario: str,
    sparse: str,
    dense: str = "",
    user: str | None = None,
    session: str | None = None,
    order: str | None = None,
    split: str = "sequential",
) -> SourceTable:
    path = Path(path)
    if split not in ("sequential", "random"):
        raise UserError(f"--split must be sequential or random, got {split!r}")
    frame = scan(path)
    fields = FieldMap(
        label=label,
        scenario=scenario,
        sparse=_names(sparse),
        dense=_names(dense),
        user=user,
        session=session,
        order=order,
    )
    return SourceTable(frame, fields, name=path.stem, split=split, info={"path": str(path)})

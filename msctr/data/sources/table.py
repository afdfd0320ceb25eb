"""Any table (CSV or Parquet) plus a field map given on the command line."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from msctr.data.sources.base import FieldMap, SourceTable
from msctr.errors import UserError


def _names(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


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
    if not path.is_file():
        raise UserError(f"table '{path}' not found")
    if path.suffix.lower() == ".parquet":
        frame = pl.scan_parquet(path)
    elif path.suffix.lower() in (".csv", ".tsv", ".txt"):
        frame = pl.scan_csv(path, separator="\t" if path.suffix.lower() == ".tsv" else ",")
    else:
        raise UserError(f"table '{path}': expected a .csv, .tsv or .parquet file")
    if split not in ("sequential", "random"):
        raise UserError(f"--split must be sequential or random, got {split!r}")
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

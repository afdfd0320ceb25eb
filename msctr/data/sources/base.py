"""The contract between a dataset adapter and `prepare`.

An adapter (synthetic, kuairand, aliccp, table) returns a `SourceTable`: a Polars
LazyFrame with raw (not yet encoded) values plus a `FieldMap` saying what each
column is. `prepare` then splits the rows, fits encoders on the training rows
only and writes the prepared dataset (see `msctr.data.schema`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import polars as pl


@dataclass
class SequenceSpec:
    """A behavior sequence: aligned list columns, one per attribute of a behavior.

    `columns` maps each list column of the frame to the sparse field whose
    vocabulary and embedding it shares (e.g. ``{"hist_video_id": "video_id"}``).
    Lists hold raw values, most recent first; `prepare` truncates to `max_len`.
    `queries` maps a list column to the candidate's sparse field that target attention
    compares it with, where that is not the shared field (Ali-CCP: the history of categories
    109_14 has its own ids and is queried by the item's category 206); every column left out
    is queried by the field it shares.
    """

    name: str
    columns: dict[str, str]
    max_len: int = 50
    queries: dict[str, str] = field(default_factory=dict)


@dataclass
class FieldMap:
    label: str
    scenario: str
    sparse: list[str]
    dense: list[str] = field(default_factory=list)
    sequences: list[SequenceSpec] = field(default_factory=list)
    user: str | None = None  # group key for GAUC (raw column; may also be a sparse field)
    session: str | None = None  # group key for S-GAUC
    partition: list[str] = field(default_factory=list)  # multi-distribution fields (HMDN)
    true_prob: str | None = None  # planted-signal data only; never a feature
    order: str | None = None  # column giving log order for sequential splits


SplitKind = Literal["sequential", "random", "given"]


@dataclass
class SourceTable:
    frame: pl.LazyFrame
    fields: FieldMap
    name: str
    split: SplitKind = "sequential"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_column: str | None = None  # for split="given": values "train" / "val" / "test"
    scenario_names: dict[int, str] | None = None  # raw scenario value -> display name
    # scenario ids 0..S-1: the raw values sorted, or in the order they first appear in the
    # table (how the processed Ali-CCP files numbered position 301, and so the papers' #B1..#B3)
    scenario_order: Literal["sorted", "first_seen"] = "sorted"
    scenario_prefix: str | None = None  # name scenario k (in id order) f"{prefix}{k + 1}"
    info: dict = field(default_factory=dict)  # recorded in schema.json (variant, checksum, ...)

"""Split a `SourceTable`, fit encoders on its training rows only, and write the prepared dataset.

Output folder: train/val/test.parquet (row groups), encoders.parquet, schema.json. The folder is
built under a temporary name and renamed into place at the end, so a failed or killed prepare
never leaves a dataset that looks complete, and an existing --out is replaced only when it is a
dataset msctr prepared (or the user says --overwrite). Same input and seed -> byte-identical files.
The source's checks are in `msctr.data.checks`, the encoders and their expressions in
`msctr.data.encoders`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import polars as pl

from msctr.data.checks import check_columns, check_source
from msctr.data.encoders import Encoders, Vocabulary, encoded_columns, input_types
from msctr.data.schema import LABEL, PARTITION, SCENARIO, SPLITS, DenseField, Schema, SparseField
from msctr.data.sources.base import SourceTable
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
PREPARED_FILES = frozenset(
    {"train.parquet", "val.parquet", "test.parquet", "encoders.parquet", "schema.json"}
)


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
        infs = [(sp, per_split[sp][c]) for sp in SPLITS if sp in per_split]
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
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
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
    check_columns(table, set(frame.collect_schema().names()))
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
    n, label_codes, dense_values = check_source(table, frame)
    if f.order:
        frame = frame.sort(f.order, maintain_order=True)
    ordered = frame  # log order: what a sequential split slices
    frame = _assign_split(table, frame.with_row_index(ROW), n, seed)
    enc = _fit_encoders(table, frame, dense_values, min_count)
    exprs, sequences = encoded_columns(f, enc, label_codes, dense_values)
    encoded = frame.select([pl.col(SPLIT), pl.col(ROW), *exprs])

    # partitions (HMDN's multi-distribution groups): the scenario x partition-field combinations
    # seen in training, densely numbered; unseen combinations map to 0
    part_fields = [SCENARIO] + [c for c in f.partition if c != f.scenario]
    key = pl.concat_str([pl.col(c).cast(pl.String) for c in part_fields], separator="|")
    part_vocab = Vocabulary.fit(
        encoded.filter(pl.col(SPLIT) == "train").select(key.alias("_key")), "_key", 1
    )
    if table.split == "sequential":
        # each split is a slice of the ordered rows: Polars pushes the slice into the scan, so
        # a split's pass reads (and encodes) only its own rows
        ftrain, fval, _ = table.split_fractions
        n_train, n_trval = int(n * ftrain), int(n * (ftrain + fval))
        sliced = ordered.select(exprs).with_columns(part_vocab.encode(key).alias(PARTITION))
        bounds = {"train": (0, n_train), "val": (n_train, n_trval), "test": (n_trval, n)}
        parts = {sp: sliced.slice(lo, hi - lo) for sp, (lo, hi) in bounds.items()}
    else:
        encoded = encoded.with_columns(part_vocab.encode(key).alias(PARTITION))
        parts = {sp: encoded.filter(pl.col(SPLIT) == sp).drop(SPLIT, ROW) for sp in SPLITS}

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
        vocabs={
            c: Vocabulary.fit(
                train,
                c,
                min_count,
                [(col, q.max_len) for q in f.sequences for col, t in q.columns.items() if t == c],
            )
            for c in f.sparse
        },
        dense=_dense_fields(frame, dense_values) if f.dense else [],
    )


def _write_splits(
    parts: dict[str, pl.LazyFrame], folder: Path, num_scenarios: int, row_group_size: int
) -> tuple[dict, dict, dict]:
    """Stream each split to `folder`/<split>.parquet; rows, rows per scenario and clicks per
    scenario of each split, read back from the written files."""
    rows, counts, clicks = {}, {}, {}
    for split in SPLITS:
        path = folder / f"{split}.parquet"
        parts[split].sink_parquet(path, row_group_size=row_group_size, statistics=False)
        stats = (
            pl.scan_parquet(path)
            .group_by(SCENARIO)
            .agg(pl.len().alias("n"), pl.col(LABEL).cast(pl.Int64).sum().alias("c"))
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
    paths = [folder / f"{split}.parquet" for split in SPLITS]
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

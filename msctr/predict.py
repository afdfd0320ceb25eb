"""`msctr predict RUN --input FILE --out scores.parquet`: a trained run scores new raw rows.

The run's recipe.yaml names the prepared dataset it trained on; that folder's encoders.parquet
and schema.json (fitted on its training rows) encode the new rows exactly as `prepare`
encoded val/test (`msctr.data.encoders.FittedEncoders`). A dataset prepared again since the
run trained (its prepared_md5 differs from the run's fingerprint) is refused: its encoders
may give the same value another id.

The input is read in chunks of rows (a lazy Parquet scan, sliced; a CSV is first streamed to a
scratch Parquet file beside the output), so memory is bounded by the chunk, not the file.
Every chunk is encoded, scored by each chosen model (and seed) and appended to the output,
which is renamed into place only when every row is scored. docs/predict.md has the details.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from msctr.bench.measure import load_model
from msctr.cores import AdaptiveThreads
from msctr.data.encoders import FittedEncoders
from msctr.data.loader import Columns
from msctr.data.schema import Schema
from msctr.data.sources.table import scan
from msctr.errors import UserError
from msctr.evaluate.report import load_run
from msctr.io import atomic_path, os_errors, reading, scratch_dir
from msctr.paths import check_out_file
from msctr.recipe import ModelEntry, Recipe
from msctr.resources import check_threads
from msctr.runs import RunFolder, SeedRun
from msctr.train.loop import predict as score
from msctr.train.runtime import limit_heaps, release_freed_memory, resolve_device

CHUNK_ROWS = 200_000
# the key in the output's Parquet metadata that marks it as msctr predict's (so a rerun may
# replace it, and a user's Parquet file named by mistake is not)
MARK = b"msctr.predict"
# a Parquet input whose row groups are larger than this many chunks is first rewritten in
# chunk-sized row groups: a slice reads whole row groups
MAX_GROUP_CHUNKS = 4


@dataclass
class PredictConfig:
    input: Path
    out: Path
    models: list[str] | None = None  # labels (or model names); None = every model of the run
    seed: int | None = None  # None: the recipe's first seed (unless `ensemble`)
    ensemble: bool = False  # mean of every seed's probabilities
    batch_size: int | None = None  # None: the recipe's train.eval_batch_size
    device: str = "cpu"
    threads: int | None = None
    keep: list[str] = field(default_factory=list)  # input columns copied to the output
    chunk_rows: int = CHUNK_ROWS
    data: Path | None = None  # the prepared dataset, when it moved since training


@dataclass
class PredictResult:
    out: Path
    rows: int
    seconds: float
    columns: list[str]  # the probability columns, one per model
    unseen: dict[str, int]  # per field: values mapped to the unseen id (sequence elements too)
    seen_rows: dict[str, int]  # per field: values looked up (rows; sequence elements)

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(self.seconds, 1e-9)


def is_scores_file(path: Path) -> bool:
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return False
    return MARK in meta


def prob_column(key: str) -> str:
    return f"prob_{key}"


def check_config(cfg: PredictConfig) -> None:
    if cfg.ensemble and cfg.seed is not None:
        raise UserError("--seed and --ensemble exclude each other; give one of them")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {cfg.batch_size}")
    if cfg.chunk_rows < 1:
        raise UserError(f"--chunk-rows must be positive, got {cfg.chunk_rows}")
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise UserError(f"--threads must be positive, got {cfg.threads}")
        check_threads(cfg.threads, "--threads")
    if cfg.device not in ("cpu", "cuda", "mps") and not cfg.device.startswith("cuda:"):
        raise UserError(f"--device must be cpu, cuda (cuda:N) or mps, got {cfg.device!r}")
    if len(set(cfg.keep)) != len(cfg.keep):
        raise UserError("--keep lists a column twice; list each once")


def select_entries(recipe: Recipe, wanted: list[str] | None) -> list[ModelEntry]:
    if not wanted:
        return list(recipe.models)
    by_key = {m.key: m for m in recipe.models}
    by_name: dict[str, list[ModelEntry]] = {}
    for m in recipe.models:
        by_name.setdefault(m.name, []).append(m)
    out = []
    for w in wanted:
        if w in by_key:
            out.append(by_key[w])
        elif len(by_name.get(w, [])) == 1:
            out.append(by_name[w][0])
        else:
            raise UserError(
                f"--model '{w}' is not a model of the run; its models are {', '.join(by_key)}"
            )
    return _unique(out)


def _unique(entries: list[ModelEntry]) -> list[ModelEntry]:
    seen, out = set(), []
    for e in entries:
        if e.key not in seen:
            seen.add(e.key)
            out.append(e)
    return out


def chosen_seeds(recipe: Recipe, cfg: PredictConfig) -> list[int]:
    seeds = list(recipe.train.seeds)
    if cfg.ensemble:
        return seeds
    if cfg.seed is None:
        return seeds[:1]
    if cfg.seed not in seeds:
        raise UserError(
            f"--seed {cfg.seed} is not a seed of the run; its seeds are "
            f"{', '.join(map(str, seeds))}"
        )
    return [cfg.seed]


def check_trained(run: SeedRun, key: str, seed: int, schema: Schema, data: Path) -> None:
    """A run is scored only when it finished (its best.pt is final) and it trained on the
    dataset whose encoders will encode the rows."""
    if not run.checkpoint.is_file():
        raise UserError(
            f"'{run.checkpoint}' is missing: '{key}' seed {seed} has no trained checkpoint; "
            "train it first (msctr train), or choose another --model / --seed"
        )
    if not run.finished:
        raise UserError(
            f"'{key}' seed {seed} in '{run.folder}' has not finished training (no run.json), so "
            "its best.pt may still change; let `msctr train` finish it, or choose another seed"
        )
    if not run.fingerprint.is_file():
        return  # a run of an msctr that wrote no fingerprint is taken as it is
    with reading(run.fingerprint, "retrain the recipe with `msctr train --fresh`"):
        trained_on = json.loads(run.fingerprint.read_text()).get("data")
    now = schema.info.get("prepared_md5", "unknown")
    if trained_on != now:
        raise UserError(
            f"'{key}' seed {seed} was trained on other data than the dataset '{data}' holds now "
            f"(prepared_md5 {trained_on} then, {now} now): it was prepared again since, so its "
            "encoders may give a value another id; give --data the dataset the run trained on, "
            "or retrain the run on this one"
        )


def open_input(cfg: PredictConfig, fitted: FittedEncoders, work: Path) -> pl.LazyFrame:
    """The input as a lazy Parquet scan whose row groups a chunk can slice cheaply; refuses a
    missing or wrong-typed column and an empty file before anything is scored."""
    path = cfg.input
    where = f"--input '{path}'"
    if path.is_file() and path.stat().st_size == 0:
        raise UserError(f"{where} is an empty file; give a table with a header and rows")
    types = {c: t for c in fitted.columns if (t := fitted.trained_type(c)) is not None}
    csv_types = {c: t for c, t in types.items() if not isinstance(t, (pl.List, pl.Array))}
    frame = scan(path, csv_types)
    fix = "check that the file is complete and in the format its name says"
    with reading(path, fix):
        names = frame.collect_schema()
    fitted.check(names, where)
    missing = [c for c in cfg.keep if c not in names]
    if missing:
        raise UserError(
            f"--keep names column(s) {', '.join(missing)} that {where} does not have; "
            f"it has: {', '.join(names.names())}"
        )
    if path.suffix.lower() == ".parquet":
        with reading(path, fix):
            meta = pq.ParquetFile(path).metadata
        biggest = max((meta.row_group(i).num_rows for i in range(meta.num_row_groups)), default=0)
        if biggest <= MAX_GROUP_CHUNKS * cfg.chunk_rows:
            return frame
    # a CSV (a slice would parse the file from its start again) or huge row groups: streamed
    # once to a scratch Parquet file of chunk-sized row groups, in the training types
    local = work / "input.parquet"
    with reading(path, f"{fix}; every value must parse as the type it had in training"):
        frame.sink_parquet(local, row_group_size=cfg.chunk_rows, compression="lz4")
    return pl.scan_parquet(local)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} rows"),
        TextColumn("{task.fields[rate]:,.0f} rows/s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def run_predict(
    run_dir: str | Path, cfg: PredictConfig, console: Console | None = None
) -> PredictResult:
    console = console or Console()
    run_dir = Path(run_dir)
    check_config(cfg)
    recipe, schema = load_run(run_dir, cfg.data)
    data = Path(cfg.data) if cfg.data is not None else Path(recipe.data)
    entries = select_entries(recipe, cfg.models)
    seeds = chosen_seeds(recipe, cfg)
    folder = RunFolder(run_dir)
    for e in entries:
        for s in seeds:
            check_trained(folder.seed(e.key, s), e.key, s, schema, data)
    check_out_file(cfg.out, "--out", "scores file", is_scores_file, inputs=(cfg.input, data))
    fitted = FittedEncoders(data, schema)
    device = resolve_device(cfg.device, "--device")
    threads = AdaptiveThreads(cfg.threads)  # follows the load unless --threads pins it
    # not train's keep_freed_memory: chunks of varying sizes would fragment a heap that is
    # never trimmed, and bounded memory matters more here than page faults
    limit_heaps(torch.get_num_threads())
    models = {
        e.key: [load_model(recipe, e, schema, s)[0].to(device).eval() for s in seeds]
        for e in entries
    }
    batch_size = cfg.batch_size or recipe.train.eval_batch_size
    precision = recipe.train.precision
    with os_errors("predict"), scratch_dir(cfg.out) as work:
        source = open_input(cfg, fitted, work)
        with reading(cfg.input, "check that the file is complete and well-formed"):
            rows = source.select(pl.len()).collect().item()
            if rows == 0:
                raise UserError(f"--input '{cfg.input}' has no rows (only a header?); give rows")
            bad, examples = fitted.unseen_scenarios(source)
        if bad:
            known = ", ".join(map(str, fitted.scenario_text.to_list()))
            raise UserError(
                f"{bad} row(s) of '{cfg.input}' have a scenario ({fitted.fields.scenario}) that "
                f"training never had (e.g. {examples}), and no model has a scenario id for "
                f"them; drop those rows, or map them to a trained scenario ({known})"
            )
        scoring = Scoring(models, batch_size, device, precision, threads.tick)
        return _score(cfg, schema, fitted, source, rows, scoring, console)


@dataclass
class Scoring:
    """The models (label -> one per seed) and how they score."""

    models: dict[str, list[torch.nn.Module]]
    batch_size: int
    device: torch.device
    precision: str  # the recipe's train.precision: the test split was scored so
    pace: Callable[[], None]  # before each batch: AdaptiveThreads.tick


def _score(
    cfg: PredictConfig,
    schema: Schema,
    fitted: FittedEncoders,
    source: pl.LazyFrame,
    rows: int,
    scoring: Scoring,
    console: Console,
) -> PredictResult:
    models = scoring.models
    names = pl.Series(schema.scenario_names, dtype=pl.String)
    seq_fields = [f"{f.column} (sequence)" for q in schema.sequences for f in q.fields]
    fields = [*schema.sparse_names, *seq_fields]
    unseen = dict.fromkeys(fields, 0)
    looked = dict.fromkeys(fields, 0)
    columns = [prob_column(k) for k in models]
    fix = "check that the file is complete and well-formed"
    tick = time.perf_counter()
    with reading(cfg.input, fix):
        # one plan, its vocabularies' lookup tables built once; each chunk's slice is pushed
        # down into the Parquet scan, so a chunk reads and encodes its own rows only
        encoded_rows = fitted.encode(source)
    with atomic_path(cfg.out) as tmp, _progress(console) as progress:
        task = progress.add_task("predict", total=rows, rate=0.0)
        writer: pq.ParquetWriter | None = None
        try:
            for start in range(0, rows, cfg.chunk_rows):
                with reading(cfg.input, fix):
                    encoded = encoded_rows.slice(start, cfg.chunk_rows).collect()
                    part = source.slice(start, cfg.chunk_rows)
                    kept = part.select(cfg.keep).collect() if cfg.keep else None
                cols = Columns.from_arrow(encoded.to_arrow(), schema)
                _count_unseen(cols, schema, unseen, looked)
                out = {"row": pl.Series("row", np.arange(start, start + len(cols)))}
                if kept is not None:
                    out |= {c: kept.get_column(c) for c in cfg.keep}
                out["scenario"] = names.gather(cols.scenario.numpy())
                for key, nets in models.items():
                    p = np.mean(
                        [
                            score(
                                m,
                                cols,
                                scoring.batch_size,
                                scoring.device,
                                scoring.precision,
                                pace=scoring.pace,
                            )
                            for m in nets
                        ],
                        axis=0,
                    )
                    out[prob_column(key)] = pl.Series(prob_column(key), p, dtype=pl.Float64)
                table = pl.DataFrame(out).to_arrow()
                if writer is None:
                    meta = {MARK: json.dumps({"models": list(models)}).encode()}
                    writer = pq.ParquetWriter(tmp, table.schema.with_metadata(meta))
                writer.write_table(table)
                done = start + len(cols)
                del encoded, cols, table, out
                release_freed_memory()
                rate = done / max(time.perf_counter() - tick, 1e-9)
                progress.update(task, completed=done, rate=rate)
        finally:
            if writer is not None:
                writer.close()
    seconds = time.perf_counter() - tick
    return PredictResult(cfg.out, rows, seconds, columns, unseen, looked)


def _count_unseen(cols: Columns, schema: Schema, unseen: dict, looked: dict) -> None:
    """Values that mapped to the unseen id 0: per sparse field its rows; per sequence column
    its elements within each row's length (the padding is not a value)."""
    zeros = (cols.sparse == 0).sum(0).tolist()
    for name, z in zip(schema.sparse_names, zeros, strict=True):
        unseen[name] += int(z)
        looked[name] += len(cols)
    for q, ids, n in zip(schema.sequences, cols.seq_ids, cols.seq_len, strict=True):
        mask = torch.arange(q.max_len) < n.unsqueeze(1)
        for k, f in enumerate(q.fields):
            key = f"{f.column} (sequence)"
            unseen[key] += int(((ids[..., k] == 0) & mask).sum())
            looked[key] += int(mask.sum())


def render(result: PredictResult, console: Console) -> None:
    """The unseen-values summary (every field with any), then where the scores went."""
    table = Table(title="values training never had (scored with the unseen id)")
    table.add_column("field")
    table.add_column("unseen", justify="right")
    table.add_column("of", justify="right")
    table.add_column("share", justify="right")
    drifted = [(f, n) for f, n in result.unseen.items() if n]
    for f, n in sorted(drifted, key=lambda x: -x[1] / max(result.seen_rows[x[0]], 1)):
        total = result.seen_rows[f]
        table.add_row(escape(f), f"{n:,}", f"{total:,}", f"{n / max(total, 1):.2%}")
    if drifted:
        console.print(table)
    clean = len(result.unseen) - len(drifted)
    console.print(f"{clean} of {len(result.unseen)} field(s) had only values seen in training")
    console.print(
        f"[green]wrote[/] {escape(str(result.out))}: {result.rows:,} rows, "
        f"{', '.join(map(escape, result.columns))} ({result.rows_per_s:,.0f} rows/s)"
    )


__all__ = [
    "PredictConfig",
    "PredictResult",
    "is_scores_file",
    "render",
    "run_predict",
]

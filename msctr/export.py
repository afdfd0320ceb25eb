"""`msctr export RUN --format torchscript|onnx --out DIR`: a run's models for serving.

Each model (one seed's best.pt) is wrapped so that it takes the prepared id tensors as plain
tensors (`INPUTS`) and returns click probabilities, traced, and written as TorchScript
(`<model>.pt`, loaded with `torch.jit.load`) or ONNX (`<model>.onnx`, run by ONNX Runtime);
neither needs msctr to run. Beside them: the dataset's encoders.parquet (raw value -> id per
field) and contract.json (the inputs in order, their shapes and id ranges, the dense
statistics, the encoding rules). Every export is scored on the test split against the model
in PyTorch, and is kept only when no probability differs by more than `TOLERANCE`; a model
that fails (to trace, to convert, or that check) is listed in contract.json and on screen
with the reason. docs/predict.md#export describes the folder.
"""

from __future__ import annotations

import io
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from msctr.bench.measure import load_model
from msctr.data.batch import Batch
from msctr.data.loader import Columns, load_columns
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.evaluate.report import load_run
from msctr.io import atomic_dir, os_errors, read_json, sweep_stale, write_json
from msctr.models.registry import split_output
from msctr.paths import refuse_protected
from msctr.predict import check_trained, select_entries
from msctr.recipe import ModelEntry, Recipe
from msctr.runs import RunFolder, model_folder
from msctr.train.loop import predict as score

FORMATS = ("torchscript", "onnx")
TOLERANCE = 1e-5
CHECK_BATCH = 997  # rows per batch of the check: prime, so the last batch has another size
TRACE_ROWS = 64  # rows of the example batch the model is traced with
OPSET = 17
CONTRACT = "contract.json"
WRITTEN_BY = "msctr export"
EXPORT_MISSING = (
    "--format onnx needs the optional packages onnx and onnxruntime: pip install 'msctr[export]'"
)


def need_onnx() -> Any:
    """onnxruntime (and onnx, which torch's exporter needs), imported only here: they are
    the optional extra `msctr[export]`."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise UserError(EXPORT_MISSING) from None
    # errors only: its graph-optimiser warnings about renamed inputs are not the user's concern
    onnxruntime.set_default_logger_severity(3)
    return onnxruntime


@dataclass
class ExportConfig:
    format: str
    out: Path
    models: list[str] | None = None
    seed: int | None = None
    data: Path | None = None
    rows: int | None = None  # check on the first N test rows only (default: all)


@dataclass
class Exported:
    model: str  # the label
    name: str
    seed: int
    file: str
    max_abs_diff: float
    rows_checked: int


@dataclass
class ExportResult:
    out: Path
    format: str
    exported: list[Exported] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # label -> why


def input_names(schema: Schema) -> list[str]:
    """The exported model's inputs, in order (contract.json describes each)."""
    names = ["scenario", "sparse", "dense", "partition"]
    for q in schema.sequences:
        names += [f"{q.name}_ids", f"{q.name}_len"]
    return names


class Scorer(torch.nn.Module):
    """A model over plain tensors: the inputs of `input_names` -> probabilities [B]."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, scenario, sparse, dense, partition, *sequences) -> torch.Tensor:
        ids, lengths = sequences[0::2], sequences[1::2]
        masks = tuple(
            torch.arange(i.shape[1], device=i.device) < n.unsqueeze(1)
            for i, n in zip(ids, lengths, strict=True)
        )
        batch = Batch(
            scenario=scenario,
            sparse=sparse,
            dense=dense,
            label=torch.zeros_like(scenario, dtype=torch.float32),
            partition=partition,
            seq_ids=tuple(ids),
            seq_mask=masks,
        )
        logit, _ = split_output(self.model(batch))
        return torch.sigmoid(logit.float())


def tensors(cols: Columns) -> tuple[torch.Tensor, ...]:
    """A Columns' rows as the exported model's inputs (ids int64, dense float32)."""
    out = [cols.scenario.long(), cols.sparse.long(), cols.dense, cols.partition.long()]
    for ids, n in zip(cols.seq_ids, cols.seq_len, strict=True):
        out += [ids.long(), n.long()]
    return tuple(out)


def batch_inputs(batch: Batch) -> tuple[torch.Tensor, ...]:
    """A Batch as the exported model's inputs (the sequence lengths from its masks)."""
    out = [batch.scenario, batch.sparse, batch.dense, batch.partition]
    for ids, mask in zip(batch.seq_ids, batch.seq_mask, strict=True):
        out += [ids, mask.sum(1)]
    return tuple(out)


def backend_runner(model: torch.nn.Module, backend: str, schema: Schema, example: Batch):
    """`model` exported to `backend` (torchscript, onnxruntime) in memory, as a function of a
    Batch returning probabilities [B] (what `bench-inference --backend` times). The ONNX
    session uses torch's intra-op thread count, so both backends get the same cores."""
    scorer = Scorer(model.eval()).eval()
    xs = batch_inputs(example)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        if backend == "torchscript":
            traced = torch.jit.trace(scorer, xs, check_trace=False)
            buf = io.BytesIO()
            torch.jit.save(traced, buf)
            buf.seek(0)
            loaded = torch.jit.load(buf)

            def run_ts(batch: Batch) -> torch.Tensor:
                with torch.no_grad():
                    return loaded(*batch_inputs(batch))

            return run_ts
        ort = need_onnx()
        names = input_names(schema)
        buf = io.BytesIO()
        torch.onnx.export(
            scorer, xs, buf, dynamo=False, input_names=names, output_names=["prob"],
            dynamic_axes={n: {0: "batch"} for n in [*names, "prob"]}, opset_version=OPSET,
        )  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}

    def run_ort(batch: Batch) -> torch.Tensor:
        feed = {
            n: x.numpy() for n, x in zip(names, batch_inputs(batch), strict=True) if n in wanted
        }
        return torch.from_numpy(session.run(["prob"], feed)[0])

    return run_ort


def contract(schema: Schema, recipe: Recipe, data: Path, fmt: str) -> dict:
    """What a server must feed the exported models: each input in order, its type, shape and
    id range, and how raw values become those ids (encoders.parquet holds the vocabularies)."""
    info = schema.info
    seq_inputs = []
    for q in schema.sequences:
        fields = [{"column": f.column, "shares": f.shares} for f in q.fields]
        seq_inputs += [
            {
                "name": f"{q.name}_ids",
                "dtype": "int64",
                "shape": ["batch", q.max_len, len(q.fields)],
                "fields": fields,
                "rule": f"the first {q.max_len} elements of the raw list (most recent first), "
                "each encoded with the vocabulary of the sparse field it shares; 0-padded",
            },
            {
                "name": f"{q.name}_len",
                "dtype": "int64",
                "shape": ["batch"],
                "range": [0, q.max_len],
                "rule": "elements kept: min(len(raw list), max_len); a missing list is 0",
            },
        ]
    return {
        "written_by": WRITTEN_BY,
        "format": fmt,
        "run": recipe.name,
        "dataset": str(data),
        "prepared_md5": info.get("prepared_md5"),
        "inputs": [
            {
                "name": "scenario",
                "dtype": "int64",
                "shape": ["batch"],
                "range": [0, schema.num_scenarios - 1],
                "column": info.get("scenario_column"),
                "ids": {
                    str(k): {"name": n, "raw": info.get("scenario_values", {}).get(n)}
                    for k, n in enumerate(schema.scenario_names)
                },
                "rule": "the raw scenario value's id; a value training never had has no id",
            },
            {
                "name": "sparse",
                "dtype": "int64",
                "shape": ["batch", len(schema.sparse)],
                "fields": [{"name": f.name, "range": [0, f.vocab_size - 1]} for f in schema.sparse],
                "rule": "column j is field j's id: ids 1..V-1 by descending training frequency "
                "(encoders.parquet: field, value as text, id); 0 = a value training never had; "
                "a missing value has the id of the missing value when training had one, else 0",
            },
            {
                "name": "dense",
                "dtype": "float32",
                "shape": ["batch", len(schema.dense)],
                "fields": [{"name": f.name, "mean": f.mean, "std": f.std} for f in schema.dense],
                "rule": "(x - mean) / std with the training statistics; missing (null or NaN) "
                "-> 0; clipped to the float32 range",
            },
            {
                "name": "partition",
                "dtype": "int64",
                "shape": ["batch"],
                "range": [0, schema.num_partitions - 1],
                "fields": schema.partition_fields,
                "rule": "the id of the text key '|'.join(str(id) of each field, scenario id "
                "first) in encoders.parquet's field '_key'; 0 = a combination training never "
                "had (only HMDN reads it)",
            },
            *seq_inputs,
        ],
        "output": {"name": "prob", "dtype": "float32", "shape": ["batch"]},
        "encoders": "encoders.parquet",
    }


def check_out(out: Path, run_dir: Path, data: Path) -> None:
    """An export folder msctr wrote, an empty or absent one is (re)written; anything else is
    refused before the work."""
    hint = "give a new folder for the export, e.g. --out exports/NAME"
    refuse_protected(out, f"--out '{out}'", hint, (run_dir, data))
    inside = Path(os.path.abspath(out))
    if any(p == Path(os.path.abspath(run_dir)) for p in inside.parents):
        # a run folder holds only what train writes: a later train would refuse it
        raise UserError(f"--out '{out}' is inside the run folder '{run_dir}'; {hint}")
    sweep_stale(out.parent, out.name)
    if not os.path.lexists(out):
        return
    if not out.is_dir() or out.is_symlink():
        raise UserError(f"--out '{out}' is not a folder; {hint}")
    if not any(out.iterdir()):
        return
    try:
        ours = read_json(out / CONTRACT).get("written_by") == WRITTEN_BY
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise UserError(f"--out '{out}' holds files that are not an export msctr wrote; {hint}")


def run_export(run_dir: str | Path, cfg: ExportConfig, console: Console | None = None):
    console = console or Console()
    run_dir = Path(run_dir)
    if cfg.format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {cfg.format!r}")
    ort = need_onnx() if cfg.format == "onnx" else None
    if cfg.rows is not None and cfg.rows < 1:
        raise UserError(f"--rows must be positive, got {cfg.rows}")
    recipe, schema = load_run(run_dir, cfg.data)
    data = Path(cfg.data) if cfg.data is not None else Path(recipe.data)
    entries = select_entries(recipe, cfg.models)
    seed = recipe.train.seeds[0] if cfg.seed is None else cfg.seed
    if seed not in recipe.train.seeds:
        raise UserError(
            f"--seed {seed} is not a seed of the run; its seeds are "
            f"{', '.join(map(str, recipe.train.seeds))}"
        )
    folder = RunFolder(run_dir)
    for e in entries:
        check_trained(folder.seed(e.key, seed), e.key, seed, schema, data)
    check_out(cfg.out, run_dir, data)
    cols = load_columns(data, "test", schema, limit=cfg.rows)
    result = ExportResult(cfg.out, cfg.format)
    with os_errors("export"), atomic_dir(cfg.out) as tmp:
        with console.status("exporting") as status:
            for e in entries:
                status.update(f"exporting {escape(e.key)} ({cfg.format}) and checking it")
                _export_one(recipe, e, schema, seed, cols, cfg.format, tmp, result, ort)
        if not result.exported:
            first = next(iter(result.failed.items()))
            raise UserError(f"no model could be exported ({first[0]}: {first[1]})")
        shutil.copyfile(data / "encoders.parquet", tmp / "encoders.parquet")
        doc = contract(schema, recipe, data, cfg.format)
        doc["models"] = [vars(x) for x in result.exported]
        doc["not_exported"] = [{"model": k, "reason": v} for k, v in result.failed.items()]
        doc["check"] = {"split": "test", "tolerance": TOLERANCE, "batch_size": CHECK_BATCH}
        write_json(tmp / CONTRACT, doc)
    return result


def _export_one(
    recipe: Recipe,
    entry: ModelEntry,
    schema: Schema,
    seed: int,
    cols: Columns,
    fmt: str,
    folder: Path,
    result: ExportResult,
    ort: Any,
) -> None:
    model, _ = load_model(recipe, entry, schema, seed)
    model.eval()
    scorer = Scorer(model).eval()
    example = tensors(cols.take(torch.arange(TRACE_ROWS) % len(cols)))
    name = model_folder(entry.key) + (".pt" if fmt == "torchscript" else ".onnx")
    path = folder / name
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings: the check below is the judge
            if fmt == "torchscript":
                traced = torch.jit.trace(scorer, example, check_trace=False)
                torch.jit.save(traced, str(path))
                loaded = torch.jit.load(str(path))

                def run(xs: tuple[torch.Tensor, ...]) -> np.ndarray:
                    with torch.no_grad():
                        return loaded(*xs).numpy()
            else:
                names = input_names(schema)
                torch.onnx.export(
                    scorer,
                    example,
                    str(path),
                    dynamo=False,
                    input_names=names,
                    output_names=["prob"],
                    dynamic_axes={n: {0: "batch"} for n in [*names, "prob"]},
                    opset_version=OPSET,
                )
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                wanted = {i.name for i in session.get_inputs()}  # unused inputs are pruned

                def run(xs: tuple[torch.Tensor, ...]) -> np.ndarray:
                    feed = {n: x.numpy() for n, x in zip(names, xs, strict=True) if n in wanted}
                    return session.run(["prob"], feed)[0]

            diff = _check(model, cols, run)
    except Exception as e:  # a model the tracer or exporter cannot take is reported, not fatal
        path.unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        result.failed[entry.key] = f"{type(e).__name__}: {first[:200]}"
        return
    if not diff <= TOLERANCE:
        path.unlink(missing_ok=True)
        result.failed[entry.key] = (
            f"the export's probabilities differ from PyTorch's by up to {diff:.2g} on the test "
            f"split (> {TOLERANCE:g}), so it is not kept"
        )
        return
    result.exported.append(Exported(entry.key, entry.name, seed, name, float(diff), len(cols)))


def _check(model: torch.nn.Module, cols: Columns, run) -> float:
    """Largest absolute difference of the export's probabilities from the model's, over the
    test rows in batches of CHECK_BATCH (and one single row)."""
    want = score(model, cols, CHECK_BATCH, torch.device("cpu"))  # no Ctrl-C check: stop=None
    got = [
        run(tensors(cols.take(slice(i, i + CHECK_BATCH)))) for i in range(0, len(cols), CHECK_BATCH)
    ]
    diff = float(np.abs(np.concatenate(got).astype(np.float64) - want).max())
    one = run(tensors(cols.take(slice(0, 1))))
    return max(diff, float(abs(float(one[0]) - want[0])))


def render(result: ExportResult, console: Console) -> None:
    table = Table(title=f"exported ({result.format}), checked against PyTorch on the test split")
    table.add_column("model")
    table.add_column("file")
    table.add_column("max |diff|", justify="right")
    table.add_column("rows", justify="right")
    for x in result.exported:
        table.add_row(
            escape(x.model), escape(x.file), f"{x.max_abs_diff:.1e}", f"{x.rows_checked:,}"
        )
    console.print(table)
    for key, why in result.failed.items():
        console.print(f"[yellow]not exported[/] {escape(key)}: {escape(why)}")
    console.print(f"[green]wrote[/] {escape(str(result.out))} ({CONTRACT}, encoders.parquet)")


__all__ = ["FORMATS", "ExportConfig", "ExportResult", "render", "run_export"]

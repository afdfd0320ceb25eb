"""Measuring: the options, loading each model, timing the test split end to end and the
forward per batch size, multiply-adds and peak memory, into a `BenchResult`.

- the whole test split scored end to end: read the Parquet file, cut batches, forward,
  probabilities back on the host. After one warm-up run, `repeats` runs: mean, std, min, max.
  This is the papers' inference-time figure (HierRec Table 3).
- forward-only throughput and latency per batch size: batches are built beforehand on the
  device and every call is timed alone (synchronised on CUDA), so p50/p90/p99 are latencies
  and samples/s is rows over the summed call times; warm-up calls are excluded.
- parameters, multiply-adds per sample (counted by `msctr.flops` from the ops a forward
  really runs) and peak memory of a forward per batch size.
- the test AUC of every variant, checked against eager fp32 to 1e-3.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from msctr import flops
from msctr.bench.machine import machine
from msctr.bench.memory import batch_bytes, peak_forward_bytes, sync, tensor_bytes
from msctr.bench.results import (
    BatchTiming,
    BenchResult,
    Increase,
    ModelBench,
    Summary,
    VariantBench,
    VariantFailed,
    is_bench_file,
)
from msctr.cores import AdaptiveThreads
from msctr.data.batch import Batch
from msctr.data.loader import Columns, load_columns
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.evaluate.metrics import auc
from msctr.io import write_json
from msctr.models.registry import build, check_model, split_output
from msctr.paths import check_out_file
from msctr.recipe import ModelEntry, Recipe
from msctr.resources import check_threads, need_memory
from msctr.runs import RunFolder, check_run_folder
from msctr.train.runtime import keep_freed_memory

# name -> (precision, compiled)
VARIANTS: dict[str, tuple[str, bool]] = {
    "eager": ("fp32", False),
    "bf16": ("bf16", False),
    "compile": ("fp32", True),
    "compile-bf16": ("bf16", True),
}
AUC_TOLERANCE = 1e-3
# where the model runs: torch (the `VARIANTS`, always run: eager is the AUC check's
# reference), or exported in memory (msctr.export) and run by TorchScript or ONNX Runtime,
# each one more variant of the tables, checked against eager like bf16 and compile
BACKENDS = ("torch", "torchscript", "onnxruntime")


@dataclass
class BenchConfig:
    models: list[str] | None = None  # model keys (labels) or names; None = all
    batch_sizes: list[int] = field(default_factory=lambda: [1, 256, 2000, 8192])
    variants: list[str] = field(default_factory=lambda: ["eager"])
    backends: list[str] = field(default_factory=lambda: ["torch"])
    device: str = "cpu"
    threads: int | None = None
    rows: int | None = None  # score the first N test rows only
    repeats: int = 3  # timed runs of the whole test split (after one warm-up run)
    min_seconds: float = 0.3  # per batch size and repeat, at least this much timed calls
    min_calls: int = 3
    seed: int | None = None  # which seed's checkpoint (default: the recipe's first seed)
    out: Path | None = None  # bench.json (default: <run dir>/bench.json)


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(
            f"{what} must be comma-separated integers, e.g. 1,256,2000; got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise UserError(f"{what} must be positive integers, e.g. 1,256,2000; got {text!r}")
    return values


def check_config(cfg: BenchConfig) -> None:
    bad = [v for v in cfg.variants if v not in VARIANTS]
    if bad or not cfg.variants:
        raise UserError(
            f"unknown variant(s) {bad or cfg.variants}; choose from {', '.join(VARIANTS)}"
        )
    bad = [b for b in cfg.backends if b not in BACKENDS]
    if bad or not cfg.backends:
        raise UserError(
            f"unknown backend(s) {bad or cfg.backends}; choose from {', '.join(BACKENDS)}"
        )
    if set(cfg.backends) - {"torch"} and cfg.device != "cpu":
        raise UserError(
            f"--backend {','.join(cfg.backends)}: the exported backends run on the CPU here; "
            "use --device cpu, or --backend torch"
        )
    if "onnxruntime" in cfg.backends:
        from msctr.export import need_onnx  # the optional extra, named when missing

        need_onnx()
    if not 0 <= cfg.min_seconds < math.inf:  # inf would ask for endless timed calls
        raise UserError(
            f"--min-time must be a finite number of seconds >= 0, e.g. 0.3; got {cfg.min_seconds}"
        )
    if cfg.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {cfg.repeats}")
    if cfg.rows is not None and cfg.rows < 1:
        raise UserError(f"--rows must be positive, got {cfg.rows}")
    if cfg.threads is not None and cfg.threads < 1:
        raise UserError(f"--threads must be positive, got {cfg.threads}")


def all_variants(cfg: BenchConfig) -> list[str]:
    """The torch variants, then one per exported backend."""
    return [*cfg.variants, *(b for b in cfg.backends if b != "torch")]


def bench_device(name: str) -> torch.device:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device must be cpu or cuda (or cuda:N), got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def select_models(recipe: Recipe, wanted: list[str] | None) -> list[ModelEntry]:
    if not wanted:
        return list(recipe.models)
    return [recipe.models[recipe.model_index(w, "--models")] for w in wanted]


# -- timing ------------------------------------------------------------------------------------


def runner(
    model: torch.nn.Module, variant: str, device: torch.device, inference_mode: bool = True
) -> Callable[[Batch], torch.Tensor]:
    """Probabilities of a batch as the variant computes them. `inference_mode=False` uses
    no_grad instead, for the memory tracker: under inference mode composite ops such as
    einsum reach a Python dispatch mode undecomposed and skip autocast's casts."""
    precision, compiled = VARIANTS[variant]
    net = torch.compile(model) if compiled else model
    grad_off = torch.inference_mode if inference_mode else torch.no_grad

    def run(batch: Batch) -> torch.Tensor:
        ctx = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else contextlib.nullcontext()
        )
        with grad_off(), ctx:
            logit, _ = split_output(net(batch))
            return torch.sigmoid(logit.float())

    return run


def score_test_split(
    run: Callable[[Batch], torch.Tensor],
    folder: Path,
    schema: Schema,
    rows: int | None,
    batch_size: int,
    device: torch.device,
    pace: Callable[[], None] = lambda: None,
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(seconds end to end, seconds of which reading, probabilities, labels). `pace` runs
    before each batch (AdaptiveThreads.tick)."""
    sync(device)
    t0 = time.perf_counter()
    cols = load_columns(folder, "test", schema, limit=rows)
    t1 = time.perf_counter()
    probs = []
    for b in cols.batches(batch_size):
        pace()
        probs.append(run(b.to(device)).cpu())
    sync(device)
    t2 = time.perf_counter()
    return t2 - t0, t1 - t0, torch.cat(probs).double().numpy(), cols.label.numpy()


def check_batch_sizes(cols: Columns, sizes: list[int], device: torch.device) -> None:
    """Every batch size's inputs must fit the device's memory before `fixed_batch` builds
    them (a lower bound: one row's input tensors and its index, times the batch size)."""
    per_row = 8 + batch_bytes(cols.batch(torch.arange(1)))
    largest = max(sizes)
    need_memory(
        largest * per_row,
        f"--batch-sizes {largest}",
        f"give smaller batch sizes (the test split has {len(cols):,} rows)",
        device,
    )


def fixed_batch(cols: Columns, size: int, device: torch.device) -> Batch:
    """`size` test rows (cycling when the split is smaller), already on the device."""
    index = torch.arange(size) % len(cols)
    return cols.batch(index).to(device)


def time_calls(
    run: Callable[[Batch], torch.Tensor],
    batch: Batch,
    cfg: BenchConfig,
    device,
    pace: Callable[[], None] = lambda: None,
) -> BatchTiming:
    for _ in range(2):  # warm-up: allocator, caches, compiled graphs for this shape
        run(batch)
    sync(device)
    t0 = time.perf_counter()
    run(batch)
    sync(device)
    estimate = max(time.perf_counter() - t0, 1e-6)
    calls = min(1000, max(cfg.min_calls, math.ceil(cfg.min_seconds / estimate)))
    lat: list[float] = []
    rates: list[float] = []
    for _ in range(cfg.repeats):
        window = []
        for _ in range(calls):
            pace()  # outside the timed call: a reading of the load costs the call nothing
            t0 = time.perf_counter()
            run(batch)
            sync(device)
            window.append(time.perf_counter() - t0)
        lat += window
        rates.append(len(batch) * calls / sum(window))
    q = np.quantile(np.array(lat) * 1000, [0.5, 0.9, 0.99])
    return BatchTiming(
        batch_size=len(batch),
        calls=len(lat),
        samples_per_s=statistics.median(rates),
        samples_per_s_min_max=[min(rates), max(rates)],
        latency_ms={"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2])},
    )


# -- one model ---------------------------------------------------------------------------------


def load_model(
    recipe: Recipe, entry: ModelEntry, schema: Schema, seed: int
) -> tuple[torch.nn.Module, str]:
    check_model(entry.name, schema, entry.model_params)
    model = build(entry.name, schema, entry.model_params)
    ckpt = RunFolder(recipe.run_dir).seed(entry.key, seed).checkpoint
    if not ckpt.is_file():
        return model, f"freshly initialised (no checkpoint at {ckpt})"
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or not a checkpoint: torch raises several types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"{ckpt} is not a readable checkpoint ({first[:160]}); retrain the recipe"
        ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(
            f"{ckpt} does not fit model '{entry.key}' as the recipe defines it ({first}); "
            "retrain the recipe or remove the stale run folder"
        ) from None
    return model, f"trained checkpoint {ckpt}"


def bench_model(
    recipe: Recipe,
    entry: ModelEntry,
    schema: Schema,
    cols: Columns,
    cfg: BenchConfig,
    device: torch.device,
    seed: int,
    threads: AdaptiveThreads,
    log: Callable[[str], None],
) -> ModelBench:
    model, source = load_model(recipe, entry, schema, seed)
    model = model.to(device).eval()
    folder = Path(recipe.data)
    e2e_bs = recipe.train.eval_batch_size
    res = ModelBench(
        model=entry.key,
        name=entry.name,
        weights=source,
        trained=source.startswith("trained"),
        parameters=sum(p.numel() for p in model.parameters()),
        weight_bytes=tensor_bytes(list(model.parameters()) + list(model.buffers())),
    )
    batches = {bs: fixed_batch(cols, bs, device) for bs in cfg.batch_sizes}
    for bs, b in batches.items():
        res.macs_per_sample[bs] = flops.forward_flops(model, b).macs_per_sample
    e2e_batch = fixed_batch(cols, min(e2e_bs, len(cols)), device)
    res.macs_per_sample_e2e = flops.forward_flops(model, e2e_batch).macs_per_sample

    for variant in all_variants(cfg):
        log(f"{entry.key}: {variant}")
        plain = variant in VARIANTS and not VARIANTS[variant][1]  # eager or bf16: no compiler
        try:
            if variant in VARIANTS:
                run = runner(model, variant, device)
            else:
                from msctr.export import backend_runner  # export imports this module

                run = backend_runner(model, variant, schema, fixed_batch(cols, 64, device))
            score_test_split(  # warm-up
                run, folder, schema, cfg.rows, e2e_bs, device, threads.tick
            )
        except Exception as e:  # a compiler or exporter failing must not end the benchmark
            if plain:
                raise
            res.variants[variant] = VariantFailed(f"{type(e).__name__}: {e}".splitlines()[0])
            continue
        total, reading = [], []
        for _ in range(cfg.repeats):
            seconds, read, prob, label = score_test_split(
                run, folder, schema, cfg.rows, e2e_bs, device, threads.tick
            )
            total.append(seconds)
            reading.append(read)
        has_both = 0 < label.sum() < len(label)
        by_batch_size = []
        for b in batches.values():
            timing = time_calls(run, b, cfg, device, threads.tick)
            if plain:  # the tracker would trace through compiled graphs, and sees no ORT
                extra = peak_forward_bytes(runner(model, variant, device, False), b, device)
                timing.peak_bytes = res.weight_bytes + batch_bytes(b) + extra
            by_batch_size.append(timing)
        res.variants[variant] = VariantBench(
            test_seconds=Summary.of(total),
            read_seconds=Summary.of(reading),
            test_rows=int(len(label)),
            e2e_batch_size=e2e_bs,
            auc=auc(label.astype(np.int64), prob) if has_both else float("nan"),
            by_batch_size=by_batch_size,
        )
    eager = res.variants.get("eager")
    if isinstance(eager, VariantBench):
        for name, v in res.variants.items():
            if isinstance(v, VariantBench) and name != "eager":
                v.auc_diff_vs_eager = v.auc - eager.auc
                v.auc_ok = bool(abs(v.auc - eager.auc) <= AUC_TOLERANCE)
    return res


# -- the whole recipe --------------------------------------------------------------------------


def run_bench(recipe: Recipe, cfg: BenchConfig, console: Console | None = None) -> BenchResult:
    console = console or Console()
    check_config(cfg)
    check_bench_out(recipe, cfg)  # before the minutes of measuring, not after
    device = bench_device(cfg.device)
    if cfg.threads:
        check_threads(cfg.threads, "--threads")
    threads = AdaptiveThreads(cfg.threads)
    keep_freed_memory()
    folder = Path(recipe.data)
    schema = Schema.load(folder)  # one-line error when the data is missing
    entries = select_models(recipe, cfg.models)
    seed = cfg.seed if cfg.seed is not None else recipe.train.seeds[0]
    cols = load_columns(folder, "test", schema, limit=cfg.rows)
    if len(cols) == 0:
        raise UserError(f"the test split of '{folder}' has no rows; re-run `msctr prepare`")
    check_batch_sizes(cols, cfg.batch_sizes, device)
    result = BenchResult(
        recipe=recipe.name,
        data=str(folder),
        test_rows=len(cols),
        seed=seed,
        machine=machine(device),
        batch_sizes=cfg.batch_sizes,
        variants=all_variants(cfg),
        repeats=cfg.repeats,
        e2e_batch_size=recipe.train.eval_batch_size,
    )
    with console.status("benchmarking") as status:
        for entry in entries:
            result.models.append(
                bench_model(
                    recipe,
                    entry,
                    schema,
                    cols,
                    cfg,
                    device,
                    seed,
                    threads,
                    lambda msg: status.update(f"benchmarking {msg}"),
                )
            )
    add_increase(result, recipe)
    if hasattr(os, "getloadavg"):
        result.machine["loadavg_end"] = list(os.getloadavg())
    # unless --threads pins it, the count follows the load (msctr.cores): its mean over every
    # scored batch, beside `threads`, the count at the start
    result.machine["threads_used"] = round(float(threads.take_used() or threads.threads), 2)
    out = cfg.out or RunFolder(recipe.run_dir).bench
    write_json(out, result.to_dict())
    result.path = str(out)
    return result


def check_bench_out(recipe: Recipe, cfg: BenchConfig) -> None:
    """bench.json goes to `--out` or the run folder; a file there is replaced only when it is
    a bench.json msctr wrote (msctr.paths)."""
    if cfg.out is not None:
        check_out_file(cfg.out, "--out", "bench.json", is_bench_file, inputs=(recipe.data,))
        return
    check_run_folder(recipe.run_dir, inputs=(recipe.data,))
    path = RunFolder(recipe.run_dir).bench
    if os.path.lexists(path) and not (path.is_file() and is_bench_file(path)):
        raise UserError(
            f"'{path}' is not a bench.json msctr wrote, so it is not replaced; move it away, "
            "or give --out PATH for the benchmark"
        )


def add_increase(result: BenchResult, recipe: Recipe) -> None:
    """Each model's test-split time relative to the fastest baseline, per variant.

    Baselines are the recipe's `eval.baselines` when given, else every model (so the
    reference is the fastest model). HierRec's Table 3 instead divides by the slowest
    baseline; both are stored.
    """
    names = set(recipe.eval.baselines)
    for variant in result.variants:
        ran = [
            (m.model, v)
            for m in result.models
            if isinstance(v := m.variants.get(variant), VariantBench)
        ]
        times = {k: v.test_seconds.mean for k, v in ran}
        base = {k: t for k, t in times.items() if not names or k in names} or times
        if not base:
            continue
        fastest = min(base, key=base.get)
        slowest = max(base, key=base.get)
        for _, v in ran:
            t = v.test_seconds.mean
            v.increase_vs_fastest = Increase(fastest, 100 * (t / base[fastest] - 1))
            v.increase_vs_slowest = Increase(slowest, 100 * (t / base[slowest] - 1))

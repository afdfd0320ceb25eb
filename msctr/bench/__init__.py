"""`msctr bench-inference RECIPE`: what each model costs to run, measured the same way for all.

Per model (its trained checkpoint when the run exists, else a freshly initialised model, and
the table says which) and per variant (eager fp32, bf16 autocast, torch.compile, both): the
whole test split scored end to end, forward-only throughput and latency per batch size,
parameters, multiply-adds per sample, peak memory, and the test AUC of every variant checked
against eager fp32 (details in `measure`).

    measure   options, timing, loading models, `run_bench` -> BenchResult (writes bench.json)
    memory    peak memory of a forward (CUDA statistics, or a dispatch-mode tracker on CPU)
    results   the dataclasses, and bench.json's structure (to_dict / from_dict)
    render    the two tables, as rich or Markdown
    machine   CPU, cores, threads, torch, device, date, load (shared with benchmarks/)
"""

from msctr.bench.machine import machine
from msctr.bench.measure import (
    AUC_TOLERANCE,
    VARIANTS,
    BenchConfig,
    parse_int_list,
    run_bench,
)
from msctr.bench.memory import LiveTensorBytes
from msctr.bench.render import render
from msctr.bench.results import (
    BatchTiming,
    BenchResult,
    ModelBench,
    VariantBench,
    VariantFailed,
)

__all__ = [
    "AUC_TOLERANCE",
    "VARIANTS",
    "BatchTiming",
    "BenchConfig",
    "BenchResult",
    "LiveTensorBytes",
    "ModelBench",
    "VariantBench",
    "VariantFailed",
    "machine",
    "parse_int_list",
    "render",
    "run_bench",
]

"""What `msctr bench-inference` measures, as values: one `BenchResult` per run, holding a
`ModelBench` per model, a `VariantBench` (or `VariantFailed`) per variant and a `BatchTiming`
per batch size. `to_dict()` gives bench.json's structure (keys, nesting and order) and
`from_dict()` reads it back: `BenchResult.from_dict(json.load(f)).to_dict()` is the file.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Summary:
    """Repeated runs of one measurement (seconds)."""

    mean: float
    std: float
    min: float
    max: float
    runs: list[float]

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.mean(values), std, min(values), max(values), values)

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "runs": self.runs,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Summary:
        return cls(d["mean"], d["std"], d["min"], d["max"], d["runs"])


@dataclass
class BatchTiming:
    """Forward-only calls on one batch size: throughput, latency quantiles, peak memory."""

    batch_size: int
    calls: int
    samples_per_s: float  # median over the repeats
    samples_per_s_min_max: list[float]  # [lowest, highest] over the repeats
    latency_ms: dict[str, float]  # p50, p90, p99 over every timed call
    peak_bytes: int | None = None  # weights + batch + the forward's own; None when compiled

    def to_dict(self) -> dict:
        out = {
            "batch_size": self.batch_size,
            "calls": self.calls,
            "samples_per_s": self.samples_per_s,
            "samples_per_s_min_max": self.samples_per_s_min_max,
            "latency_ms": self.latency_ms,
        }
        if self.peak_bytes is not None:
            out["peak_bytes"] = self.peak_bytes
        return out

    @classmethod
    def from_dict(cls, d: dict) -> BatchTiming:
        return cls(
            d["batch_size"],
            d["calls"],
            d["samples_per_s"],
            d["samples_per_s_min_max"],
            d["latency_ms"],
            d.get("peak_bytes"),
        )


@dataclass
class Increase:
    """A test-split time relative to a reference model's, in percent."""

    reference: str
    pct: float

    def to_dict(self) -> dict:
        return {"reference": self.reference, "pct": self.pct}

    @classmethod
    def from_dict(cls, d: dict) -> Increase:
        return cls(d["reference"], d["pct"])


@dataclass
class VariantBench:
    """One model run one way (eager, bf16, compile, compile-bf16)."""

    test_seconds: Summary  # the whole test split end to end
    read_seconds: Summary  # of which reading the Parquet file
    test_rows: int
    e2e_batch_size: int
    auc: float  # NaN when the rows scored hold one label only
    by_batch_size: list[BatchTiming]
    auc_diff_vs_eager: float | None = None  # variants other than eager, when eager ran
    auc_ok: bool | None = None  # |diff| within AUC_TOLERANCE
    increase_vs_fastest: Increase | None = None
    increase_vs_slowest: Increase | None = None

    def to_dict(self) -> dict:
        out = {
            "test_seconds": self.test_seconds.to_dict(),
            "read_seconds": self.read_seconds.to_dict(),
            "test_rows": self.test_rows,
            "e2e_batch_size": self.e2e_batch_size,
            "auc": self.auc,
            "by_batch_size": [b.to_dict() for b in self.by_batch_size],
        }
        if self.auc_diff_vs_eager is not None:
            out["auc_diff_vs_eager"] = self.auc_diff_vs_eager
            out["auc_ok"] = self.auc_ok
        if self.increase_vs_fastest is not None:
            out["increase_vs_fastest"] = self.increase_vs_fastest.to_dict()
        if self.increase_vs_slowest is not None:
            out["increase_vs_slowest"] = self.increase_vs_slowest.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> VariantBench:
        inc = {
            k: Increase.from_dict(d[k])
            for k in ("increase_vs_fastest", "increase_vs_slowest")
            if k in d
        }
        return cls(
            Summary.from_dict(d["test_seconds"]),
            Summary.from_dict(d["read_seconds"]),
            d["test_rows"],
            d["e2e_batch_size"],
            d["auc"],
            [BatchTiming.from_dict(b) for b in d["by_batch_size"]],
            d.get("auc_diff_vs_eager"),
            d.get("auc_ok"),
            **inc,
        )


@dataclass
class VariantFailed:
    """A compiled variant that could not be built or run (the benchmark goes on)."""

    error: str  # the exception's first line

    def to_dict(self) -> dict:
        return {"error": self.error}


Variant = VariantBench | VariantFailed


def variant_from_dict(d: dict) -> Variant:
    return VariantFailed(d["error"]) if "error" in d else VariantBench.from_dict(d)


@dataclass
class ModelBench:
    """One model of the recipe: its size, its cost per sample, and every variant's timings."""

    model: str  # the recipe's label
    name: str  # the registry name
    weights: str  # "trained checkpoint PATH" or "freshly initialised (...)"
    trained: bool
    parameters: int
    weight_bytes: int  # parameters and buffers
    macs_per_sample: dict[int, float] = field(default_factory=dict)  # per batch size
    variants: dict[str, Variant] = field(default_factory=dict)
    macs_per_sample_e2e: float = 0.0  # at the end-to-end batch size

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "name": self.name,
            "weights": self.weights,
            "trained": self.trained,
            "parameters": self.parameters,
            "weight_bytes": self.weight_bytes,
            "macs_per_sample": {str(bs): n for bs, n in self.macs_per_sample.items()},
            "variants": {k: v.to_dict() for k, v in self.variants.items()},
            "macs_per_sample_e2e": self.macs_per_sample_e2e,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelBench:
        return cls(
            d["model"],
            d["name"],
            d["weights"],
            d["trained"],
            d["parameters"],
            d["weight_bytes"],
            {int(bs): n for bs, n in d["macs_per_sample"].items()},
            {k: variant_from_dict(v) for k, v in d["variants"].items()},
            d["macs_per_sample_e2e"],
        )


@dataclass
class BenchResult:
    """A whole bench-inference run: what was measured, where, how, and each model's results."""

    recipe: str
    data: str
    test_rows: int
    seed: int
    machine: dict  # msctr.bench.machine.machine(), plus "loadavg_end"
    batch_sizes: list[int]
    variants: list[str]
    repeats: int
    e2e_batch_size: int
    models: list[ModelBench] = field(default_factory=list)
    path: str | None = None  # where bench.json was written (not part of it)

    def to_dict(self) -> dict:
        return {
            "recipe": self.recipe,
            "data": self.data,
            "test_rows": self.test_rows,
            "seed": self.seed,
            "machine": self.machine,
            "config": {
                "batch_sizes": self.batch_sizes,
                "variants": self.variants,
                "repeats": self.repeats,
                "e2e_batch_size": self.e2e_batch_size,
            },
            "models": [m.to_dict() for m in self.models],
        }

    @classmethod
    def from_dict(cls, d: dict) -> BenchResult:
        c = d["config"]
        return cls(
            d["recipe"],
            d["data"],
            d["test_rows"],
            d["seed"],
            d["machine"],
            c["batch_sizes"],
            c["variants"],
            c["repeats"],
            c["e2e_batch_size"],
            [ModelBench.from_dict(m) for m in d["models"]],
            d.get("path"),
        )


def is_bench_file(path: Path) -> bool:
    """Whether `path` is a bench.json msctr wrote (it reads back as a `BenchResult`): such a
    file may be replaced by a new benchmark; any other file is the user's."""
    try:
        BenchResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return False
    return True

"""Rendering a `BenchResult`: the test-split table with its legend and notes, and the
forward-only table per batch size, as `msctr.tables.Table` rows (rich or Markdown)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from msctr.bench.measure import AUC_TOLERANCE
from msctr.bench.results import BenchResult, VariantBench, VariantFailed
from msctr.tables import Table


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def _macs(n: float) -> str:
    return f"{n / 1e6:,.2f}M" if n >= 1e5 else f"{n / 1e3:,.1f}k"


def _checked(result: BenchResult) -> list[str]:
    """The variants compared with eager fp32 (none when eager did not run)."""
    return [v for v in result.variants if v != "eager"] if "eager" in result.variants else []


def inference_table(result: BenchResult) -> tuple[Table, list[str]]:
    """Per model: size, multiply-adds, AUC and every variant's test-split seconds; and the
    notes to print under it (failed variants, untrained models)."""
    checked = _checked(result)
    header = ["Model", "params", "MACs/sample", "AUC"]
    for v in result.variants:
        header += [f"{v} s", "vs fastest"]
    header += ["max |AUC diff|"] * bool(checked)
    rows, notes = [], []
    for m in result.models:
        runs = m.variants
        ran = [r for r in runs.values() if isinstance(r, VariantBench)]
        auc0 = ran[0].auc if ran else float("nan")
        eager = runs.get("eager")
        cells = [m.model, f"{m.parameters:,}", _macs(m.macs_per_sample_e2e)]
        cells.append(f"{eager.auc if isinstance(eager, VariantBench) else auc0:.4f}")
        for v in result.variants:
            r = runs[v]
            if isinstance(r, VariantFailed):
                cells += ["failed", "-"]
                notes.append(f"{m.model} {v}: {r.error}")
                continue
            ts = r.test_seconds
            cells.append(f"{ts.mean:.3f} ±{ts.std:.3f}")
            cells.append(f"{r.increase_vs_fastest.pct:+.1f}%")
        if checked:
            diffs = [
                r.auc_diff_vs_eager
                for v in checked
                if isinstance(r := runs[v], VariantBench) and r.auc_diff_vs_eager is not None
            ]
            worst = max(map(abs, diffs), default=float("nan"))
            cells.append(f"{worst:.4f}" + ("" if worst <= AUC_TOLERANCE else " !"))
        rows.append(cells)
        if not m.trained:
            notes.append(f"{m.model}: {m.weights}; its AUC is that of an untrained model")
    title = (
        f"{result.recipe}: inference time on the whole test split "
        f"({result.test_rows:,} rows, read + batch + forward; seconds)"
    )
    return Table(header, rows, title=title), notes


def legend(result: BenchResult) -> str:
    m0 = result.machine
    refs = {
        v: r.increase_vs_fastest.reference
        for m in result.models
        for v, r in m.variants.items()
        if isinstance(r, VariantBench) and r.increase_vs_fastest is not None
    }
    ref = ", ".join(f"{k} for {v}" for v, k in refs.items())
    return (
        f"mean ±std over {result.repeats} runs after a warm-up run, "
        f"batch {result.e2e_batch_size}; 'vs fastest' relative to the fastest "
        f"baseline: {ref}; "
        f"AUC: eager fp32 on the test split; max |AUC diff|: largest difference of the other "
        f"variants from it ('!' above {AUC_TOLERANCE}). "
        f"{m0['cpu']}, {_threads(m0)}, device {m0['device']}, torch {m0['torch']}, "
        f"{m0['date']}" + (f", load {m0['loadavg'][0]:.2f}" if "loadavg" in m0 else "")
    )


def _threads(machine: dict) -> str:
    """'2 threads', or with the mean count used when the load changed it (msctr.cores)."""
    text = f"{machine['threads']} threads"
    used = machine.get("threads_used")  # absent from files of older versions
    if used is not None and used != machine["threads"]:
        text += f" (mean {used:g} used: other processes kept cores busy)"
    return text


def forward_table(result: BenchResult) -> Table:
    """Per model, variant and batch size: forward-only throughput, latency, peak memory."""
    header = ["Model", "variant", "batch", "samples/s", "min-max"]
    header += ["p50 ms", "p90 ms", "p99 ms", "peak MB"]
    rows = []
    for m in result.models:
        for v in result.variants:
            r = m.variants.get(v)
            for b in r.by_batch_size if isinstance(r, VariantBench) else []:
                lo, hi = b.samples_per_s_min_max
                lat = b.latency_ms
                rows.append(
                    [
                        m.model,
                        v,
                        f"{b.batch_size:,}",
                        f"{b.samples_per_s:,.0f}",
                        f"{lo:,.0f}-{hi:,.0f}",
                        f"{lat['p50']:.3f}",
                        f"{lat['p90']:.3f}",
                        f"{lat['p99']:.3f}",
                        _mb(b.peak_bytes),
                    ]
                )
    return Table(header, rows, title="forward only, per batch size", left=2)


def render(result: BenchResult | dict, console: Console) -> None:
    """Both tables, the legend and the notes; a dict is read as bench.json's structure."""
    if isinstance(result, dict):
        result = BenchResult.from_dict(result)
    table, notes = inference_table(result)
    console.print(table.to_rich())
    console.print(legend(result))
    for n in notes:
        console.print(f"note: {escape(n)}")
    console.print(forward_table(result).to_rich())
    console.print(f"wrote {escape(str(result.path))}")

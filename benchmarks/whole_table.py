"""The wall time of a whole paper table as a user runs it, projected to full scale.

    python benchmarks/whole_table.py                                # hierrec.yaml, 100k + 300k
    python benchmarks/whole_table.py --sizes 50000,150000 --threads 1 --json table.json
    python benchmarks/whole_table.py --models HierRec --sizes 100000,300000

Writes raw KuaiRand-1K-shaped files (msctr.testing.rawgen: planted signal, 1,000 users,
videos scaled with the rows) at each size, prepares them with the recipe's own `prepare:`
line (`msctr prepare kuairand --variant 1k --setup hierrec --seq-len 0`), and for every model
of the recipe, with the recipe's params and train keys, measures at each size:

- one real epoch and run through the training loop (`fit_one`: train, score val,
  checkpoints, the resume state, score test, write predictions), with its train seconds
  from the run's log;
- where a training step's time goes (data, forward, backward, optimizer), from a few more
  steps timed by calling `train_step`'s phases (`forward_loss`, `backward`, the
  optimizer's step) in turn;
- scoring val alone (`predict`: evaluation).

Every time is scaled to one fp32 matmul rate (measured around each model: the CPU share a
shared machine gave it), each part fitted as b * rows through the two sizes (least squares;
the printed scaling compares their epoch times with their rows) and evaluated at the full
size (`--full-rows`, 4.26 M training rows: KuaiRand-1K's second period in the 5 tabs, 80 %
of 5.33 M). A run is `--epochs` epochs (default 4: the best validation logloss at epoch 2, then
the recipe's patience of 2; 3 if the best is the first, the recipe's `epochs` if it never
stops) of train + val scoring + checkpoints, then test; the table is every model times the
recipe's seeds, plus preparing the data once and loading it once per `msctr train`. Prints
the projection against `--goal-hours` (4), the largest cost, and the bound: every model's
matmul FLOPs (torch's flop counter, per training and per scored row) at the matmul peak of
`--precision` (fp32, or bf16 autocast: the table as `train.precision: bf16` runs it), the
time no implementation of these models could beat on this CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from timing import timed  # benchmarks/timing.py, beside this script
from train_throughput import endless_batches, matmul_peak, step_phase_seconds

from msctr import flops
from msctr.bench.machine import machine
from msctr.models.registry import build
from msctr.recipe import load_recipe
from msctr.train.loop import fit_one, predict
from msctr.train.optim import make_optimizer
from msctr.train.runtime import keep_freed_memory, seed_everything
from msctr.train.splits import SplitData

ROOT = Path(__file__).resolve().parent.parent
# KuaiRand-1K: 11.7 M standard-log rows over both periods, 4.4 M videos; the hierrec setup keeps
# the second period's 5 tabs, 4.26 M of them for training
FULL_LOG_ROWS, FULL_VIDEOS, FULL_TRAIN_ROWS = 11_700_000, 4_400_000, 4_260_000


def make_data(train_rows: int, root: Path, prepare: str, threads: int) -> tuple[Path, float]:
    """Raw KuaiRand-1K-shaped files giving about `train_rows` training rows, prepared with the
    recipe's prepare line; returns the folder and prepare's wall seconds."""
    from msctr.testing.rawgen import write_kuairand

    log_rows = math.ceil(train_rows * FULL_LOG_ROWS / FULL_TRAIN_ROWS)
    raw, out = root / f"raw-{train_rows}", root / f"prepared-{train_rows}"
    if not raw.is_dir():
        write_kuairand(
            raw,
            rows=log_rows,
            scenarios=15,
            seed=0,
            users=1_000,
            videos=max(1, round(FULL_VIDEOS * log_rows / FULL_LOG_ROWS)),
            statistics=False,
        )
    words = shlex.split(prepare)
    if words[:2] != ["msctr", "prepare"] or "--out" not in words:
        sys.exit(f"error: the recipe's prepare line is not `msctr prepare ... --out D`: {prepare}")
    i = words.index("--out")
    words[i + 1] = str(out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "msctr.cli", *words[1:], "--raw-dir", str(raw)]
    return out, timed(cmd, threads)["seconds"]


def step_phases(entry, recipe, data: SplitData, steps: int, warmup: int) -> dict[str, float]:
    """Median seconds per training step by phase (data, forward, backward, optimizer)."""
    t = recipe.train
    seed_everything(0)
    model = build(entry.name, data.schema, entry.model_params).train()
    optimizer = make_optimizer(model, t)
    device = torch.device("cpu")
    batches = endless_batches(data, recipe)
    times = step_phase_seconds(model, optimizer, batches, device, t.precision, steps, warmup)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(entry, recipe, data: SplitData, tmp: Path, steps: int, warmup: int) -> dict:
    """One real epoch and run, the step's phases, and scoring val alone, in seconds."""
    t = replace(
        recipe.train,
        epochs=1,
        seeds=[0],
        early_stopping=replace(recipe.train.early_stopping, patience=1),
    )
    r = replace(recipe, train=t)
    run = tmp / f"{entry.key}-{data.train_rows}"
    peak = matmul_peak(torch.float32) / 1e9
    t0 = time.perf_counter()
    fit_one(r, entry, 0, data, run)
    wall = time.perf_counter() - t0
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    train_s = sum(x["samples"] / x["samples_per_s"] for x in log)
    shutil.rmtree(run, ignore_errors=True)

    seed_everything(0)
    model = build(entry.name, data.schema, entry.model_params).eval()
    t0 = time.perf_counter()
    predict(model, data.val, t.eval_batch_size, torch.device("cpu"), t.precision)
    val_s = time.perf_counter() - t0
    phases = step_phases(entry, r, data, steps, warmup)
    batch = next(iter(data.train_batches(t.batch_size, seed=0, epoch=0)))
    train_flops = flops.train_step_flops(model, batch).flops_per_sample
    eval_flops = flops.forward_flops(model, batch).flops_per_sample
    peak = (peak + matmul_peak(torch.float32) / 1e9) / 2
    return {
        "rows": data.train_rows,
        "gflops": peak,  # the fp32 matmul rate before and after: the CPU this process got
        "val_rows": len(data.val_labels),
        "run_s": wall,
        "epoch_train_s": train_s,
        "val_score_s": val_s,
        # model build, the checkpoints and resume state, scoring test and writing predictions
        "rest_s": max(wall - train_s - val_s, 0.0),
        "step_phases_s": phases,
        # the FLOPs a row costs (matmuls, counted by torch.utils.flop_counter): training
        # (forward + backward) and scoring, for the bound no implementation can beat
        "train_flops_per_row": train_flops,
        "eval_flops_per_row": eval_flops,
    }


def through_origin(points: list[tuple[float, float]], x: float) -> float:
    """y at x on the least-squares line through the origin and `points` (rows, seconds):
    a training epoch's fixed cost is small next to its rows' (the first calls are warmed up
    before), and a free intercept from two points measured on a shared machine turns a 20 %
    error at either point into 40 % on the slope, which the step to full scale multiplies."""
    return x * sum(a * b for a, b in points) / sum(a * a for a, _ in points)


def project(
    name: str, small: dict, big: dict, full: int, epochs: int, seeds: int, gflops: float
) -> dict[str, float]:
    """One model's time in the whole table at `full` training rows, by part (seconds), with
    every measured time first scaled to a CPU that multiplies matrices at `gflops` (times
    the fp32 matmul rate measured around it, over `gflops`): on a shared machine the
    process's share of the CPU moves from minute to minute, and the two sizes are measured
    minutes apart."""

    def at(key: str) -> float:
        ms = (small, big) if small is not big else (big,)
        return through_origin([(m["rows"], m[key] * m["gflops"] / gflops) for m in ms], full)

    train = at("epoch_train_s")
    ph = big["step_phases_s"]
    step = sum(ph.values())
    share = {k: v / step for k, v in ph.items()}
    val, rest = at("val_score_s"), at("rest_s")
    # rest = build + checkpoints + resume state + test scoring + predictions: test is one
    # more val-sized scoring per run, the rest is counted once per epoch (checkpoints)
    per_run = {
        "data": train * share["data"] * epochs,
        "forward": train * share["forward"] * epochs,
        "backward": train * share["backward"] * epochs,
        "optimizer": train * share["optimizer"] * epochs,
        "evaluation": val * epochs + val,
        "checkpoints etc.": max(rest - val, 0.0) * epochs,
    }
    # the matmuls alone at the full rate: training rows every epoch, val every epoch and test
    # once (val-sized)
    scored = through_origin([(m["rows"], m["val_rows"]) for m in (small, big)], full)
    flop = big.get("train_flops_per_row", 0.0) * full * epochs
    flop += big.get("eval_flops_per_row", 0.0) * scored * (epochs + 1)
    return {
        "model": name,
        "epoch_s": train,
        "bound_s": flop * seeds / (gflops * 1e9),
        "run_s": sum(per_run.values()),
        "table_s": sum(per_run.values()) * seeds,
        "parts_s": {k: v * seeds for k, v in per_run.items()},
        "scaling": (big["epoch_train_s"] * big["gflops"])
        / (small["epoch_train_s"] * small["gflops"])
        if small is not big
        else None,
        "rows_ratio": big["rows"] / small["rows"],
    }


def hours(s: float) -> str:
    return f"{s / 3600:.2f} h"


def run_measurements(args, recipe, entries, sizes: list[int]) -> tuple:
    """Generate, prepare and load each size, then measure every model on it."""
    info = machine()
    print(
        f"{info['cpu']}, {info['logical_cores']} logical cores, torch {info['torch']}, "
        f"{args.threads} threads, {info['date']}, load {info['loadavg'][0]:.2f}",
        flush=True,
    )
    root = args.root or Path(tempfile.mkdtemp(prefix="msctr-whole-table-"))
    measured: dict[str, list[dict]] = {e.key: [] for e in entries}
    prep_s, load_s = [], []
    # on a shared machine the rate of a dense matmul says how much of the CPU this process got
    peaks = [matmul_peak(torch.float32) / 1e9]
    print(f"fp32 matmul peak now: {peaks[0]:.0f} GFLOP/s ({args.threads} threads)", flush=True)
    # how much faster this CPU multiplies bf16 matrices than fp32 ones (for the bf16 bound)
    bf16_speedup = matmul_peak(torch.bfloat16) / matmul_peak(torch.float32)
    print(f"bf16 matmul peak: {bf16_speedup:.2f}x fp32's", flush=True)
    try:
        for n in sizes:
            folder, seconds = make_data(n, root, recipe.prepare or "", args.threads)
            prep_s.append(seconds)
            r = replace(recipe, data=str(folder))
            t0 = time.perf_counter()
            data = SplitData.load(r)
            load_s.append(time.perf_counter() - t0)
            print(
                f"{data.train_rows:,} train rows ({n:,} asked): prepare {seconds:.1f} s, "
                f"load {load_s[-1]:.1f} s",
                flush=True,
            )
            if n == sizes[0]:  # first fit_one, first writes: not counted
                warm = replace(r.train, max_steps_per_epoch=2, epochs=1, seeds=[0])
                fit_one(replace(r, train=warm), entries[0], 0, data, root / "warm-up")
                shutil.rmtree(root / "warm-up", ignore_errors=True)
            for e in entries:
                m = measure(e, r, data, root, args.steps, args.warmup)
                measured[e.key].append(m)
                ph = m["step_phases_s"]
                print(
                    f"  {e.key:>12}: [{m['gflops']:3.0f} GFLOP/s] "
                    f"epoch {m['epoch_train_s']:7.1f} s train, val scoring "
                    f"{m['val_score_s']:5.1f} s, rest {m['rest_s']:5.1f} s; step "
                    + " + ".join(f"{k} {v * 1000:.1f}" for k, v in ph.items())
                    + " ms",
                    flush=True,
                )
            del data
    finally:
        if not args.keep and args.root is None:
            shutil.rmtree(root, ignore_errors=True)

    peaks.append(matmul_peak(torch.float32) / 1e9)
    return info, measured, prep_s, load_s, peaks, bf16_speedup


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes/kuairand/hierrec.yaml")
    ap.add_argument("--sizes", default="100000,300000", help="training rows of the two sizes")
    ap.add_argument("--models", help="labels, comma-separated (default: every model)")
    ap.add_argument("--full-rows", type=int, default=FULL_TRAIN_ROWS)
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (early stopping)")
    ap.add_argument("--threads", type=int, default=2, help="torch and Polars threads")
    ap.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="train.precision to measure"
    )
    ap.add_argument("--steps", type=int, default=6, help="steps timed by phase")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--goal-hours", type=float, default=4.0)
    ap.add_argument(
        "--gflops",
        type=float,
        help="project for a CPU with this fp32 matmul rate (default: the median measured)",
    )
    ap.add_argument("--root", type=Path, help="data folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--from-json", type=Path, help="project what an earlier --json run measured")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    recipe = load_recipe(args.recipe)
    recipe = replace(recipe, train=replace(recipe.train, precision=args.precision))
    entries = recipe.models
    if args.models:
        wanted = args.models.split(",")
        entries = [e for e in entries if e.key in wanted or e.name in wanted]
        if not entries:
            sys.exit(f"error: none of {wanted} is in {args.recipe}")
    sizes = sorted(int(x) for x in args.sizes.split(","))
    if len(sizes) not in (1, 2):
        sys.exit("error: --sizes takes one or two row counts")
    if args.from_json:  # project measurements saved by an earlier run
        saved = json.loads(args.from_json.read_text())
        info, measured = saved["machine"], saved["measured"]
        prep_s, load_s, peaks = saved["prepare_s"], saved["load_s"], saved["matmul_peak_gflops"]
        bf16_speedup = saved.get("bf16_matmul_speedup", 1.0)
        args.precision = saved["args"].get("precision", "fp32")
        print(f"measured {info['date']}, {info['cpu']}, load {info['loadavg'][0]:.2f} then")
    else:
        info, measured, prep_s, load_s, peaks, bf16_speedup = run_measurements(
            args, recipe, entries, sizes
        )
    result: dict = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}}

    rows = [m["rows"] for m in next(iter(measured.values()))]
    seeds = len(recipe.train.seeds)
    full = args.full_rows
    rates = [m["gflops"] for ms in measured.values() for m in ms]
    gflops = args.gflops or statistics.median(rates)
    proj = [
        project(k, ms[0], ms[-1], full, args.epochs, seeds, gflops) for k, ms in measured.items()
    ]
    prep = through_origin(list(zip(rows, prep_s)), full)
    load = through_origin(list(zip(rows, load_s)), full)
    total = prep + load + sum(p["table_s"] for p in proj)
    print(
        f"\nfp32 matmul rate around the measurements: {min(rates):.0f}-{max(rates):.0f} "
        "GFLOP/s; "
        f"every time scaled to {gflops:.0f} GFLOP/s"
        + (" (--gflops)" if args.gflops else " (their median)")
    )
    print(
        f"projected at {full:,} train rows: {seeds} seeds x {args.epochs} epochs per run "
        f"(recipe: up to {recipe.train.epochs}, early stopping on "
        f"{recipe.train.early_stopping.metric}, patience {recipe.train.early_stopping.patience})"
    )
    parts = list(proj[0]["parts_s"])
    print(f"{'model':>12} {'epoch':>8} {'scaling':>14} {'table':>9}  " + "  ".join(parts))
    for p in proj:
        sc = "" if p["scaling"] is None else f"{p['scaling']:.2f}x/{p['rows_ratio']:.2f}x"
        print(
            f"{p['model']:>12} {p['epoch_s'] / 60:6.1f} m {sc:>14} {hours(p['table_s']):>9}  "
            + "  ".join(f"{hours(v):>{len(k)}}" for k, v in p["parts_s"].items())
        )
    print(f"{'prepare':>12} {hours(prep):>34}\n{'load':>12} {hours(load):>34}")
    print(f"{'total':>12} {hours(total):>34}   goal {args.goal_hours:g} h on 2 cores: "
          f"{'met' if total <= args.goal_hours * 3600 else 'missed'}")  # fmt: skip
    bound = sum(p["bound_s"] for p in proj)
    if bound:
        # the rate a matmul of the precision measured reaches on this machine, scaled as above
        rate = gflops * (bf16_speedup if args.precision == "bf16" else 1.0)
        bound = bound * gflops / rate
        print(
            f"{'bound':>12} {hours(bound):>34}   every model's matmul FLOPs at {rate:.0f} "
            f"GFLOP/s ({args.precision} matmul peak): the table runs at "
            f"{bound / (total - prep - load):.0%} of it"
        )
    biggest = max(proj, key=lambda p: p["table_s"])
    part = max(biggest["parts_s"], key=biggest["parts_s"].get)
    print(
        f"largest cost: {biggest['model']} ({biggest['table_s'] / total:.0%} of the total), "
        f"its {part} {hours(biggest['parts_s'][part])}"
    )
    if not args.from_json:
        print(
            f"load average at the end: {machine()['loadavg'][0]:.2f}; fp32 matmul peak "
            f"{peaks[0]:.0f} GFLOP/s at the start, {peaks[1]:.0f} at the end"
        )
    if args.json:
        result.update(
            measured=measured,
            projection=proj,
            prepare_s=prep_s,
            load_s=load_s,
            projected_prepare_s=prep,
            projected_load_s=load,
            total_s=total,
            projected_for_gflops=gflops,
            matmul_peak_gflops=peaks,
            bf16_matmul_speedup=bf16_speedup,
            bound_s=bound,
        )
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

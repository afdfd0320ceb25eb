"""Training throughput of every model on the same prepared data, against the machine's limit.

    python benchmarks/train_throughput.py                       # prepares /tmp data if needed
    python benchmarks/train_throughput.py --data data/synthetic --threads 2 --json out.json
    python benchmarks/train_throughput.py --device cuda --json gpu.json     # on the GPU
    python benchmarks/train_throughput.py --recipe recipes/kuairand/hierrec.yaml --data D \\
        --table-rows ''

For each model and precision it trains a fixed number of steps through the training loop's own
pieces (loader, `make_optimizer`, autocast) and reports samples/s, where the step time goes
(data, embedding, dense network, optimizer), the FLOPs per sample counted by
`torch.utils.flop_counter`, and the achieved FLOP rate as a fraction of the dense matmul
peak measured in the same run, right before each model (on a shared machine the peak moves
with the load, so each model is compared with the peak of its own moment). Then it checks
the targets of docs/bench.md, trains HierRec in fp32 and bf16 to compare validation AUC, and
times one step against embedding tables of growing size (dense vs row-sparse updates).

`--device cuda` does all of it on the GPU: model, optimizer and batches there, every timed
region closed by `torch.cuda.synchronize` (kernels run asynchronously: without it the clock
reads the launch, not the work), the matmul peak measured on the GPU, bf16 autocast on CUDA.
`--recipe` takes the models (with their params) and the train keys from a recipe instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from msctr import flops
from msctr.bench.machine import machine
from msctr.data.schema import Schema
from msctr.models.embedding import FeatureEmbedding
from msctr.models.registry import build, parse_params
from msctr.recipe import ModelEntry, Recipe, TrainConfig, load_recipe
from msctr.train.loop import backward, fit_one, forward_loss, train_step
from msctr.train.optim import make_optimizer
from msctr.train.runtime import autocast, keep_freed_memory, seed_everything
from msctr.train.splits import SplitData

LIGHT = ("dnn", "shared_bottom", "mmoe", "ple", "star")
DEFAULT_MODELS = (*LIGHT, "hierrec")


CPU = torch.device("cpu")


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels, so that the clock read next covers their work
    (CUDA runs them asynchronously; on the CPU every op has finished when it returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_of(name: str) -> torch.device:
    """`--device`: cpu, or cuda / cuda:N where a GPU is; anything else ends in one line."""
    if name != "cpu" and not (name == "cuda" or name.startswith("cuda:")):
        sys.exit(f"error: --device must be cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"error: --device {name}: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def machine_info(device: torch.device = CPU) -> dict:
    """msctr's `machine()` in this script's JSON shape: its keys in its order, ISO date (and
    the device and GPU name when not on the CPU)."""
    m = machine(None if device.type == "cpu" else device)
    info = {
        "cpu": m["cpu"],
        "logical_cores": m["logical_cores"],
        "torch": m["torch"],
        "threads": m["threads"],
        "date": dt.datetime.strptime(m["date"], "%Y-%m-%dT%H:%M:%S%z").isoformat(),
        "loadavg_start": m["loadavg"],
    }
    if device.type != "cpu":
        info["device"], info["gpu"] = m["device"], m.get("gpu")
    return info


def matmul_peak(
    dtype: torch.dtype, seconds: float = 1.0, n: int = 2048, device: torch.device = CPU
) -> float:
    """Best FLOP/s of an n x n x n matmul over short windows (the machine's dense limit).

    The size grows from 128 to n while one product takes under 20 ms: a CPU without bf16
    units multiplies bf16 2048 x 2048 matrices at well under 1 GFLOP/s, a minute a product.
    On a GPU (n = 8192 there: 2048^3 is too small to fill one) every window ends with a
    synchronize, so the products counted are the products done.
    """
    size = 128
    while True:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if size >= n or time.perf_counter() - t0 > 0.02:
            break
        size *= 2
    n = size
    a @ b
    sync(device)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.1:
            a @ b
            k += 1
            if device.type != "cpu" and k % 8 == 0:
                sync(device)  # the queue stays short: the window's clock covers its work
        sync(device)
        best = max(best, 2 * n**3 * k / (time.perf_counter() - t0))
    return best


def endless_batches(data: SplitData, recipe: Recipe):
    epoch = 0
    while True:
        yield from data.train_batches(recipe.train.batch_size, seed=0, epoch=epoch)
        epoch += 1


def embedding_ms(
    model: torch.nn.Module, batch, precision: str, reps: int = 7, device: torch.device = CPU
) -> float:
    """Median time of the embedding layer's forward and backward for this batch, timed alone
    (every model here reads its inputs through `FeatureEmbedding.fields` and `.scenario`)."""
    embs = [m for m in model.modules() if isinstance(m, FeatureEmbedding)]
    ts = []
    for i in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        for emb in embs:
            with autocast(device, precision):
                out = torch.cat([emb.fields(batch).flatten(1), emb.scenario(batch)], 1)
            out.backward(torch.ones_like(out))
        sync(device)
        if i:  # the first run warms up
            ts.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return statistics.median(ts) * 1000


def step_phase_seconds(
    model, optimizer, batches, device, precision: str, steps: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds of each phase of loop.train_step (cutting the batch, `forward_loss`,
    `backward`, the optimizer's step), called in turn so that each is timed, over `steps`
    steps of `batches` after `warmup` untimed ones. On CUDA each phase ends with a
    synchronize, so its time is its kernels' (the step as a whole is then slightly slower
    than one that overlaps the next launch with the last kernel)."""
    times: dict[str, list[float]] = {"data": [], "forward": [], "backward": [], "optimizer": []}
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        batch = next(batches).to(device)
        sync(device)
        t1 = time.perf_counter()
        _, total = forward_loss(model, batch, device, precision)
        sync(device)
        t2 = time.perf_counter()
        backward(total, optimizer)
        sync(device)
        t3 = time.perf_counter()
        optimizer.step()
        sync(device)
        t4 = time.perf_counter()
        if i >= warmup:
            for k, a, b in zip(times, (t0, t1, t2, t3), (t1, t2, t3, t4), strict=True):
                times[k].append(b - a)
    return times


def measure(
    name: str,
    data: SplitData,
    recipe: Recipe,
    precision: str,
    steps: int,
    warmup: int,
    device: torch.device = CPU,
    entry: ModelEntry | None = None,
) -> dict:
    """`entry`: the model with a recipe's params and label (default: `name`'s defaults)."""
    t = replace(recipe.train, precision=precision)
    seed_everything(0)
    params = entry.model_params if entry else parse_params(name, {})
    model = build(name, data.schema, params).to(device)
    optimizer = make_optimizer(model, t)  # after the move: fused Adam on the device's tensors
    model.train()
    batches = endless_batches(data, recipe)
    times = step_phase_seconds(model, optimizer, batches, device, precision, steps, warmup)
    batch = next(batches).to(device)
    emb = embedding_ms(model, batch, precision, device=device)
    count = flops.train_step_flops(model, batch)
    fwd = flops.forward_flops(model, batch)

    # medians per phase: robust to another process taking the core for a moment
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    step_ms = sum(med.values())
    compute_ms = med["forward"] + med["backward"]
    emb = min(emb, compute_ms)
    per_step = [sum(x) for x in zip(*times.values())]
    rate = len(batch) / (step_ms / 1000)
    row = {
        "model": name,
        "precision": precision,
        "batch_size": len(batch),
        "steps": steps,
        "samples_per_s": rate,
        "step_ms": step_ms,
        "step_ms_p10_p90": [
            statistics.quantiles(per_step, n=10)[0] * 1000,
            statistics.quantiles(per_step, n=10)[-1] * 1000,
        ],
        "ms": {
            "data": med["data"],
            "embedding": emb,
            "dense": compute_ms - emb,
            "optimizer": med["optimizer"],
        },
        "train_flops_per_sample": count.flops_per_sample,
        "forward_macs_per_sample": fwd.macs_per_sample,
        "achieved_gflops": count.flops_per_sample * rate / 1e9,
    }
    if entry is not None:
        row["label"] = entry.key
    return row


def auc_check(
    data: SplitData, recipe: Recipe, name: str, epochs: int, out: Path, device: str = "cpu"
) -> dict:
    """Train `name` in fp32 and in bf16 with the same seed and data order; best val AUC each."""
    res = {}
    for precision in ("fp32", "bf16"):
        t = replace(
            recipe.train,
            device=device,
            precision=precision,
            epochs=epochs,
            seeds=[0],
            early_stopping=replace(recipe.train.early_stopping, patience=epochs),
        )
        r = replace(recipe, train=t)
        run = out / f"{name}-{precision}"
        summary = fit_one(r, ModelEntry(name), 0, data, run)
        log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        res[precision] = {
            "val_auc": max(x["val_auc"] for x in log),
            "samples_per_s": statistics.mean(x["samples_per_s"] for x in log),
            "train_seconds": summary["train_seconds"],
        }
    res["auc_diff"] = res["bf16"]["val_auc"] - res["fp32"]["val_auc"]
    return res


def table_scaling(
    schema: Schema, data: SplitData, recipe: Recipe, rows: list[int], device: torch.device = CPU
) -> list:
    """One DNN step with the item table grown to `rows` rows (the ids stay as they are), with
    dense gradients + Adam vs row-sparse gradients + LazyAdam: the second must stay flat."""
    batch = next(iter(data.train_batches(recipe.train.batch_size, seed=0, epoch=0))).to(device)
    out = []
    for n in rows:
        big = Schema.from_dict(schema.to_dict())
        item = big.sparse_index("item_id")
        big.sparse[item].vocab_size = max(n, schema.sparse[item].vocab_size)
        for sparse in (False, True):
            seed_everything(0)
            model = build("dnn", big, parse_params("dnn", {})).to(device)
            opt = make_optimizer(model, replace(recipe.train, sparse_embeddings=sparse))
            ts = []
            for i in range(6):
                sync(device)
                t0 = time.perf_counter()
                train_step(model, batch, opt, device, "fp32")
                sync(device)
                if i >= 2:
                    ts.append(time.perf_counter() - t0)
            out.append({"table_rows": n, "sparse": sparse, "step_ms": statistics.median(ts) * 1000})
            del model, opt
    return out


def prepare_data(rows: int) -> Path:
    folder = Path(tempfile.gettempdir()) / f"msctr-bench-synthetic-{rows}"
    if not (folder / "schema.json").is_file():
        cmd = [sys.executable, "-m", "msctr.cli", "prepare", "synthetic", "--out", str(folder)]
        subprocess.run([*cmd, "--rows", str(rows)], check=True, stdout=subprocess.DEVNULL)
    return folder


def check_targets(rows: list[dict], auc: dict | None) -> list[tuple[str, bool | None, str]]:
    by = {(r["model"], r["precision"]): r for r in rows}
    checks = []
    for r in rows:
        share = r["ms"]["data"] / r["step_ms"]
        checks.append(
            (f"data < 10% of step: {r['model']} {r['precision']}", share < 0.10, f"{share:.1%}")
        )
    h32, h16 = by.get(("hierrec", "fp32")), by.get(("hierrec", "bf16"))
    if h32:
        frac = h32["peak_fraction"]
        checks.append(("HierRec fp32 >= 50% of fp32 matmul peak", frac >= 0.5, f"{frac:.1%}"))
    if h32 and h16:
        x = h16["samples_per_s"] / h32["samples_per_s"]
        checks.append(("HierRec bf16 >= 1.5x its fp32 throughput", x >= 1.5, f"{x:.2f}x"))
    if auc:
        d = auc["auc_diff"]
        checks.append(("HierRec bf16 val AUC within 0.002 of fp32", abs(d) <= 0.002, f"{d:+.4f}"))
    for m in LIGHT:
        mine = [r for r in rows if r["model"] == m]
        best = max(mine, key=lambda r: r["samples_per_s"], default=None)
        if best:
            ok = best["samples_per_s"] >= 50_000
            checks.append(
                (f"{m} >= 50k samples/s", ok, f"{best['samples_per_s']:,.0f} ({best['precision']})")
            )
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, help="prepared dataset (default: synthetic in /tmp)")
    ap.add_argument("--rows", type=int, default=200_000, help="rows when preparing the data")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument(
        "--recipe", type=Path, help="models (with params) and train keys from this recipe"
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, help="default 2000, or the recipe's")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--auc-epochs", type=int, default=2, help="HierRec fp32 vs bf16; 0 = skip")
    ap.add_argument("--table-rows", default="10000,1000000,4000000", help="'' = skip")
    ap.add_argument("--json", type=Path, help="write all figures here")
    args = ap.parse_args(argv)

    device = device_of(args.device)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    entries: dict[str, ModelEntry | None] = {m: None for m in args.models.split(",")}
    if args.recipe:  # its models by label, its train keys (lr, weight decay, batch, tables)
        base = load_recipe(args.recipe)
        entries = {m.key: m for m in base.models}
        args.batch_size = args.batch_size or base.train.batch_size
        folder = args.data or Path(base.data)
        train = replace(base.train, batch_size=args.batch_size, device="cpu", precision="fp32")
    else:
        args.batch_size = args.batch_size or 2000
        folder = args.data or prepare_data(args.rows)
        train = TrainConfig(batch_size=args.batch_size, weight_decay=1e-6)
    info = machine_info(device)
    recipe = Recipe(name="bench", data=str(folder), models=[ModelEntry("dnn")], train=train)
    data = SplitData.load(recipe)
    gpu = f", {info['device']} {info['gpu']}" if device.type != "cpu" else ""
    print(
        f"{info['cpu']}, {info['logical_cores']} logical cores, torch {info['torch']}, "
        f"{args.threads} threads, {info['date']}, load {info['loadavg_start'][0]:.2f}{gpu}"
    )
    print(f"data {folder}: {data.train_rows:,} train rows; batch {args.batch_size}")
    if info["loadavg_start"][0] > (os.cpu_count() or 1) - 0.5 and args.threads > 1:
        print(
            "warning: the machine is busy (load above its cores); multi-threaded timings will "
            "be dominated by waiting for descheduled threads; compare with --threads 1"
        )

    rows, peaks = [], []
    n = 2048 if device.type == "cpu" else 8192  # a GPU needs the larger product to fill it
    for key, entry in entries.items():
        name = entry.name if entry else key
        # fp32 always (the reference of every peak fraction), bf16 when it is measured
        peak = {"fp32": matmul_peak(torch.float32, n=n, device=device)}
        if "bf16" in args.precisions.split(","):
            peak["bf16"] = matmul_peak(torch.bfloat16, n=n, device=device)
        peaks.append(peak)
        for precision in args.precisions.split(","):
            r = measure(name, data, recipe, precision, args.steps, args.warmup, device, entry)
            r["peak_gflops"] = {k: v / 1e9 for k, v in peak.items()}
            r["peak_fraction"] = r["achieved_gflops"] * 1e9 / peak["fp32"]
            r["peak_fraction_own"] = r["achieved_gflops"] * 1e9 / peak[precision]
            rows.append(r)
            ms = r["ms"]
            print(
                f"{key:>14} {precision}  {r['samples_per_s']:>9,.0f} samples/s  "
                f"step {r['step_ms']:6.1f} ms = data {ms['data']:5.1f} + emb {ms['embedding']:5.1f}"
                f" + dense {ms['dense']:6.1f} + opt {ms['optimizer']:4.1f}  "
                f"{r['train_flops_per_sample'] / 1e6:5.2f} MFLOP/sample  "
                f"{r['achieved_gflops']:6.1f} GFLOP/s = {r['peak_fraction']:.0%} of fp32 peak "
                f"({peak['fp32'] / 1e9:.0f}), {r['peak_fraction_own']:.0%} of {precision} peak",
                flush=True,
            )

    auc = None
    if args.auc_epochs and "hierrec" in args.models.split(",") and not args.recipe:
        with tempfile.TemporaryDirectory() as tmp:
            auc = auc_check(data, recipe, "hierrec", args.auc_epochs, Path(tmp), args.device)
        print(
            f"HierRec {args.auc_epochs} epochs: val AUC fp32 {auc['fp32']['val_auc']:.4f}, "
            f"bf16 {auc['bf16']['val_auc']:.4f} (diff {auc['auc_diff']:+.4f}); "
            f"epoch samples/s fp32 {auc['fp32']['samples_per_s']:,.0f}, "
            f"bf16 {auc['bf16']['samples_per_s']:,.0f}"
        )

    scaling = []
    if args.table_rows:
        scaling = table_scaling(
            data.schema, data, recipe, [int(x) for x in args.table_rows.split(",")], device
        )
        for s in scaling:
            kind = "row-sparse + LazyAdam" if s["sparse"] else "dense + Adam"
            print(
                f"DNN step, item table {s['table_rows']:>10,} rows, {kind:>22}: "
                f"{s['step_ms']:7.1f} ms"
            )

    checks = check_targets(rows, auc)
    here = f"{args.threads} thread(s)" if device.type == "cpu" else f"on {device}"
    print(f"\ntargets (for 2 cores; here {here}, batch {args.batch_size}):")
    for text, ok, value in checks:
        print(f"  [{'PASS' if ok else 'MISS'}] {text}: {value}")
    info["loadavg_end"] = list(os.getloadavg())
    print(f"load average at the end: {info['loadavg_end'][0]:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "device": str(device),
                    "recipe": str(args.recipe) if args.recipe else None,
                    "data": str(folder),
                    "batch_size": args.batch_size,
                    "peaks_gflops": [{k: v / 1e9 for k, v in p.items()} for p in peaks],
                    "models": rows,
                    "auc_check": auc,
                    "table_scaling": scaling,
                    "targets": [{"target": t, "met": ok, "value": v} for t, ok, v in checks],
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Dense Adam against LazyAdam on the embedding table: test AUC and step time, same seeds.

    python benchmarks/adam_vs_lazyadam.py                         # prepares /tmp data if needed
    python benchmarks/adam_vs_lazyadam.py --rows 60000 --models dnn,hierrec --epochs 4

The papers train with dense Adam, whose L2 weight decay and decayed momentum move every row of
the table at every step; `sparse_embeddings: true` (and `auto` from 100k rows) uses LazyAdam,
which moves only the rows the batch touched. This trains each model with both (the train key
`sparse_embeddings: false` / `true` forces each path whatever the table's size), at the
papers' weight decay, over the same seeds and data order, and prints each model's test AUC as
mean +- std over the seeds, the Welch t-test p-value of the difference, and the step time of
LazyAdam over dense Adam (training samples per second of the two, from the runs' own logs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import polars as pl
import torch
from sklearn.metrics import roc_auc_score

from msctr.bench.machine import machine
from msctr.evaluate.stats import mean_std, welch_t
from msctr.models.registry import build, parse_params
from msctr.recipe import EarlyStoppingConfig, ModelEntry, Recipe, TrainConfig
from msctr.train.loop import fit_one, train_step
from msctr.train.optim import make_optimizer
from msctr.train.runtime import keep_freed_memory, seed_everything
from msctr.train.splits import SplitData

PATHS = {"dense Adam": False, "LazyAdam": True}


def prepare_data(rows: int) -> Path:
    folder = Path(tempfile.gettempdir()) / f"msctr-bench-synthetic-{rows}"
    if not (folder / "schema.json").is_file():
        cmd = [sys.executable, "-m", "msctr", "prepare", "synthetic", "--out", str(folder)]
        subprocess.run([*cmd, "--rows", str(rows)], check=True, stdout=subprocess.DEVNULL)
    return folder


def touched_share(data: SplitData, batch_size: int, batches: int = 20) -> float:
    """Mean share of the table's rows one training batch touches (its sparse fields and valid
    behaviors): where it is near 1 the two optimizers update nearly the same rows."""
    schema, cols = data.schema, data.train
    sizes = [f.vocab_size for f in schema.sparse]
    offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)
    order = torch.randperm(len(cols), generator=torch.Generator().manual_seed(0))
    shares = []
    for k in range(min(batches, len(cols) // batch_size)):
        b = cols.batch(order[k * batch_size : (k + 1) * batch_size])
        ids = [(b.sparse + offsets).flatten()]
        for i, seq in enumerate(schema.sequences):
            o = torch.tensor([int(offsets[schema.sparse_index(f.shares)]) for f in seq.fields])
            ids.append((b.seq_ids[i] + o)[b.seq_mask[i]].flatten())
        shares.append(torch.unique(torch.cat(ids)).numel() / sum(sizes))
    return statistics.mean(shares) if shares else float("nan")


def interleaved_step_ratio(
    name: str, data: SplitData, recipe: Recipe, steps: int = 40, warmup: int = 5
) -> float:
    """Median LazyAdam step time over median dense Adam step time, the two models stepped in
    turn on the same batches: on a machine other processes load, a slow moment then hits both
    (the runs' own samples/s, minutes apart, do not share their moments)."""
    models, opts = {}, {}
    for label, sparse in PATHS.items():
        seed_everything(0)
        models[label] = build(name, data.schema, parse_params(name, {}))
        opts[label] = make_optimizer(models[label], replace(recipe.train, sparse_embeddings=sparse))
        models[label].train()
    times: dict[str, list[float]] = {label: [] for label in PATHS}
    size = recipe.train.batch_size
    batches = (b for epoch in itertools.count() for b in data.train_batches(size, 0, epoch))
    for k in range(warmup + steps):
        batch = next(batches)
        order = list(PATHS) if k % 2 == 0 else list(reversed(PATHS))
        for label in order:
            t0 = time.perf_counter()
            train_step(models[label], batch, opts[label], torch.device("cpu"), "fp32")
            if k >= warmup:
                times[label].append(time.perf_counter() - t0)
    return statistics.median(times["LazyAdam"]) / statistics.median(times["dense Adam"])


def one_run(recipe: Recipe, name: str, seed: int, data: SplitData, run: Path) -> dict:
    fit_one(recipe, ModelEntry(name), seed, data, run)
    pred = pl.read_parquet(run / "predictions.parquet")
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return {
        "auc": float(roc_auc_score(pred["label"].to_numpy(), pred["prob"].to_numpy())),
        "samples_per_s": statistics.mean(x["samples_per_s"] for x in log),
        "epochs": len(log),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a prepared dataset (default: synthetic, --rows)")
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--models", default="dnn")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-6, help="the papers' L2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timing-steps", type=int, default=40, help="interleaved timed steps")
    ap.add_argument("--timing-only", action="store_true", help="the step time ratio alone")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    folder = args.data or prepare_data(args.rows)
    seeds = [int(s) for s in args.seeds.split(",")]
    train = TrainConfig(
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        epochs=args.epochs,
        early_stopping=EarlyStoppingConfig(metric="logloss", patience=2),
        seeds=seeds,
    )
    recipe = Recipe(
        name="adam-vs-lazyadam", data=str(folder), models=[ModelEntry("dnn")], train=train
    )
    data = SplitData.load(recipe)
    rows = sum(f.vocab_size for f in data.schema.sparse)
    m = machine()
    print(
        f"{m['cpu']}, {m['logical_cores']} logical cores, torch {m['torch']}, {args.threads} "
        f"thread(s), load {m['loadavg'][0]:.2f}, {m['date']}"
    )
    print(
        f"data {folder}: {data.train_rows:,} train rows, embedding table {rows:,} rows; batch "
        f"{args.batch_size}, lr {args.lr}, weight decay {args.weight_decay}, up to "
        f"{args.epochs} epochs (early stopping on val logloss), seeds {seeds}"
    )
    share = touched_share(data, args.batch_size) if data.train is not None else float("nan")
    print(f"a training batch touches {share:.0%} of the table's rows (mean of 20 batches)")
    results: dict = {
        "touched_share": share,
        "data": str(folder),
        "table_rows": rows,
        "args": vars(args) | {"data": str(folder), "json": None},
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            step = interleaved_step_ratio(name, data, recipe, args.timing_steps)
            summary: dict = {"lazy_over_dense_step_time": step}
            if args.timing_only:
                print(f"{name:>13}  step time LazyAdam / dense = {step:.2f} (interleaved)")
                results["models"][name] = summary
                continue
            per: dict = {}
            for label, sparse in PATHS.items():
                r = replace(recipe, train=replace(train, sparse_embeddings=sparse))
                per[label] = [
                    one_run(r, name, s, data, Path(tmp) / f"{name}-{sparse}-{s}") for s in seeds
                ]
            dense, lazy = per["dense Adam"], per["LazyAdam"]
            a, b = [x["auc"] for x in dense], [x["auc"] for x in lazy]
            summary |= {
                "dense_auc": a,
                "lazy_auc": b,
                "dense_mean_std": mean_std(a),
                "lazy_mean_std": mean_std(b),
                "diff": statistics.mean(b) - statistics.mean(a),
                "welch_p": welch_t(a, b),
                # the runs' own rates, minutes apart: on a loaded machine far noisier than `step`
                "samples_per_s": {k: [x["samples_per_s"] for x in v] for k, v in per.items()},
                "epochs": {k: [x["epochs"] for x in v] for k, v in per.items()},
            }
            results["models"][name] = summary
            for label, vals in (("dense Adam", a), ("LazyAdam", b)):
                mu, sd = mean_std(vals)
                print(
                    f"{name:>13}  {label:<10}  test AUC {mu:.4f} +- {sd:.4f}  ({len(vals)} seeds)"
                )
            print(
                f"{name:>13}  LazyAdam - dense: {summary['diff']:+.4f} AUC (Welch p = "
                f"{summary['welch_p']:.3f}); step time LazyAdam / dense = {step:.2f} (interleaved)"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

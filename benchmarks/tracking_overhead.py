"""What history.jsonl and the trackers of `train.log` cost, against training without them.

    python benchmarks/tracking_overhead.py --data /tmp/msctr-bench-synthetic-200000
    python benchmarks/tracking_overhead.py --data data/synthetic --models dnn --repeats 3

Trains each model (default params, early stopping off) through `fit_one`, the training loop's own
function, alternately without trackers and with `train.log: [tensorboard, mlflow]`, in one
process on the same data, `--repeats` times each. Reports medians over the runs: training
samples/s (the steps alone, history.jsonl's `samples_per_s`), the wall time of a whole epoch
(steps, validation, checkpoints, history and trackers), and the seconds per epoch spent in
the history (its validation figures, the line, the trackers' writes). The first epoch of every
run also builds the model; opening the trackers (MLflow creates its SQLite store the first time)
is reported apart and left out of the epoch time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from msctr.recipe import ModelEntry, Recipe, TrainConfig
from msctr.runs import RunFolder
from msctr.train import history as H
from msctr.train import loop
from msctr.train.runtime import keep_freed_memory
from msctr.train.splits import SplitData


def timed(cls, name: str, spent: list[float]):
    orig = getattr(cls, name)

    def wrapper(self, *a, **k):
        tick = time.perf_counter()
        try:
            return orig(self, *a, **k)
        finally:
            spent.append(time.perf_counter() - tick)

    setattr(cls, name, wrapper)
    return orig


def one_run(recipe: Recipe, entry: ModelEntry, data: SplitData, log: list[str]) -> dict:
    recipe.train.log = log
    spent: list[float] = []
    opened: list[float] = []
    origs = {n: timed(H.History, n, spent) for n in ("add", "commit")}
    origs["__init__"] = timed(H.History, "__init__", opened)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            seed = RunFolder(root).seed(entry.key, 0)
            tick = time.perf_counter()
            loop.fit_one(recipe, entry, 0, data, seed.folder, tracking=root)
            wall = time.perf_counter() - tick
            lines = [json.loads(x) for x in seed.history.read_text().splitlines()]
    finally:
        for n, f in origs.items():
            setattr(H.History, n, f)
    epochs = len(lines)
    return {
        "samples_per_s": statistics.median(x["samples_per_s"] for x in lines[1:] or lines),
        "wall_per_epoch": (wall - sum(opened)) / epochs,
        "history_per_epoch": sum(spent) / epochs,
        "open": sum(opened),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/msctr-bench-synthetic-200000")
    ap.add_argument("--models", default="dnn")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--trackers", default="none;tensorboard,mlflow", help="';'-separated sets")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    t = TrainConfig(epochs=args.epochs, threads=args.threads, seeds=[0])
    t.early_stopping.patience = args.epochs  # every epoch runs
    recipe = Recipe(name="tracking", data=args.data, models=[], train=t)
    data = SplitData.load(recipe)
    print(f"{data.train_rows:,} train rows, batch {t.batch_size}, {args.threads} thread(s)")
    cols = f"{'samples/s':>10} {'epoch s':>8} {'history s':>9} {'open s':>7}"
    print(f"{'model':8} {'trackers':20} {cols}")
    for name in args.models.split(","):
        entry = ModelEntry(name)
        recipe.models = [entry]
        got: dict[str, list[dict]] = {k or "none": [] for k in args.trackers.split(";")}
        for _ in range(args.repeats):  # alternating, so drifting load hits every kind alike
            for kind in got:
                log = [] if kind == "none" else kind.split(",")
                got[kind].append(one_run(recipe, entry, data, log))
        for kind, runs in got.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"{name:8} {kind:20} {med['samples_per_s']:10,.0f} {med['wall_per_epoch']:8.2f} "
                  f"{med['history_per_epoch']:9.3f} {med['open']:7.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

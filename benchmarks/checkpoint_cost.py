"""What the per-epoch resume checkpoint (`last.pt`) costs, against the epoch it follows.

    python benchmarks/checkpoint_cost.py --data /tmp/msctr-bench-synthetic-200000
    python benchmarks/checkpoint_cost.py --data data/synthetic --models dnn,hierrec --threads 1

Trains each model (default params, early stopping off) for `--epochs` full epochs through
`fit_one`, the training loop's own function, and reports medians over the epochs: the epoch's time
(training steps, the validation pass, best.pt and the log line; the first epoch, which also
builds the model, is left out), the time writing `last.pt` takes (serialization and the
atomic write), the share of the two, and the size of the file.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from msctr.recipe import ModelEntry, Recipe, TrainConfig
from msctr.train import loop
from msctr.train.resume import ResumeState
from msctr.train.runtime import keep_freed_memory
from msctr.train.splits import SplitData


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/msctr-bench-synthetic-200000")
    ap.add_argument("--models", default="dnn,hierrec")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    t = TrainConfig(epochs=args.epochs, threads=args.threads, seeds=[0])
    t.early_stopping.patience = args.epochs  # every epoch runs
    recipe = Recipe(name="ckpt", data=args.data, models=[], train=t)
    data = SplitData.load(recipe)
    print(f"{data.train_rows:,} train rows, batch {t.batch_size}, {args.threads} thread(s)")
    print(f"{'model':10} {'epoch s':>8} {'last.pt s':>9} {'share':>7} {'last.pt MB':>10}")
    for name in args.models.split(","):
        entry = ModelEntry(name)
        recipe.models = [entry]
        calls: list[tuple[float, float, int]] = []  # (start, end, bytes) of each last.pt write
        orig = ResumeState.save

        def timed(state, path, orig=orig, calls=calls):
            tick = time.perf_counter()
            orig(state, path)
            calls.append((tick, time.perf_counter(), Path(path).stat().st_size))

        ResumeState.save = timed  # the run removes last.pt when it ends: measured from inside
        try:
            with tempfile.TemporaryDirectory() as tmp:
                loop.fit_one(recipe, entry, 0, data, Path(tmp) / name / "seed_0")
        finally:
            ResumeState.save = orig
        # an epoch: from the end of one checkpoint write to the start of the next (training
        # steps, the validation pass, best.pt and the log line); the first one also builds
        # the model, so it is left out
        epochs = [b[0] - a[1] for a, b in zip(calls, calls[1:])]
        epoch = statistics.median(epochs)
        ckpt = statistics.median(c[1] - c[0] for c in calls)
        size = calls[-1][2] / 1e6
        print(f"{name:10} {epoch:8.2f} {ckpt:9.3f} {ckpt / epoch:7.2%} {size:10.2f}")


if __name__ == "__main__":
    main()

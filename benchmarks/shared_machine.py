"""Training and inference speed when a second msctr run shares the cores (issue 26).

    python benchmarks/shared_machine.py                     # prepares /tmp data if needed
    python benchmarks/shared_machine.py --data data/synthetic --models dnn,mmoe,hierrec

For each model and precision, and for each thread setting — `adaptive` (msctr's default:
the count follows the cores other processes leave free, msctr/cores.py) and `pinned` (every
core, torch's default and msctr's before) — it runs `msctr train` as a user does, once alone
and once beside a second `msctr train` of the same model and setting that it starts itself
(stopped at the end), and prints training samples/s (median over the epochs after the
first) and the ratio beside/alone: a fair share of 2 equal runs is 0.50. The same for
`msctr bench-inference` (whole-test-split rows/s) beside a training. Rounds alternate the
settings, so `adaptive alone / pinned alone` compares them on the same machine state: the
idle-machine check (it must not be below 1 by more than the noise).

Numbers move with whatever else runs on the machine: read the load printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MSCTR = [sys.executable, "-m", "msctr"]
SETTINGS = ("adaptive", "pinned")
RECIPE = """name: shared
data: {data}
models: [{{name: {model}, label: M}}]
train: {{epochs: {epochs}, batch_size: {batch}, seeds: [0], max_steps_per_epoch: {steps},
         precision: {precision}, early_stopping: {{patience: 1000}}}}
"""


def env_for(setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if setting == "pinned":  # torch's own default, stated: one thread per core
        env["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
    return env


def write_recipe(folder: Path, name: str, args, model: str, precision: str, epochs: int) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        RECIPE.format(
            data=args.data,
            model=model,
            epochs=epochs,
            batch=args.batch_size,
            steps=args.steps,
            precision=precision,
        )
    )
    return path


def start_competitor(folder: Path, args, model: str, precision: str, setting: str):
    """A second training of the same model, long enough to outlast the measured one; started
    in its own session so that stopping it stops everything it started."""
    recipe = write_recipe(folder, "competitor", args, model, precision, epochs=100_000)
    out = folder / "competitor-run"
    cmd = [*MSCTR, "train", str(recipe), "--no-eval", "--fresh", "--set", f"out={out}"]
    proc = subprocess.Popen(
        cmd,
        env=env_for(setting),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = out / "M" / "seed_0" / "log.jsonl"
    deadline = time.monotonic() + args.settle_timeout
    while not log.exists() and time.monotonic() < deadline:  # in its training loop
        if proc.poll() is not None:
            raise SystemExit(f"the competing training exited with {proc.returncode}")
        time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen) -> None:
    group = os.getpgid(proc.pid)
    os.killpg(group, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(group, signal.SIGKILL)
        proc.wait()


def train_rate(folder: Path, args, model: str, precision: str, setting: str) -> tuple[float, str]:
    """Median training samples/s over the epochs after the first, and the threads used."""
    recipe = write_recipe(folder, "measured", args, model, precision, epochs=args.epochs)
    out = folder / "measured-run"
    cmd = [*MSCTR, "train", str(recipe), "--no-eval", "--fresh", "--set", f"out={out}"]
    done = subprocess.run(cmd, env=env_for(setting), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"msctr train failed:\n{done.stderr[-2000:]}")
    lines = [json.loads(x) for x in (out / "M" / "seed_0" / "log.jsonl").open()][1:]
    threads = [x["threads"] for x in lines if "threads" in x]
    used = f"{statistics.mean(threads):.1f}" if threads else "pinned"
    return statistics.median(x["samples_per_s"] for x in lines), used


def inference_rate(folder: Path, args, model: str, setting: str) -> float:
    """Whole-test-split rows/s of `msctr bench-inference` (untrained weights, eager fp32)."""
    recipe = write_recipe(folder, "bench", args, model, "fp32", epochs=1)
    out = folder / "bench.json"
    cmd = [
        *MSCTR,
        "bench-inference",
        str(recipe),
        "--batch-sizes",
        "2000",
        "--repeats",
        "3",
        "--rows",
        str(args.bench_rows),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, env=env_for(setting), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"msctr bench-inference failed:\n{done.stderr[-2000:]}")
    v = json.loads(out.read_text())["models"][0]["variants"]["eager"]
    return v["test_rows"] / v["test_seconds"]["mean"]


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="a prepared folder (default: 60k synthetic rows)")
    ap.add_argument("--models", default="dnn,mmoe,hierrec")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--rounds", type=int, default=1, help="alone/beside pairs per setting")
    ap.add_argument("--epochs", type=int, default=4, help="measured epochs (the first unused)")
    ap.add_argument("--steps", type=int, default=20, help="steps per epoch")
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--bench-rows", type=int, default=20000)
    ap.add_argument("--settle-timeout", type=float, default=300.0)
    ap.add_argument("--no-inference", action="store_true")
    ap.add_argument("--no-training", action="store_true", help="bench-inference only")
    ap.add_argument(
        "--alone-only",
        action="store_true",
        help="only the idle-machine check: each setting alone, --rounds times",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="msctr-shared-") as tmp:
        folder = Path(tmp)
        if args.data is None:
            args.data = folder / "syn"
            subprocess.run(
                [*MSCTR, "prepare", "synthetic", "--rows", "60000", "--out", str(args.data)],
                check=True,
                capture_output=True,
            )
        cores = len(os.sched_getaffinity(0))
        print(
            f"{cores} usable cores; load {load()}; data {args.data}; {args.steps} steps of "
            f"{args.batch_size} per epoch, median of epochs 2-{args.epochs}"
        )
        print(
            f"{'model':10} {'prec':5} {'setting':9} {'alone/s':>9} {'beside/s':>9} "
            f"{'ratio':>6} {'threads':>8}  load"
        )
        alone_of: dict[tuple, list[float]] = {}
        for model in [] if args.no_training else args.models.split(","):
            for precision in args.precisions.split(","):
                for _ in range(args.rounds):
                    for setting in SETTINGS:
                        alone, alone_used = train_rate(folder, args, model, precision, setting)
                        alone_of.setdefault((model, precision, setting), []).append(alone)
                        if args.alone_only:
                            print(
                                f"{model:10} {precision:5} {setting:9} {alone:9.0f} "
                                f"{'':>9} {'':>6} {alone_used:>8}  {load()}",
                                flush=True,
                            )
                            continue
                        rival = start_competitor(folder, args, model, precision, setting)
                        try:
                            beside, used = train_rate(folder, args, model, precision, setting)
                        finally:
                            stop(rival)
                        print(
                            f"{model:10} {precision:5} {setting:9} {alone:9.0f} {beside:9.0f} "
                            f"{beside / alone:6.2f} {used:>8}  {load()}",
                            flush=True,
                        )
        print("\nidle machine, adaptive alone / pinned alone (1.00 = no cost):")
        for model in [] if args.no_training else args.models.split(","):
            for precision in args.precisions.split(","):
                a = statistics.median(alone_of[(model, precision, "adaptive")])
                p = statistics.median(alone_of[(model, precision, "pinned")])
                print(f"  {model:10} {precision:5} {a / p:.2f}")
        if args.no_inference or args.alone_only:
            return
        print("\nbench-inference (whole test split rows/s) beside a DNN training:")
        for model in args.models.split(","):
            for setting in SETTINGS:
                alone = inference_rate(folder, args, model, setting)
                rival = start_competitor(folder, args, "dnn", "fp32", setting)
                try:
                    beside = inference_rate(folder, args, model, setting)
                finally:
                    stop(rival)
                print(
                    f"  {model:10} {setting:9} {alone:9.0f} {beside:9.0f} "
                    f"{beside / alone:6.2f}  load {load()}",
                    flush=True,
                )


if __name__ == "__main__":
    main()

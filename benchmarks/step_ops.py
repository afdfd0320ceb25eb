"""Where one model's training step spends its time, op by op.

    python benchmarks/step_ops.py hierrec --data data/synthetic
    python benchmarks/step_ops.py ple --precision bf16 --set dropout=0.0 --top 40

Runs real training steps (the training loop's loader, `make_optimizer`, autocast, in data order)
and times every ATen op as it is dispatched, with its input shapes, strides (`s(...)` when
not contiguous) and dtype, and whether it ran in the forward, the backward or the optimizer.
Prints the plain step time (no timing hooks), the logged one, and the ops by total time per
step. `--set KEY=VALUE` changes a model parameter (YAML value), to time a part by removing it
(field_attention=false, num_levels=1, dropout=0.0).

Why not torch.profiler: on this 2-core machine its per-op self times at 2 threads did not add
up to the step (5 profiled HierRec steps summed to 1.75x their plain time) and put one
backward batched matmul at 153 ms per call that takes 5-9 ms; timing at dispatch, the ops
add up to within a few percent of the plain step.
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from pathlib import Path

import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from train_throughput import endless_batches, prepare_data

from msctr.errors import UserError
from msctr.models.registry import build, parse_params
from msctr.recipe import ModelEntry, Recipe, TrainConfig
from msctr.train.loop import backward, forward_loss
from msctr.train.optim import make_optimizer
from msctr.train.runtime import keep_freed_memory, seed_everything
from msctr.train.splits import SplitData


def describe(arg) -> str:
    if isinstance(arg, torch.Tensor):
        layout = "" if arg.is_contiguous() else f"s{tuple(arg.stride())}"
        dtype = "" if arg.dtype == torch.float32 else str(arg.dtype).removeprefix("torch.")
        return f"{tuple(arg.shape)}{layout}{dtype}"
    if isinstance(arg, (list, tuple)) and arg and isinstance(arg[0], torch.Tensor):
        return "[" + ",".join(map(describe, arg[:3])) + ("...]" if len(arg) > 3 else "]")
    return ""


class OpTimes(TorchDispatchMode):
    """Wall time of every dispatched op, keyed by (phase, op, inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "fwd"
        self.total: dict[tuple[str, str, str], list[float]] = collections.defaultdict(
            lambda: [0.0, 0]
        )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        entry = self.total[
            (self.phase, str(func.overloadpacket), " ".join(d for d in map(describe, args) if d))
        ]
        entry[0] += time.perf_counter() - t0
        entry[1] += 1
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", type=Path, help="prepared dataset (default: synthetic in /tmp)")
    ap.add_argument("--rows", type=int, default=200_000, help="rows when preparing the data")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=6, help="steps timed plain, then logged")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--top", type=int, default=30, help="ops to print")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    params = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set takes KEY=VALUE, got {item!r}")
        params[key] = yaml.safe_load(value)
    recipe = Recipe(
        name="bench",
        data=str(args.data or prepare_data(args.rows)),
        models=[ModelEntry(args.model)],
        train=TrainConfig(batch_size=args.batch_size, weight_decay=1e-6, precision=args.precision),
    )
    data = SplitData.load(recipe)
    seed_everything(0)
    try:
        model = build(args.model, data.schema, parse_params(args.model, params)).train()
    except UserError as e:
        ap.error(str(e))
    optimizer = make_optimizer(model, recipe.train)
    batches = endless_batches(data, recipe)
    device = torch.device("cpu")
    ops = OpTimes()

    def phase(name: str) -> None:
        ops.phase = name

    def step() -> None:
        batch = next(batches)  # the phases of loop.train_step, named apart
        phase("fwd")
        _, total = forward_loss(model, batch, device, args.precision)
        phase("bwd")
        backward(total, optimizer)
        phase("opt")
        optimizer.step()
        phase("end")

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - t0) / n * 1000

    run(args.warmup)
    plain = run(args.steps)
    with ops:
        logged = run(args.steps)
    per_step = {k: (t / args.steps * 1000, n / args.steps) for k, (t, n) in ops.total.items()}
    summed = sum(t for t, _ in per_step.values())
    by_phase = collections.Counter()
    for (phase, _, _), (t, _) in per_step.items():
        by_phase[phase] += t
    print(
        f"{args.model} {args.precision}, {args.threads} threads, batch {args.batch_size}"
        f"{', ' + ' '.join(args.set) if args.set else ''}, load {os.getloadavg()[0]:.2f}: "
        f"step {plain:.1f} ms plain, "
        f"{logged:.1f} ms with timing; ops {summed:.1f} ms = "
        + " + ".join(f"{p} {by_phase[p]:.1f}" for p in ("fwd", "bwd", "opt"))
    )
    print(f"{'ms/step':>8} {'% step':>6} {'calls':>5}  phase op inputs")
    for (phase, op, inputs), (t, n) in sorted(per_step.items(), key=lambda kv: -kv[1][0])[
        : args.top
    ]:
        print(f"{t:8.2f} {t / plain:6.1%} {n:5.0f}  {phase} {op} {inputs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

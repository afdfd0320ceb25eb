"""Data-parallel training across processes (`torchrun`): the process group, each rank's share
of a batch, gathering scored shards, and the row-sparse embedding tables' exchange.

One process (no `torchrun`, or `--nproc-per-node 1`) never touches `torch.distributed`: every
function here is then the identity, so a one-process run is exactly what it was before.

Under `torchrun`, every rank holds the same model and sees the same global batch of
`train.batch_size` rows (the same seeded order as one process), of which it trains on its
own contiguous part (`part_bounds`). The dense network's gradients are averaged by
`DistributedDataParallel`; row-sparse embedding tables are kept out of it and synchronised
by exchanging the rows each rank touched (`SparseRows`, docs/distributed.md says why).
"""

from __future__ import annotations

import inspect
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from msctr.errors import Interrupted, RankError, UserError
from msctr.train.launch import end_with_agent
from msctr.train.optim import LazyAdam
from msctr.train.runtime import StepBoundaryStop

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes, and what they do together: every
    collective here is the identity for one process (`ALONE`). `setup` returns the one a run
    trains in; the trainer hands it to whatever needs it (no module-level world)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that takes the lock, prints and writes files."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def local_device(self, device_name: str) -> str:
        """This process's device: data parallel on CUDA, the GPU of its local rank."""
        if self.parallel and device_name.startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return device_name

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (pickled; for resume states and small values)."""
        if not self.parallel:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=_device())
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 alone and hand its result to every rank; a `UserError` it raises is
        raised on every rank (rank 0's message), so no rank waits for one that gave up."""
        if not self.parallel:
            return fn()
        result: tuple[str, object] = ("ok", None)
        if self.main:
            try:
                result = ("ok", fn())
            except UserError as e:
                result = ("error", str(e))
            except BaseException as e:  # an unexpected failure: the others stop too
                result = ("crash", f"{type(e).__name__}: {e}")
                self.broadcast(result)
                raise
        kind, value = self.broadcast(result)
        if kind == "error":
            raise UserError(str(value))
        if kind == "crash":
            raise RuntimeError(f"rank 0 failed: {value}")
        return value  # type: ignore[return-value]

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()

    def stop_together(self, stop: StepBoundaryStop) -> None:
        """A step boundary: raise `stop`'s pending Ctrl-C/SIGTERM, if any. Data
        parallel, the ranks first agree whether any of them has one (one small all-reduce) and all
        stop here together: a rank that stopped alone, its signal a moment ahead of the others',
        would leave them in their next collective (gloo: "Connection closed by peer", a traceback
        on the terminal). So every rank must call it the same number of times."""
        if not self.parallel:
            stop.check()
        elif self.any_rank(stop.signum is not None):
            raise Interrupted(stop.signum or signal.SIGTERM)  # another rank's, if not ours

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks (float64)."""
        if not self.parallel:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=_device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def all_max(self, value: float) -> float:
        """The largest `value` over ranks."""
        if not self.parallel:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when it is True on some rank."""
        if not self.parallel:
            return flag
        t = torch.tensor([int(flag)], device=_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's `local` rows (first dimension; sizes may differ by rank) concatenated in
        rank order, on every rank: shards scored apart, put back in row order."""
        if not self.parallel:
            return local
        home, dev = local.device, _device()
        local = local.to(dev)
        sizes = torch.tensor([local.shape[0]], device=dev)
        all_sizes = [torch.zeros_like(sizes) for _ in range(self.size)]
        dist.all_gather(all_sizes, sizes)
        counts = [int(s.item()) for s in all_sizes]
        top = max(counts)
        padded = local.new_zeros((top, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, counts)]).to(home)

    def gather_objects(self, obj: object) -> list[object] | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        if not self.parallel:
            return [obj]
        out: list[object] | None = [None] * self.size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """The same buffers on every rank: BatchNorm running statistics, gathered per rank over
        its share of each batch, averaged over ranks; integer buffers (batch counts) are equal
        already."""
        if not self.parallel:
            return
        for b in model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b.div_(self.size)

    def wrap(
        self,
        model: torch.nn.Module,
        device: torch.device,
        sparse_tables: list[torch.nn.Parameter],
    ) -> torch.nn.Module:
        """`model` under DistributedDataParallel, its row-sparse tables left out (`SparseRows`
        synchronises them). One process: `model` itself."""
        if not self.parallel:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        global_batchnorm(model)
        DDP._set_params_and_buffers_to_ignore_for_model(
            model, sparse_table_names(model, sparse_tables)
        )
        # BatchNorm statistics are global already (GlobalBatchNorm1d) or per rank by design
        # (sync_buffers averages them before scoring): no broadcast of rank 0's at every forward.
        # The keyword was renamed in torch 2.12 (forward_sync_buffers)
        quiet = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
        buffers = {"forward_sync_buffers": False} if quiet else {"broadcast_buffers": False}
        return DDP(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # every model's parameters all get a gradient every step (checked for all models at
            # their defaults), so DDP need not walk the autograd graph for unused ones each step
            find_unused_parameters=False,
            **buffers,
        )


ALONE = World()  # one process: every collective below is the identity


def launched() -> bool:
    """Started by torchrun (or another launcher setting the env:// variables) with >1 process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str) -> tuple[World, str]:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); return this
    process's place and the device it trains on (`cuda` becomes `cuda:<local rank>`).
    Without a launcher: one process, nothing initialised."""
    if not launched():
        return ALONE, device_name
    end_with_agent()  # a killed torchrun leaves no rank training (and rank 0 holding the lock)
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name.startswith("cuda")
    if cuda:
        if torch.cuda.device_count() <= local:
            raise RankError(
                f"rank {rank} is local rank {local} but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); lower --nproc-per-node"
            )
        device_name = f"cuda:{local}"  # one GPU per process
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        bind = {}  # NCCL: the group on this process's GPU (torch >= 2.3 takes device_id)
        if cuda and "device_id" in inspect.signature(dist.init_process_group).parameters:
            bind = {"device_id": torch.device(device_name)}
        dist.init_process_group("nccl" if cuda else "gloo", **bind)
    return World(rank, size, local), device_name


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _device() -> torch.device:
    # NCCL moves tensors on the process's GPU, gloo on the CPU
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def part_bounds(rows: int, part: int, parts: int) -> tuple[int, int]:
    """Rank `part`'s contiguous share [lo, hi) of a batch of `rows` rows: sizes differ by at
    most one, the shares are disjoint and together they are the batch."""
    return rows * part // parts, rows * (part + 1) // parts


@dataclass(frozen=True)
class Shares:
    """Which rows of each step's batch this rank trains on, and the weight of its loss.

    Step k's global batch has min(B, rows - k B) rows (both loaders cut the epoch so), of which
    this rank has `part_bounds`' share n_r. Its loss, a mean over its n_r rows, is weighted by
    N n_r / n_k: DDP averages the N ranks' gradients, so the step's gradient is that of the
    mean over the whole batch, as in one process, also when the shares differ in size."""

    rows: int  # training rows of the epoch
    batch_size: int  # B, the global batch
    rank: int = 0
    size: int = 1

    def window(self, step: int) -> tuple[int, int, int]:
        """(first row of this rank's share in step `step`'s batch, rows in it, rows in the
        batch); a stand-in is the batch's first row."""
        total = min(self.batch_size, self.rows - step * self.batch_size)
        lo, hi = part_bounds(total, self.rank, self.size)
        return (lo, hi - lo, total) if hi > lo else (0, 1, total)

    def at(self, step: int) -> tuple[int, float]:
        """(rows this rank trains on at `step`, its loss weight); (0, 0.0) for a stand-in."""
        total = min(self.batch_size, self.rows - step * self.batch_size)
        lo, hi = part_bounds(total, self.rank, self.size)
        return hi - lo, self.size * (hi - lo) / total


class _SumOverRanks(torch.autograd.Function):
    """y = sum over ranks of x, on every rank; the gradient of x is the sum over ranks of y's
    gradients (each rank's loss depends on every rank's x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone()
        dist.all_reduce(g)
        return g


class GlobalBatchNorm1d(torch.nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch: each rank's sums
    of x and x^2 (and its row count) are all-reduced, with autograd (the backward all-reduces
    their gradients), so every rank normalises with the mean and variance one process would
    compute over the whole batch, and the running statistics agree on every rank.

    torch's SyncBatchNorm does the same on GPUs only (it refuses CPU tensors); this one runs
    on gloo and NCCL alike, at two small all-reduces per layer and step. The sums are taken in
    float64 so that E[x^2] - E[x]^2 loses nothing that a two-pass variance would keep."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # installed only under a parallel world (`World.wrap`)
        if not (self.training and dist.is_initialized() and x.dim() == 2):
            return super().forward(x)
        xd = x.double()
        n = xd.new_full((1,), float(x.shape[0]))
        stats = _SumOverRanks.apply(torch.cat([xd.sum(0), (xd * xd).sum(0), n]))
        c = x.shape[1]
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c : 2 * c] / count - mean * mean).clamp_min(0.0)
        with torch.no_grad():  # running statistics as nn.BatchNorm1d keeps them (unbiased var)
            self.num_batches_tracked.add_(1)
            m = (
                self.momentum
                if self.momentum is not None
                else 1.0 / float(self.num_batches_tracked)
            )
            unbiased = var * (count / (count - 1).clamp_min(1.0))
            self.running_mean.lerp_(mean.to(x.dtype), m)
            self.running_var.lerp_(unbiased.to(x.dtype), m)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        y = (x - mean.to(x.dtype)) * scale
        return y * self.weight + self.bias if self.affine else y


def global_batchnorm(model: torch.nn.Module) -> int:
    """Turn every plain BatchNorm1d with running statistics into `GlobalBatchNorm1d` (same
    parameters, buffers and checkpoint keys); return how many."""
    n = 0
    for m in model.modules():
        if type(m) is torch.nn.BatchNorm1d and m.track_running_stats:
            m.__class__ = GlobalBatchNorm1d
            n += 1
    return n


def sparse_table_names(model: torch.nn.Module, tables: list[torch.nn.Parameter]) -> list[str]:
    """Fully qualified names of `tables` in `model`: what DistributedDataParallel leaves out."""
    wanted = {id(t) for t in tables}
    return [name for name, p in model.named_parameters() if id(p) in wanted]


class SparseRows:
    """Row-sparse tables out of DDP: after backward each rank sends the (row id, gradient row)
    pairs it touched to every other, and every rank sums them into the same sparse gradient,
    so LazyAdam makes the same update everywhere. The volume is the touched rows of the global
    batch (about B x fields x d), never the table's size; works on gloo and NCCL alike (NCCL
    has no sparse all-reduce)."""

    def __init__(self, tables: list[torch.nn.Parameter], world: World):
        self.tables = tables if world.parallel else []
        self.world = world

    def sync(self) -> None:
        for p in self.tables:
            g = p.grad
            d = p.shape[1]
            if g is None:
                ids = torch.zeros(0, dtype=torch.long, device=p.device)
                values = p.new_zeros(0, d)
            else:  # each rank sends each touched row once
                ids, values = LazyAdam._rows(g)
            all_ids = self.world.gather_rows(ids)
            all_values = self.world.gather_rows(values)
            if all_ids.numel() == 0:
                p.grad = None
                continue
            # DDP averages the dense gradients over ranks: the same here
            # not coalesced: a row two ranks touched is there twice; LazyAdam sums them
            p.grad = torch.sparse_coo_tensor(
                all_ids.to(p.device).unsqueeze(0),
                all_values.to(p.device).div_(self.world.size),
                p.shape,
                check_invariants=False,
            )

"""What keeping an embedding table in step across data-parallel processes costs, four ways.

    PYTHONPATH=. torchrun --standalone --nproc-per-node 2 benchmarks/ddp_embedding_sync.py
    PYTHONPATH=. torchrun --standalone --nproc-per-node 2 \
        benchmarks/ddp_embedding_sync.py --rows 100000,1000000,4000000

One table of `--rows` x `--dim`; each process looks up its share of a global batch (`--batch`
rows x `--fields` ids, drawn with a Zipf-like skew, as click logs are), then times one step:
backward, the synchronisation, the optimizer's step. The ways (docs/distributed.md):

  sparse-ddp  a row-sparse table inside DistributedDataParallel: DDP all-reduces the sparse
              gradient (gloo only; NCCL has no sparse all-reduce), then LazyAdam
  dense-ddp   a dense table inside DDP: all-reduce of the whole rows x dim gradient, then
              dense (fused) Adam over the whole table
  rows        a row-sparse table kept out of DDP: the touched (row, gradient) pairs are
              all-gathered (`msctr.train.distributed.SparseRows`), then LazyAdam
  local       a row-sparse table, not synchronised at all (wrong, the floor): LazyAdam

Prints the median milliseconds per step of each (rank 0), 1 thread per process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from msctr.train import distributed as dist
from msctr.train.optim import LazyAdam


class Table(nn.Module):
    def __init__(self, rows: int, dim: int, sparse: bool):
        super().__init__()
        self.table = nn.Embedding(rows, dim, sparse=sparse)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids).sum()


def ids_for(step: int, rank: int, size: int, batch: int, fields: int, rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    # skewed ids: most look-ups hit few rows, as in click logs
    u = torch.rand(batch, fields, generator=g)
    ids = (u.pow(3) * rows).long().clamp_max(rows - 1)
    lo, hi = dist.part_bounds(batch, rank, size)
    return ids[lo:hi]


def time_way(
    w: dist.World, way: str, rows: int, dim: int, batch: int, fields: int, steps: int
) -> float:
    torch.manual_seed(0)
    model = Table(rows, dim, sparse=way != "dense-ddp")
    if way == "local":  # no synchronisation at all: the floor the others are measured from
        run = model
        sync = None
        opt = LazyAdam(model.parameters())
    elif way == "rows":
        run: nn.Module = model
        DDP._set_params_and_buffers_to_ignore_for_model(model, ["table.weight"])
        sync = dist.SparseRows([model.table.weight], w).sync
        opt: torch.optim.Optimizer = LazyAdam(model.parameters())
    else:
        run = DDP(model)
        sync = None
        opt = (
            LazyAdam(model.parameters())
            if way == "sparse-ddp"
            else torch.optim.Adam(model.parameters(), fused=True)
        )
    times = []
    for step in range(steps + 2):
        ids = ids_for(step, w.rank, w.size, batch, fields, rows)
        loss = run(ids)
        opt.zero_grad(set_to_none=True)
        tdist.barrier()
        tick = time.perf_counter()
        loss.backward()
        if sync is not None:
            sync()
        opt.step()
        tdist.barrier()
        if step >= 2:
            times.append(time.perf_counter() - tick)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2000, help="global batch (rows)")
    ap.add_argument("--fields", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    w, _ = dist.setup("cpu")
    try:
        for rows in [int(r) for r in args.rows.split(",")]:
            for way in ("local", "sparse-ddp", "dense-ddp", "rows"):
                ms = time_way(w, way, rows, args.dim, args.batch, args.fields, args.steps)
                if w.main:
                    print(
                        f"{w.size} processes  table {rows:>9,} x {args.dim}  "
                        f"{way:<10}  {ms:8.2f} ms/step (backward + sync + optimizer)",
                        flush=True,
                    )
    finally:
        dist.teardown()


if __name__ == "__main__":
    main()

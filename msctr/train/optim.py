"""Optimizers: fused dense Adam for the network, lazy (row-sparse) Adam for large embedding
tables, stepped as one."""

from __future__ import annotations

import math

import torch

from msctr.models.embedding import FeatureEmbedding
from msctr.recipe import TrainConfig

# -- optimizer: dense Adam for the network, lazy Adam for large embedding tables -------------

# `sparse_embeddings: auto` switches a table to row-sparse updates from this many rows: below,
# a dense step over the whole table costs less than finding the touched rows (a sort of the
# batch's ids); above, the dense step's O(rows) work dominates. Measured crossover for a DNN
# step at batch 2000, d 16 on one CPU core: about 100k rows (docs/recipes.md, docs/bench.md).
SPARSE_AUTO_ROWS = 100_000


class LazyAdam(torch.optim.Optimizer):
    """Adam for embedding tables with row-sparse gradients: a step reads and writes the rows
    the batch touched and nothing else, so it costs O(touched rows), not O(table rows).

    For the touched rows the update is exactly Adam's (L2 weight decay added to the gradient,
    bias correction by the optimizer's global step count, as in TF's LazyAdam and torch's
    SparseAdam); untouched rows keep their value and moments, where dense Adam would keep
    moving them with decayed momentum. When every row is touched every step the two are the
    same (tests/test_bench.py checks both). A dense gradient gets the ordinary dense update.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @staticmethod
    def _rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unique row ids [U], summed gradient rows [U, d]) of a sparse COO gradient."""
        ids, values = grad._indices()[0], grad._values()
        if grad.is_coalesced():
            return ids, values
        # torch's coalesce() is several times slower on CPU than unique + index_add, and
        # int32 ids sort about twice as fast as int64
        small = grad.shape[0] < 2**31
        rows, inverse = torch.unique(ids.int() if small else ids, return_inverse=True)
        summed = values.new_zeros(rows.shape[0], values.shape[1]).index_add_(0, inverse, values)
        return rows.long(), summed

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                step_size = lr / (1 - b1**t)
                bc2_sqrt = math.sqrt(1 - b2**t)
                m_all, v_all = state["exp_avg"], state["exp_avg_sq"]
                if p.grad.is_sparse:
                    rows, g = self._rows(p.grad)
                    if wd:
                        g = g + wd * p.index_select(0, rows)
                    m = m_all.index_select(0, rows).lerp_(g, 1 - b1)
                    v = v_all.index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
                    m_all.index_copy_(0, rows, m)
                    v_all.index_copy_(0, rows, v)
                    update = m.div_(v.sqrt_().div_(bc2_sqrt).add_(eps)).mul_(-step_size)
                    p.index_add_(0, rows, update)  # rows are unique: adds to each row once
                else:
                    g = p.grad if not wd else p.grad + wd * p
                    m_all.lerp_(g, 1 - b1)
                    v_all.mul_(b2).addcmul_(g, g, value=1 - b2)
                    p.addcdiv_(m_all, v_all.sqrt().div_(bc2_sqrt).add_(eps), value=-step_size)


class Optimizers:
    """Several optimizers stepped as one (dense Adam for the network, lazy Adam for tables);
    `sparse_tables`: the tables LazyAdam steps (row-sparse gradients)."""

    def __init__(
        self,
        optimizers: list[torch.optim.Optimizer],
        sparse_tables: list[torch.nn.Parameter] | None = None,
    ):
        self.optimizers = optimizers
        self.sparse_tables = sparse_tables or []

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def set_lr(self, lr: float) -> None:
        for o in self.optimizers:
            for group in o.param_groups:
                group["lr"] = lr


def _row_sparse_tables(model: torch.nn.Module, mode: bool | str) -> list[torch.nn.Parameter]:
    """Give every FeatureEmbedding table row-sparse gradients (True), dense ones (False), or
    by size ("auto"); return the tables now giving row-sparse gradients. Models need no
    change: their look-ups all go through the embedding module, which reads its mode per
    call."""
    sparse = []
    for m in model.modules():
        if isinstance(m, FeatureEmbedding):
            on = mode is True or (mode == "auto" and m.table.num_embeddings >= SPARSE_AUTO_ROWS)
            m.row_sparse_gradients(on)
            if on:
                sparse.append(m.table.weight)
    return sparse


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> Optimizers:
    """Adam as the recipe asks: fused dense Adam (one kernel for all tensors; several times
    faster than the per-tensor loop on CPU) for the network, LazyAdam for row-sparse tables.

    A table's gradient layout and the optimizer stepping it must agree, so they are chosen
    together, here and only here (`train.sparse_embeddings`): this sets each embedding's
    mode, and the returned `Optimizers.sparse_tables` are what DDP leaves to the touched-row
    exchange."""
    sparse = _row_sparse_tables(model, t.sparse_embeddings)
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
    opts: list[torch.optim.Optimizer] = []
    if dense:
        fused = all(p.dtype == torch.float32 for p in dense)
        opts.append(
            torch.optim.Adam(dense, lr=t.lr, weight_decay=t.weight_decay, fused=fused or None)
        )
    if sparse:
        opts.append(LazyAdam(sparse, lr=t.lr, weight_decay=t.weight_decay))
    return Optimizers(opts, sparse)


def learning_rate(t: TrainConfig, epoch: int) -> float:
    """The learning rate of epoch `epoch` (from 0): the one place a schedule lives. A function
    of the epoch, not stepped, so a resumed run trains at the rate it stopped at."""
    return t.lr * t.lr_decay**epoch

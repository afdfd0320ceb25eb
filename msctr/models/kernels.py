"""The hand-written fast paths the model files use, each next to a plain PyTorch reference.

A kernel here computes what its `*_reference` function computes with ordinary autograd ops,
only cheaper (fewer passes, no float copy of a mask, gradients as index_add or sparse rows,
grouped matmuls instead of per-sample weights); tests/test_kernels.py compares the outputs
and gradients of every pair. Model files use the modules of embedding.py, blocks.py and
scenario.py, which call into this file.

Shapes in comments: B batch, d embedding size, S scenarios, E experts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

# -- embedding look-ups -------------------------------------------------------------------------


class _WeightedBag(torch.autograd.Function):
    """sum_j w[b, j] * table[ids[b, j]] per row b (embedding_bag, mode "sum"), with a backward
    that scatters the B*n row gradients with one index_add instead of embedding_bag's
    sort-based backward, about 3x cheaper on CPU. table [V, d], ids [B, n], w [B, n] (no
    gradient) -> [B, d]."""

    @staticmethod
    def forward(ctx, table, ids, w):
        ctx.save_for_backward(ids, w)
        ctx.rows = table.shape[0]
        return nn.functional.embedding_bag(ids, table, per_sample_weights=w, mode="sum")

    @staticmethod
    def backward(ctx, grad):  # grad [B, d]
        ids, w = ctx.saved_tensors
        d = grad.shape[-1]
        B, n = w.shape
        rows = (grad.unsqueeze(1).expand(B, n, d) * w.unsqueeze(-1).to(grad.dtype)).view(-1, d)
        return rows.new_zeros(ctx.rows, d).index_add_(0, ids.reshape(-1), rows), None, None


def weighted_bag_reference(table: torch.Tensor, ids: torch.Tensor, w: torch.Tensor):
    """`_WeightedBag` with autograd: table [V, d], ids [B, n], w [B, n] -> [B, d]."""
    return (table[ids] * w.unsqueeze(-1)).sum(1)


class _TouchedRows(torch.autograd.Function):
    """table[rows] for sorted unique `rows`; the table's gradient is a coalesced sparse tensor
    holding just those rows, so a step never touches the rest of the table, and two such
    gradients of one step add by a linear merge (uncoalesced ones would be sorted again)."""

    @staticmethod
    def forward(ctx, table, rows):  # table [V, d], rows [U] -> [U, d]
        ctx.save_for_backward(rows)
        ctx.shape = table.shape
        return table.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad):  # grad [U, d]
        (rows,) = ctx.saved_tensors
        g = torch.sparse_coo_tensor(
            rows.unsqueeze(0), grad, ctx.shape, is_coalesced=True, check_invariants=False
        )
        return g, None


def touched_rows_reference(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`_TouchedRows` with autograd (a dense table gradient): table [V, d], rows [U] -> [U, d]."""
    return table[rows]


# -- dropout ------------------------------------------------------------------------------------


def keep_mask(
    x: torch.Tensor, p: float, window: tuple[int, int, int] | None = None
) -> torch.Tensor:
    """uint8 0/1 in x's shape, 1 with probability 1 - p (p quantized to 1/65536), CPU.

    Each 64-bit output of a PCG64 generator gives four 16-bit draws, compared in NumPy. The
    generator is seeded from torch's global generator, so dropout stays reproducible under
    `torch.manual_seed`.

    `window` (data parallel: this process's share of the batch, `blocks.BatchShare`), for a
    tensor whose first dimension is the share's rows: its mask is the part of the stream one
    process would draw for the whole batch that falls on these rows (PCG64 jumps ahead to
    it), so each row gets the same mask as in one process, at the cost of this process's rows
    only.
    """
    n = x.numel()
    seed = int(torch.randint(0, 2**63 - 1, (1,)))
    start = 0
    if window is not None and x.dim() > 0 and x.shape[0] == window[1] > 0:
        start = window[0] * (n // x.shape[0])  # rows are contiguous in x's row-major order
    gen = np.random.PCG64(seed)
    if start >= 4:
        gen.advance(start // 4)
    skip = start % 4
    raw = gen.random_raw((skip + n + 3) // 4).view(np.int16)[skip : skip + n]
    return torch.from_numpy(raw >= round(p * 65536) - 32768).view(torch.uint8).view(x.shape)


class _MaskScale(torch.autograd.Function):
    """x * keep * scale, or relu(x) * keep * scale, with keep a uint8 0/1 mask.

    Multiplying by the uint8 mask converts it on the fly (no float copy of the mask), and
    the backward is two passes: g * keep * scale, or, after a ReLU, g where the output is
    positive (output > 0 exactly where x > 0 and keep = 1) times scale; the ReLU + dropout
    pair then saves one tensor instead of two."""

    @staticmethod
    def forward(ctx, x, keep, scale, relu):
        y = torch.mul(x, keep)
        if relu:
            y.relu_()
        y.mul_(scale)  # a separate scalar multiply: a bf16 mask would round 1 / (1 - p)
        ctx.scale, ctx.relu = scale, relu
        ctx.save_for_backward(y if relu else keep)
        return y

    @staticmethod
    def backward(ctx, grad):
        (saved,) = ctx.saved_tensors
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, saved, 0)
        else:
            grad = grad * saved
        return grad.mul_(ctx.scale), None, None, None


def mask_scale_reference(
    x: torch.Tensor, keep: torch.Tensor, scale: float, relu: bool
) -> torch.Tensor:
    """`_MaskScale` with autograd: (relu(x) if relu else x) * keep * scale."""
    return (torch.relu(x) if relu else x) * keep * scale


# -- STAR's partitioned normalization -----------------------------------------------------------


class _ScenarioBatchNorm(torch.autograd.Function):
    """y = (x - mu_s) * rstd_s * scale_s + shift_s with the batch statistics of each row's
    scenario s (or, where `ok` is false, the given fallback statistics, held constant), and
    the closed-form batch-norm backward per scenario. Autograd through the same formula
    takes about twice as many passes over [B, D], which made this most of a STAR step.
    Per-scenario rows are gathered with index_select (3-4x faster than indexing on the CPU).

    x [B, D], scenario [B], n [S, 1] rows per scenario (>= 1), ok [S, 1], mean / var
    [S, D] fallback statistics, scale / shift [S, D] -> (y [B, D], batch mean [S, D],
    biased batch variance [S, D]).
    """

    @staticmethod
    def forward(ctx, x, scenario, n, ok, fallback_mean, fallback_var, eps, scale, shift):
        S, D = fallback_mean.shape
        mean = x.new_zeros(S, D).index_add_(0, scenario, x).div_(n)
        mean = torch.where(ok, mean, fallback_mean)
        xc = x - mean.index_select(0, scenario)
        var = x.new_zeros(S, D).index_add_(0, scenario, xc * xc).div_(n)
        rstd = torch.rsqrt(torch.where(ok, var, fallback_var) + eps)  # [S, D]
        xhat = xc.mul_(rstd.index_select(0, scenario))
        ctx.save_for_backward(xhat, scenario, n, ok, rstd, scale)
        rows = torch.cat([scale, shift], 1).index_select(0, scenario)  # [B, 2D]
        return torch.addcmul(rows[:, D:], xhat, rows[:, :D]), mean, var

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar):
        xhat, scenario, n, ok, rstd, scale = ctx.saved_tensors
        S, D = scale.shape
        g_shift = gy.new_zeros(S, D).index_add_(0, scenario, gy)
        g_scale = gy.new_zeros(S, D).index_add_(0, scenario, gy * xhat)
        # dL/dxhat = gy * scale_s; its per-scenario mean and its mean against xhat follow
        # from g_shift and g_scale; both are zero where the statistics are constants
        k = torch.cat(
            [scale * rstd, ok * g_shift * scale * rstd / n, ok * g_scale * scale * rstd / n], 1
        ).index_select(0, scenario)  # [B, 3D]
        gx = torch.addcmul(-k[:, D : 2 * D], xhat, k[:, 2 * D :], value=-1.0)
        gx.addcmul_(gy, k[:, :D])
        return gx, None, None, None, None, None, None, g_scale, g_shift


def scenario_batch_norm_reference(
    x: torch.Tensor,
    scenario: torch.Tensor,
    ok: torch.Tensor,
    fallback_mean: torch.Tensor,
    fallback_var: torch.Tensor,
    eps: float,
    scale: torch.Tensor,
    shift: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_ScenarioBatchNorm` by the textbook formula, with autograd, one scenario at a time:
    x_hat = (x - mean_s) / sqrt(var_s + eps), y = x_hat * scale_s + shift_s, with the batch
    mean and biased variance of scenario s where ok[s], else the fallback statistics.
    Returns (y [B, D], mean [S, D], var [S, D]), the statistics used (the kernel returns the
    batch statistics, which its callers read only where ok)."""
    means, variances = [], []
    for s in range(fallback_mean.shape[0]):
        rows = x[scenario == s]
        if ok[s]:
            means.append(rows.mean(0))
            variances.append(rows.var(0, unbiased=False))
        else:
            means.append(fallback_mean[s])
            variances.append(fallback_var[s])
    mean, var = torch.stack(means), torch.stack(variances)
    x_hat = (x - mean[scenario]) / torch.sqrt(var[scenario] + eps)
    return x_hat * scale[scenario] + shift[scenario], mean, var


# -- per-scenario linears -----------------------------------------------------------------------
# Each computes x [B, in], weight [S, in, out], bias [S, out] -> [B, out] (and, where noted,
# x [B, E, in], weight [S, E, in, out], bias [S, E, out] -> [B, E, out]) with each row through
# its own scenario's weights; ScenarioGroups (scenario.py) builds their index tensors once per
# batch and picks one.


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on x runs in: autocast's when autocast is on, else x's."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def dense_select_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scenario: torch.Tensor
) -> torch.Tensor:
    """For narrow outputs: every scenario's output for every row in one [in, S * out] matmul,
    then each row's own picked. x [B, in], weight [S, in, out], bias [S, out] -> [B, out]."""
    S, a, b = weight.shape
    y = (x @ weight.permute(1, 0, 2).reshape(a, S * b)).view(-1, b)  # [B*S, out]
    own = torch.arange(x.shape[0], device=x.device) * S + scenario
    return y.index_select(0, own) + bias.index_select(0, scenario)


def padded_layout(
    order: torch.Tensor,
    counts: torch.Tensor,
    rank: torch.Tensor,
    sorted_scenario: torch.Tensor,
    quantum: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows sorted by scenario, each scenario's block padded to a multiple of `quantum`
    rows: (slot of each row [B], end slot of each scenario [S] int32, slots in all).

    order [B] rows in scenario order, counts [S] rows per scenario, rank [B] position of
    each sorted row within its scenario, sorted_scenario [B] the scenario of each sorted row.
    """
    padded = (counts + quantum - 1) // quantum * quantum
    ends = torch.cumsum(padded, 0)
    slot = torch.empty_like(order)
    slot[order] = (ends - padded)[sorted_scenario] + rank
    return slot, ends.to(torch.int32), int(ends[-1])


def grouped_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scenario: torch.Tensor,
    order: torch.Tensor,
    layout: Callable[[int], tuple[torch.Tensor, torch.Tensor, int]],
) -> torch.Tensor:
    """CPU, eager: one `grouped_mm` over the rows sorted by scenario (`order`), each
    scenario's weight used in place; with E experts per scenario, E x S groups. `layout`
    gives `padded_layout` for a quantum (ScenarioGroups keeps one per quantum). fp32 and
    bf16 only (grouped_mm's dtypes); [B, in] or [B, E, in]."""
    dt = matmul_dtype(x)  # grouped_mm is not autocast-aware
    # bf16 runs each group through oneDNN, which builds a kernel for every new row count:
    # with the counts varying batch to batch that cost 70-80 ms per STAR step against
    # 40-45 ms once built. Blocks padded to multiples of 32 rows repeat a few shapes.
    quantum = 1 if dt == torch.float32 else 32
    slot, ends, slots = layout(quantum)
    if quantum == 1:
        xs = x.index_select(0, order)  # [B, ...] rows sorted by scenario
    else:
        xs = x.new_zeros(slots, *x.shape[1:]).index_copy(0, slot, x)
    a, b = weight.shape[-2:]
    pad_a, pad_b = -a % 8, -b % 8  # grouped_mm wants rows of a multiple of 16 bytes
    xs, weight = xs.to(dt), weight.to(dt)
    if pad_a or pad_b:
        xs = nn.functional.pad(xs, (0, pad_a))
        weight = nn.functional.pad(weight, (0, pad_b, 0, pad_a))
    a, b = a + pad_a, b + pad_b
    if weight.dim() == 3:
        y = nn.functional.grouped_mm(xs, weight, offs=ends)  # [slots, out]
    else:  # E experts per scenario: E x S groups, expert-major
        E, S = xs.shape[1], weight.shape[0]
        starts = torch.arange(E, device=x.device, dtype=torch.int32).unsqueeze(1) * slots
        y = nn.functional.grouped_mm(
            xs.transpose(0, 1).reshape(E * slots, a),
            weight.transpose(0, 1).reshape(E * S, a, b),
            offs=(starts + ends).flatten(),
        )
        y = y.view(E, slots, b).transpose(0, 1)  # [slots, E, out]
    # index_select: 3-4x faster than y[...] on the CPU
    y = y[..., : b - pad_b].index_select(0, slot)  # [B, (E,) out]
    return y + bias.to(dt).index_select(0, scenario)


def chunked_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    chunk_scenario: torch.Tensor,
    row_chunk: torch.Tensor,
    row_slot: torch.Tensor,
    num_chunks: int,
    chunk: int,
) -> torch.Tensor:
    """Other devices and compiled graphs: the rows, placed in `num_chunks` chunks of `chunk`
    rows of one scenario each (row b in chunk row_chunk[b], slot row_slot[b]; unused slots
    hold zeros), go through one batched matmul with one weight matrix gathered per chunk
    (chunk_scenario [n]). [B, in] or [B, E, in]."""
    w = weight[chunk_scenario]  # [n, (E,) in, out]
    b = bias[chunk_scenario]  # [n, (E,) out]
    out = x.new_zeros(num_chunks, chunk, *x.shape[1:])
    p = out.index_put((row_chunk, row_slot), x)  # [n, c, (E,) in]
    if weight.dim() == 3:
        y = torch.baddbmm(b.unsqueeze(1), p, w)  # [n, c, out]
    else:
        y = (torch.matmul(p.transpose(1, 2), w) + b.unsqueeze(2)).transpose(1, 2)  # [n,c,E,out]
    return y[row_chunk, row_slot]


def grouped_linear_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scenario: torch.Tensor
) -> torch.Tensor:
    """Each row through its scenario's linear, one scenario at a time, with autograd:
    x [B, in], weight [S, in, out], bias [S, out] -> [B, out];
    x [B, E, in], weight [S, E, in, out], bias [S, E, out] -> [B, E, out]."""
    out = x.new_zeros(*x.shape[:-1], weight.shape[-1])
    for s in range(weight.shape[0]):
        rows = (scenario == s).nonzero().squeeze(1)
        y = torch.matmul(x[rows].unsqueeze(-2), weight[s]).squeeze(-2) + bias[s]
        out = out.index_copy(0, rows, y)
    return out

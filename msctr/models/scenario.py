"""Layers whose weights differ per scenario: a batch's rows grouped by scenario once, and
linears and towers that run each row through its own scenario's weights.

Shapes in comments: B batch, S scenarios, E experts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from msctr.models.blocks import Dropout, at_least_fp32
from msctr.models.kernels import (
    _ScenarioBatchNorm,
    chunked_linear,
    dense_select_linear,
    grouped_linear,
    grouped_linear_reference,
    matmul_dtype,
    padded_layout,
)

GROUPED_DTYPES = (torch.float32, torch.bfloat16)  # those grouped_mm has kernels for
DENSE_SELECT = 512  # S * out at or below which ScenarioGroups.linear computes all scenarios


class ScenarioGroups:
    """A batch's rows grouped by scenario, for layers whose weights differ per scenario.

    Gathering one weight matrix per sample (as a naive per-row linear would) copies
    B x in x out floats, which for expert-sized layers costs far more than the matmul. Here
    the rows are sorted by scenario once per batch and every layer runs one grouped matmul:
    on the CPU (eager) `grouped_mm` over the sorted rows with each scenario's weight used in
    place (in bf16 each scenario's block padded to a multiple of 32 rows); elsewhere the
    sorted rows are cut into chunks of `chunk` rows that hold one scenario each, one weight
    matrix is gathered per chunk and all chunks go through one batched matmul (padding at
    most chunk - 1 rows per scenario; the chunk count uses a static upper bound, so building
    the groups never syncs a GPU). Layers with narrow outputs (gates, tower tops) instead
    compute every scenario's output for every row and pick the row's own, which is cheaper
    than moving the rows (see `DENSE_SELECT`). The three are kernels.py's `grouped_linear`,
    `chunked_linear` and `dense_select_linear`; this class builds their index tensors once
    per batch and picks one.
    """

    def __init__(self, scenario: torch.Tensor, num_scenarios: int, chunk: int | None = None):
        B = scenario.shape[0]
        S = num_scenarios
        dev = scenario.device
        self.scenario = scenario
        # under a trace (msctr export) the layouts below would be frozen: their sizes are
        # Python ints taken from this batch's counts; `linear` picks each scenario's rows
        self.traced = torch.jit.is_tracing()
        if self.traced:
            return
        # grouped_mm: CPU eager only (compiled graphs accept it for bf16 inputs only)
        self.grouped = dev.type == "cpu" and chunk is None and not torch.compiler.is_compiling()
        sorted_s, order = torch.sort(scenario, stable=True)
        # [S]; not bincount, whose data-dependent output size breaks torch.compile graphs
        counts = torch.zeros(S, dtype=scenario.dtype, device=dev).index_add_(
            0, scenario, torch.ones_like(scenario)
        )
        first_row = torch.cumsum(counts, 0) - counts
        rank = torch.arange(B, device=dev) - first_row[sorted_s]  # position within its scenario
        self.chunk = chunk
        if self.grouped:
            self.order, self.counts, self.rank, self.sorted_scenario = order, counts, rank, sorted_s
            self._layouts: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
            return
        self._chunk_layout(order, counts, rank, sorted_s)

    def _chunk_layout(
        self, order: torch.Tensor, counts: torch.Tensor, rank: torch.Tensor, sorted_s: torch.Tensor
    ) -> None:
        """The index tensors of `chunked_linear`."""
        B, S, dev = order.shape[0], counts.shape[0], order.device
        # padding <= S * chunk (about B / 4 once B >= 32 S); >= 8 rows keep the gathers few
        self.chunk = self.chunk or max(8, math.ceil(B / (4 * S)))
        n_chunks = (counts + self.chunk - 1) // self.chunk  # [S]
        first_chunk = torch.cumsum(n_chunks, 0) - n_chunks
        self.row_chunk = torch.empty_like(order)  # [B] chunk of each row (original row order)
        self.row_slot = torch.empty_like(order)  # [B] slot of each row inside its chunk
        self.row_chunk[order] = first_chunk[sorted_s] + torch.div(
            rank, self.chunk, rounding_mode="floor"
        )
        self.row_slot[order] = rank % self.chunk
        self.num_chunks = B // self.chunk + S  # >= sum_s ceil(count_s / chunk)
        # scenario of each chunk; the unused tail chunks hold zeros and borrow the last scenario
        chunk_ids = torch.arange(self.num_chunks, device=dev)
        self.chunk_scenario = torch.searchsorted(
            torch.cumsum(n_chunks, 0), chunk_ids, right=True
        ).clamp_max(S - 1)  # [n]

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Each row through its scenario's linear.

        x [B, in], weight [S, in, out], bias [S, out] -> [B, out];
        x [B, E, in], weight [S, E, in, out], bias [S, E, out] -> [B, E, out].
        """
        if weight.dim() == 3 and weight.shape[0] * weight.shape[2] <= DENSE_SELECT:
            return dense_select_linear(x, weight, bias, self.scenario)
        if self.traced:
            return grouped_linear_reference(x, weight, bias, self.scenario)
        if self.grouped:
            if matmul_dtype(x) in GROUPED_DTYPES:
                return grouped_linear(x, weight, bias, self.scenario, self.order, self._layout)
            if not hasattr(self, "row_chunk"):  # float64 (the pinned tests): no grouped_mm
                self._chunk_layout(self.order, self.counts, self.rank, self.sorted_scenario)
        return chunked_linear(
            x, weight, bias, self.chunk_scenario, self.row_chunk, self.row_slot,
            self.num_chunks, self.chunk,
        )  # fmt: skip

    def _layout(self, quantum: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """`padded_layout` of this batch for `quantum`, built once per quantum."""
        if quantum not in self._layouts:
            self._layouts[quantum] = padded_layout(
                self.order, self.counts, self.rank, self.sorted_scenario, quantum
            )
        return self._layouts[quantum]


class ScenarioLinear(nn.Module):
    """One linear per scenario; each sample uses only its own scenario's weights.

    Rows are grouped by scenario (`ScenarioGroups`) and all groups go through one batched
    matmul, so the cost is close to that of a single tower and there is no Python loop over
    scenarios. Pass prebuilt groups to share one grouping between layers.
    """

    def __init__(self, num_scenarios: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_scenarios, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(num_scenarios, out_dim))
        bound = 1 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, scenario: torch.Tensor | ScenarioGroups) -> torch.Tensor:
        # x [B, in], scenario [B] -> [B, out]
        if not isinstance(scenario, ScenarioGroups):
            scenario = ScenarioGroups(scenario, self.weight.shape[0])
        return scenario.linear(x, self.weight, self.bias)


class ScenarioMLP(nn.Module):
    """A per-scenario tower (ReLU hidden layers, optional final linear) using ScenarioLinear."""

    def __init__(
        self,
        num_scenarios: int,
        in_dim: int,
        hidden: list[int] | tuple[int, ...],
        out_dim: int | None = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        dims = [in_dim, *hidden]
        self.hidden = nn.ModuleList(
            ScenarioLinear(num_scenarios, a, b) for a, b in zip(dims[:-1], dims[1:])
        )
        self.out = ScenarioLinear(num_scenarios, dims[-1], out_dim) if out_dim else None
        self.dropout = Dropout(dropout)
        self.out_dim = out_dim or dims[-1]
        self.num_scenarios = num_scenarios

    def forward(self, x: torch.Tensor, scenario: torch.Tensor | ScenarioGroups) -> torch.Tensor:
        if not isinstance(scenario, ScenarioGroups):
            scenario = ScenarioGroups(scenario, self.num_scenarios)
        for layer in self.hidden:
            x = self.dropout(layer(x, scenario), relu=True)
        return self.out(x, scenario) if self.out is not None else x


class ScenarioBatchNorm(nn.Module):
    """Batch normalization of units that belong to the row's scenario (a scenario's own
    expert or tower): each scenario has its own batch statistics, running statistics and
    affine, as if each scenario's layer had its own nn.BatchNorm1d over its own rows.

    Training: each scenario's rows use that scenario's mean and (biased) variance in the batch,
    and update that scenario's running statistics. A scenario with fewer than 2 rows in the
    batch has no usable variance: its rows use its running statistics and leave them unchanged.
    Eval: each row uses its own scenario's running statistics. [B, D], scenario [B] -> [B, D].
    """

    def __init__(self, num_scenarios: int, dim: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        S = num_scenarios
        self.eps = eps
        self.momentum = momentum
        self.scenario_gamma = nn.Parameter(torch.ones(S, dim))
        self.scenario_beta = nn.Parameter(torch.zeros(S, dim))
        self.register_buffer("running_mean", torch.zeros(S, dim))
        self.register_buffer("running_var", torch.ones(S, dim))

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and shift per scenario, [S, D] each."""
        return self.scenario_gamma, self.scenario_beta

    def forward(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        x = at_least_fp32(x)  # statistics in fp32 under bf16 autocast, as nn.BatchNorm1d's
        scale, shift = self.affine()
        if not self.training:  # one gathered scale and shift per row
            a = scale * torch.rsqrt(self.running_var + self.eps)
            rows = torch.cat([a, shift - self.running_mean * a], 1).index_select(0, scenario)
            return torch.addcmul(rows[:, x.shape[1] :], x, rows[:, : x.shape[1]])
        S = self.running_mean.shape[0]
        counts = x.new_zeros(S).index_add_(0, scenario, x.new_ones(x.shape[0])).unsqueeze(1)
        ok = counts >= 2  # a scenario with fewer rows has no usable batch variance
        # the formula above, with its closed-form backward (kernels.py)
        y, mean, var = _ScenarioBatchNorm.apply(
            x, scenario, counts.clamp_min(1.0), ok, self.running_mean, self.running_var,
            self.eps, scale, shift,
        )  # fmt: skip
        with torch.no_grad():  # running var is unbiased, as in nn.BatchNorm1d
            step = self.momentum * ok.to(x.dtype)  # 0 for scenarios without statistics
            self.running_mean.lerp_(mean, step)
            self.running_var.lerp_(var * counts / (counts - 1).clamp_min(1.0), step)
        return y

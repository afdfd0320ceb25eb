"""The few pieces that are truly shared: embedding, MLP, gates, stacked and per-scenario linears.

Shapes in comments: B batch, F fields, d embedding size, S scenarios, E experts.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from msctr.data.batch import Batch
from msctr.data.schema import Schema
from msctr.errors import UserError


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


class FeatureEmbedding(nn.Module):
    """All categorical inputs in one table (per-field offsets), plus dense and sequence fields.

    `fields(batch)` gives one d-vector per input field, in this order:
    [scenario] + sparse fields + dense fields (value x learned vector) + [one masked-mean
    pooled vector per behavior sequence]. Sequence ids share their target field's rows,
    so a clicked video and a candidate video have the same embedding.
    """

    def __init__(
        self,
        schema: Schema,
        dim: int,
        include_scenario: bool = True,
        pool_sequences: bool = True,
        sparse_grad: bool = False,
    ):
        super().__init__()
        self.schema = schema
        self.dim = dim
        self.include_scenario = include_scenario
        self.pool_sequences = pool_sequences and bool(schema.sequences)
        sizes = [f.vocab_size for f in schema.sparse]
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.table = nn.Embedding(sum(sizes), dim, sparse=sparse_grad)
        self.scenario_table = nn.Embedding(schema.num_scenarios, dim)
        self.dense_vectors = nn.Parameter(torch.empty(len(schema.dense), dim))
        seq_offsets = [
            torch.tensor([offsets[schema.sparse_index(f.shares)] for f in seq.fields])
            for seq in schema.sequences
        ]
        for i, o in enumerate(seq_offsets):
            self.register_buffer(f"seq_offsets_{i}", o, persistent=False)
        nn.init.normal_(self.table.weight, std=1e-2)
        nn.init.normal_(self.scenario_table.weight, std=1e-2)
        nn.init.normal_(self.dense_vectors, std=1e-2)
        self.field_names = (
            (["scenario"] if include_scenario else [])
            + schema.sparse_names
            + schema.dense_names
            + ([s.name for s in schema.sequences] if self.pool_sequences else [])
        )

    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    def positions(self, names: list[str], key: str) -> list[int]:
        """Positions of named fields in `fields(batch)` ("scenario" names the scenario);
        `key` is the recipe parameter that listed them, for the error message."""
        out = []
        for n in names:
            if n not in self.field_names:
                raise UserError(
                    f"model.params.{key}: '{n}' is not a field of this dataset; "
                    f"choose from: {', '.join(self.field_names)}"
                )
            if self.field_names.index(n) in out:
                raise UserError(f"model.params.{key}: field '{n}' is listed twice; list it once")
            out.append(self.field_names.index(n))
        return out

    def scenario(self, batch: Batch) -> torch.Tensor:  # [B, d]
        return self.scenario_table(batch.scenario)

    def touched(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-sparse mode: (the distinct rows of `ids` [U, d], each id's position [...] in
        them). Gradients then flow into [U, d] and reach the table as one sparse tensor."""
        small = self.table.num_embeddings < 2**31  # int32 ids sort about 2x faster
        uniq, pos = torch.unique(ids.reshape(-1).int() if small else ids, return_inverse=True)
        return _TouchedRows.apply(self.table.weight, uniq.long()), pos.view(ids.shape)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:  # [...] -> [..., d]
        """Rows of the shared table. On CPU: index_select, whose backward is one index_add,
        about 2x cheaper than nn.Embedding's sort-based one, on the table itself or, with
        `table.sparse` (set by the engine for big tables), on the touched rows. On GPU the
        embedding module itself (it reads `table.sparse`)."""
        if ids.device.type != "cpu":
            return self.table(ids)
        rows, pos = self.touched(ids) if self.table.sparse else (self.table.weight, ids)
        return rows.index_select(0, pos.reshape(-1)).view(*ids.shape, self.dim)

    def sparse(self, batch: Batch) -> torch.Tensor:  # [B, F, d]
        return self.lookup(batch.sparse + self.offsets)

    def sequence(self, batch: Batch, i: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Behaviors of sequence i: ([B, L, d] mean over attribute embeddings, mask [B, L])."""
        ids = batch.seq_ids[i] + getattr(self, f"seq_offsets_{i}")  # [B, L, K]
        return self.lookup(ids).mean(dim=2), batch.seq_mask[i]

    def pooled_sequence(self, batch: Batch, i: int = 0) -> torch.Tensor:  # [B, d]
        """Masked mean over behaviors of the mean over attributes, as one weighted bag sum:
        sum_{l,k} mask_l / (K * n_valid) * E[id_lk]. The fused bag never builds the
        [B, L, K, d] tensor, which made this the costliest part of most models' steps."""
        ids = batch.seq_ids[i] + getattr(self, f"seq_offsets_{i}")  # [B, L, K]
        B, L, K = ids.shape
        m = batch.seq_mask[i].to(self.table.weight.dtype)  # [B, L]
        w = m / (K * m.sum(1, keepdim=True).clamp_min(1.0))  # [B, L]; empty rows -> zeros
        w = w.unsqueeze(-1).expand(B, L, K).reshape(B, L * K)
        if ids.device.type == "cpu":
            rows, pos = self.touched(ids) if self.table.sparse else (self.table.weight, ids)
            return _WeightedBag.apply(rows, pos.reshape(B, L * K), w)
        return nn.functional.embedding_bag(
            ids.view(B, L * K), self.table.weight, per_sample_weights=w, mode="sum",
            sparse=self.table.sparse,
        )  # fmt: skip

    def fields(self, batch: Batch) -> torch.Tensor:  # [B, n_fields, d]
        parts = []
        if self.include_scenario:
            parts.append(self.scenario(batch).unsqueeze(1))
        parts.append(self.sparse(batch))
        if self.schema.dense:
            parts.append(batch.dense.unsqueeze(-1) * self.dense_vectors)
        if self.pool_sequences:
            parts.extend(
                self.pooled_sequence(batch, i).unsqueeze(1)
                for i in range(len(self.schema.sequences))
            )
        return torch.cat(parts, dim=1)


def keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """uint8 0/1 in x's shape, 1 with probability 1 - p (p quantized to 1/65536), CPU.

    Each 64-bit output of a PCG64 generator gives four 16-bit draws, compared in NumPy. The
    generator is seeded from torch's global generator, so dropout stays reproducible under
    `torch.manual_seed`.
    """
    n = x.numel()
    seed = int(torch.randint(0, 2**63 - 1, (1,)))
    raw = np.random.PCG64(seed).random_raw((n + 3) // 4).view(np.int16)[:n]
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


class Dropout(nn.Module):
    """Inverted dropout, as nn.Dropout, with a cheaper mask on the CPU.

    nn.Dropout draws one Bernoulli variate per element from torch's CPU generator and fills
    with a bool mask, which in the expert models cost more than all their bf16 matmuls
    together. Here the mask comes from `keep_mask` and is applied by `_MaskScale`; with
    `relu=True` the ReLU before the dropout runs in the same op. On other devices this is
    nn.functional.relu / dropout.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return torch.relu(x) if relu else x
        if x.device.type != "cpu":
            return nn.functional.dropout(torch.relu(x) if relu else x, self.p, training=True)
        return _MaskScale.apply(x, keep_mask(x, self.p), 1.0 / (1.0 - self.p), relu)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on x runs in: autocast's when autocast is on, else x's."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """x in the autocast dtype when autocast is on: an input that feeds several matmuls
    (experts and gates) is then cast once instead of once per matmul, forward and backward."""
    return x.to(matmul_dtype(x))


class MLP(nn.Sequential):
    """Linear -> [BatchNorm] -> activation -> Dropout, per hidden size; optional final linear.

    A ReLU followed by Dropout runs as one op (`Dropout(x, relu=True)`); the modules stay
    separate, so the layer indices in checkpoints are those of the plain sequence.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: list[int] | tuple[int, ...],
        dropout: float = 0.0,
        batch_norm: bool = False,
        out_dim: int | None = None,
        activation: type[nn.Module] = nn.ReLU,
    ):
        layers: list[nn.Module] = []
        for h in hidden:
            layers.append(nn.Linear(in_dim, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation())
            if dropout > 0:
                layers.append(Dropout(dropout))
            in_dim = h
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
            in_dim = out_dim
        super().__init__(*layers)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fuse = False
        for layer, following in zip(self, [*self][1:] + [None]):
            if fuse:  # this Dropout already ran with the ReLU before it
                fuse = False
            elif isinstance(layer, nn.ReLU) and isinstance(following, Dropout):
                x, fuse = following(x, relu=True), True
            else:
                x = layer(x)
        return x


class GateNU(nn.Module):
    """PEPNet's gate neural unit: gamma * sigmoid(W2 ReLU(W1 x)), values in (0, gamma)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, gamma: float = 2.0):
        super().__init__()
        hidden = hidden or out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.sigmoid(self.net(x))


class StackedLinear(nn.Module):
    """n independent linears in one matmul, outputs side by side: x [B, in] (shared by all
    n) or [B, n, in] (one input each) -> [B, n * out]. Used for experts every sample uses."""

    def __init__(self, n: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(n, 1, out_dim))
        bound = 1 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, a, b = self.weight.shape
        if x.dim() == 2:  # shared input: one [in, n * out] matmul
            w = self.weight.permute(1, 0, 2).reshape(a, n * b)
            return torch.addmm(self.bias.reshape(1, -1), x, w)
        # [n, B, in] copy first: bmm's weight gradient on a strided view copies slower
        y = torch.baddbmm(self.bias, x.transpose(0, 1).contiguous(), self.weight)  # [n, B, out]
        return y.transpose(0, 1).reshape(x.shape[0], n * b)


class StackedMLP(nn.Module):
    """n MLPs of equal shape (e.g. experts) on one shared input: [B, in] -> [B, n, out].

    Activations stay in a [B, n * h] layout: the first layer is one [in, n * h] matmul (the
    input is shared), one BatchNorm1d spans all n MLPs' units of a layer (each MLP keeps its
    own statistics) and needs no transpose, and later layers are one batched matmul over the
    n MLPs.
    """

    def __init__(
        self,
        n: int,
        in_dim: int,
        hidden: list[int] | tuple[int, ...],
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        dims = [in_dim, *hidden]
        self.layers = nn.ModuleList(StackedLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(n * h) if batch_norm else nn.Identity() for h in hidden
        )
        self.dropout = Dropout(dropout)
        self.n = n
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, norm in zip(self.layers, self.norms):
            x = self.dropout(norm(layer(x)), relu=True).view(x.shape[0], self.n, -1)
        return x  # [B, n, out]


DENSE_SELECT = 512  # S * out at or below which ScenarioGroups.linear computes all scenarios


class ScenarioGroups:
    """A batch's rows grouped by scenario, for layers whose weights differ per scenario.

    Gathering one weight matrix per sample (as a naive per-row linear would) copies
    B x in x out floats, which for expert-sized layers costs far more than the matmul. Here
    the rows are sorted by scenario once per batch and every layer runs one grouped matmul:
    on the CPU (eager) `grouped_mm` over the sorted rows with each scenario's weight used in
    place (in bf16 each scenario's block padded to a multiple of 32 rows, see
    `_grouped_linear`); elsewhere the sorted rows are cut into chunks of `chunk` rows that
    hold one scenario each, one weight matrix is gathered per chunk and all chunks go through
    one batched matmul (padding at most chunk - 1 rows per scenario; the chunk count uses a
    static upper bound, so building the groups never syncs a GPU). Layers with narrow
    outputs (gates, tower tops) instead compute every scenario's output for every row and
    pick the row's own, which is cheaper than moving the rows (see `DENSE_SELECT`).
    """

    def __init__(self, scenario: torch.Tensor, num_scenarios: int, chunk: int | None = None):
        B = scenario.shape[0]
        S = num_scenarios
        dev = scenario.device
        self.scenario = scenario
        # grouped_mm: CPU eager only (compiled graphs accept it for bf16 inputs only)
        self.grouped = dev.type == "cpu" and chunk is None and not torch.compiler.is_compiling()
        sorted_s, order = torch.sort(scenario, stable=True)
        # [S]; not bincount, whose data-dependent output size breaks torch.compile graphs
        counts = torch.zeros(S, dtype=scenario.dtype, device=dev).index_add_(
            0, scenario, torch.ones_like(scenario)
        )
        first_row = torch.cumsum(counts, 0) - counts
        rank = torch.arange(B, device=dev) - first_row[sorted_s]  # position within its scenario
        if self.grouped:
            self.order, self.counts, self.rank, self.sorted_scenario = order, counts, rank, sorted_s
            self._layouts: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
            return
        # padding <= S * chunk (about B / 4 once B >= 32 S); >= 8 rows keep the gathers few
        self.chunk = chunk or max(8, math.ceil(B / (4 * S)))
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
            S, a, b = weight.shape
            y = (x @ weight.permute(1, 0, 2).reshape(a, S * b)).view(-1, b)  # [B*S, out]
            own = torch.arange(x.shape[0], device=x.device) * S + self.scenario
            return y.index_select(0, own) + bias.index_select(0, self.scenario)
        if self.grouped:
            return self._grouped_linear(x, weight, bias)
        w = weight[self.chunk_scenario]  # [n, (E,) in, out]
        b = bias[self.chunk_scenario]  # [n, (E,) out]
        out = x.new_zeros(self.num_chunks, self.chunk, *x.shape[1:])
        p = out.index_put((self.row_chunk, self.row_slot), x)  # [n, c, (E,) in]
        if weight.dim() == 3:
            y = torch.baddbmm(b.unsqueeze(1), p, w)  # [n, c, out]
        else:
            y = (torch.matmul(p.transpose(1, 2), w) + b.unsqueeze(2)).transpose(1, 2)  # [n,c,E,out]
        return y[self.row_chunk, self.row_slot]

    def _layout(self, quantum: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Rows sorted by scenario, each scenario's block padded to a multiple of `quantum`
        rows: (slot of each row [B], end slot of each scenario [S] int32, slots in all)."""
        if quantum not in self._layouts:
            padded = (self.counts + quantum - 1) // quantum * quantum
            ends = torch.cumsum(padded, 0)
            slot = torch.empty_like(self.order)
            slot[self.order] = (ends - padded)[self.sorted_scenario] + self.rank
            self._layouts[quantum] = (slot, ends.to(torch.int32), int(ends[-1]))
        return self._layouts[quantum]

    def _grouped_linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        dt = matmul_dtype(x)  # grouped_mm is not autocast-aware
        # bf16 runs each group through oneDNN, which builds a kernel for every new row count:
        # with the counts varying batch to batch that cost 70-80 ms per STAR step against
        # 40-45 ms once built. Blocks padded to multiples of 32 rows repeat a few shapes.
        quantum = 1 if dt == torch.float32 else 32
        slot, ends, slots = self._layout(quantum)
        if quantum == 1:
            xs = x.index_select(0, self.order)  # [B, ...] rows sorted by scenario
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
        return y + bias.to(dt).index_select(0, self.scenario)


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

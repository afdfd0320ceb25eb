"""Multiply-add counts of a model, measured by running it: each op it dispatches is counted by
that op's formula (PyTorch's, and below three of msctr's own for ops PyTorch's counter does
not know), so what `bench-inference` reports needs no formula per model. (HierRec's
`multiply_adds_per_sample` is a formula of its own: a by-part breakdown for reading where its
cost goes, not what the benchmarks report.)

`torch.utils.flop_counter.FlopCounterMode` sees every matmul-like ATen op (mm, addmm, bmm,
baddbmm, convolutions, attention kernels) that a forward or backward actually dispatches, so
the count follows whatever the model really computes: einsum and matmul decompose into these
ops, and per-scenario layers (`ScenarioGroups`: grouped matmuls, chunk padding, or every
scenario's output for narrow layers) are counted as the work they do. Elementwise
ops, look-ups, softmax and normalisation are not counted; for these models they are a small
share of the arithmetic but not of the time, which is why the benchmarks report both.

One multiply-add = 2 FLOPs (the counter's convention).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils import flop_counter as fc

from msctr.data.batch import Batch
from msctr.models.registry import training_loss


def _as_4d(shape: tuple[int, ...]) -> tuple[int, ...]:
    # SDPA accepts [N, L, E] as well as [N, H, L, E]; the counter's formulas want 4 dims
    return (1, *shape) if len(shape) == 3 else tuple(shape)


def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_flop_count(_as_4d(query_shape), _as_4d(key_shape), _as_4d(value_shape))


def _sdpa_cpu_backward(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return fc.sdpa_backward_flop_count(
        _as_4d(grad_out_shape), _as_4d(query_shape), _as_4d(key_shape), _as_4d(value_shape)
    )


def _grouped_mm(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """Rows of a split into groups, each times its group's matrix: out x contraction MACs.
    With a and b both 2-D (the weight gradient) the groups split the contraction instead."""
    macs = math.prod(out_shape) * a_shape[-1]
    if len(a_shape) == 2 and len(b_shape) == 2:
        macs //= out_shape[0]
    return 2 * macs


# PyTorch's counter knows the CUDA attention kernels but not the CPU flash kernel, nor the
# grouped matmul of the per-scenario layers
_EXTRA: dict = {}
for _name, _fn in (
    ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu),
    ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_cpu_backward),
    ("_grouped_mm", _grouped_mm),
):
    if hasattr(torch.ops.aten, _name):
        _EXTRA[getattr(torch.ops.aten, _name)] = _fn  # the counter looks up op packets


def counter() -> fc.FlopCounterMode:
    return fc.FlopCounterMode(display=False, custom_mapping=_EXTRA)


@dataclass
class FlopCount:
    flops: int  # total FLOPs (2 per multiply-add)
    samples: int
    by_module: dict[str, int]  # top-level submodule name -> FLOPs

    @property
    def macs_per_sample(self) -> float:
        return self.flops / 2 / max(self.samples, 1)

    @property
    def flops_per_sample(self) -> float:
        return self.flops / max(self.samples, 1)


def _by_module(mode: fc.FlopCounterMode) -> dict[str, int]:
    # keys look like "Global", "DNN", "DNN.mlp", "DNN.mlp.0"; keep depth-1 children
    out: dict[str, int] = {}
    for key, ops in mode.get_flop_counts().items():
        if key.count(".") == 1:
            out[key.split(".", 1)[1]] = int(sum(ops.values()))
    return out


def count(fn: Callable[[], object], samples: int) -> FlopCount:
    """FLOPs of everything `fn` dispatches (forward, and backward if it calls it)."""
    with counter() as mode:
        fn()
    return FlopCount(int(mode.get_total_flops()), samples, _by_module(mode))


def forward_flops(model: torch.nn.Module, batch: Batch) -> FlopCount:
    """Inference FLOPs of one batch (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return count(lambda: model(batch), len(batch))
    finally:
        model.train(was_training)


def train_step_flops(model: torch.nn.Module, batch: Batch) -> FlopCount:
    """FLOPs of one training step's forward and backward (the optimizer adds no matmuls)."""
    was_training = model.training
    model.train()

    def step() -> None:
        training_loss(model(batch), batch.label)[1].backward()

    try:
        return count(step, len(batch))
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)

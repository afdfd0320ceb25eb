"""Peak memory of a forward: CUDA's allocator statistics on a GPU; on the CPU, the tensor
storage created inside the forward and still alive, tracked op by op through a dispatch mode."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from msctr.data.batch import Batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storage created inside the block and still alive, on any device.

    Every op's outputs are registered by storage; storages are dropped once freed (checked
    with weak references after each op). Inputs and weights made outside are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, tuple[StorageWeakRef, int]] = {}
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key, (ref, nbytes) in list(self.refs.items()):
            if ref.expired():
                del self.refs[key]
                self.live -= nbytes
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self.refs:
                    self.refs[ref.cdata] = (ref, storage.nbytes())
                    self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        return out


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def batch_bytes(batch: Batch) -> int:
    return tensor_bytes(
        [batch.scenario, batch.sparse, batch.dense, batch.label, batch.partition]
        + list(batch.seq_ids)
        + list(batch.seq_mask)
    )


def peak_forward_bytes(run: Callable[[Batch], torch.Tensor], batch: Batch, device) -> int:
    """Extra memory of one forward beyond the weights and the input batch."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run(batch)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    with LiveTensorBytes() as mode:
        run(batch)
    return mode.peak

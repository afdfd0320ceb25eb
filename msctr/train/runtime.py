"""The process a run trains in: device, threads' memory behaviour, autocast, seeding."""

from __future__ import annotations

import contextlib
import ctypes
import random
import sys

import numpy as np
import torch

from msctr.errors import UserError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    Every training step allocates and frees the same large activation tensors. By default
    glibc serves those with fresh mmap pages, and touching fresh pages costs a page fault
    per 4 KiB: up to 7x the cost of a ReLU over the tensor, about 10 % of an MMoE bf16 step.
    Process-wide and idempotent; does nothing where malloc is not glibc's.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)  # serve big blocks from the heap ...
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)  # ... and keep them once freed


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device is '{name}' but no CUDA device is available; use cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast runs matmuls in bfloat16 and keeps weights, losses and reductions in fp32
    (on CPUs with AMX or AVX-512 BF16 and on recent GPUs the matmuls are several times faster)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

"""The process a run trains in: device, threads' memory behaviour, autocast, seeding."""

from __future__ import annotations

import contextlib
import ctypes
import random
import signal
import sys
import threading
from collections.abc import Iterator

import numpy as np
import torch

from msctr.errors import Interrupted, UserError, raise_interrupted


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every random state training draws from (torch's, CUDA's, NumPy's and Python's global
    generators), as tensors and plain values a weights-only checkpoint can hold. The loader's
    shuffle needs none: its order is a function of (seed, epoch)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class StepBoundaryStop:
    """SIGINT/SIGTERM while training: remembered, and raised as `Interrupted` only where
    `check` is called, between two training (or scoring) steps, so no step, checkpoint or
    output is cut in half. A second signal stops at once (every file is written atomically).
    One that no handler feeds (`StepBoundaryStop()`) never stops anything."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise_interrupted(signum, frame)
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


@contextlib.contextmanager
def stop_at_step_boundaries() -> Iterator[StepBoundaryStop]:
    """Within the block, SIGINT/SIGTERM are held by the `StepBoundaryStop` it yields and
    stop at its next `check()`, which the trainer calls between steps; a signal that came
    after the last check stops when the block ends. Outside the main thread (where no signal
    handler can be set): a stop that never fires."""
    stop = StepBoundaryStop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, stop.handle)
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    stop.check()


def _glibc() -> ctypes.CDLL | None:
    """glibc, whose malloc the functions below tune; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    Every training step allocates and frees the same large activation tensors. By default
    glibc serves those with fresh mmap pages, and touching fresh pages costs a page fault
    per 4 KiB: up to 7x the cost of a ReLU over the tensor, about 10 % of an MMoE bf16 step.
    Process-wide and idempotent; does nothing where malloc is not glibc's.
    """
    libc = _glibc()
    if libc is None:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)  # serve big blocks from the heap ...
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)  # ... and keep them once freed


def limit_heaps(threads: int) -> None:
    """Let glibc's malloc make at most max(2, `threads`) heaps (M_ARENA_MAX; by default 8 per
    core). Each thread that allocates while another holds a heap gets a heap of its own, and
    memory freed in one heap serves no other: with Polars', Arrow's and torch's threads all
    allocating, `msctr predict`'s resident memory grew chunk after chunk. Process-wide;
    does nothing where malloc is not glibc's."""
    libc = _glibc()
    if libc is None:
        return
    m_arena_max = -8
    libc.mallopt(m_arena_max, max(2, threads))


def release_freed_memory() -> None:
    """Hand memory that is free inside glibc's heaps back to the OS (malloc_trim).

    A loop that allocates large blocks of varying size from several threads (Polars, Arrow
    and torch each chunk of `msctr predict`) leaves holes in glibc's per-thread heaps, and
    the process's resident memory creeps up with every chunk although nothing is kept.
    Trimming once per chunk (with `limit_heaps`) keeps it at the first chunk's. Does nothing
    where malloc is not glibc's."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """The device `name` names, or one line naming `option` (the recipe key or the command
    line option it came from) when this machine has no such device."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{option} is '{name}' but no CUDA device is available; use cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        # checked with CUDA's, before the run folder is touched; torch itself would only
        # fail when the model moves there, after the folder's recipe.yaml was written
        raise UserError(f"{option} is 'mps' but no MPS (Apple GPU) device is available; use cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast runs matmuls in bfloat16 and keeps weights, losses and reductions in fp32
    (on CPUs with AMX or AVX-512 BF16 and on recent GPUs the matmuls are several times faster)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

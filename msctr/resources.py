"""Memory a size asks for, checked before it is allocated.

An absurd size (embed_dim 1e11, --batch-sizes 1e11, --rows 1e11, threads: 100000) would
otherwise end in an allocator's traceback, a MemoryError in an unrelated import, or the
kernel's OOM killer. Each check compares a lower bound of what the size needs with the
memory the device has free, so it refuses only what cannot fit and never a run that would
have worked.
"""

from __future__ import annotations

import os
import resource
from typing import TYPE_CHECKING

from msctr.errors import UserError

if TYPE_CHECKING:  # torch is imported only for a device: `prepare` never loads it
    import torch

GIB = 1 << 30


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory a new allocation can get on `device`: a CUDA device's free memory; on the host,
    Linux's MemAvailable (free plus reclaimable caches), else the physical memory. None where
    it cannot be told (then nothing is refused)."""
    kind = str(device).split(":")[0]
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    if kind != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def size_text(nbytes: float) -> str:
    return f"{nbytes / GIB:,.1f} GiB" if nbytes >= GIB / 10 else f"{nbytes / (1 << 20):,.1f} MiB"


def need_memory(nbytes: float, what: str, fix: str, device: torch.device | str = "cpu") -> None:
    """Refuse `what` (e.g. "train.threads 100000") when it needs more than `device` has free."""
    free = available_bytes(device)
    if free is not None and nbytes > free:
        raise UserError(
            f"{what} needs at least {size_text(nbytes)} of memory, but {device} "
            f"has {size_text(free)} available; {fix}"
        )


def thread_bytes() -> int:
    """The stack each new thread reserves (the soft stack limit; 8 MiB where unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    return soft if 0 < soft < 1 << 40 else 8 << 20


def check_threads(threads: int | None, what: str) -> None:
    """torch starts `threads` intra-op threads, each with its own stack."""
    if threads is not None:
        need_memory(
            threads * thread_bytes(),
            f"{what} {threads}",
            f"use at most the number of CPU cores ({os.cpu_count()})",
        )

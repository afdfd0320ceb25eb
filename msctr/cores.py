"""How many intra-op threads torch uses while the machine is shared (docs/recipes.md, "Threads").

torch's CPU kernels run in OpenMP parallel regions that end at a barrier: every thread waits
there for the slowest one, spinning for a while before it sleeps. A process alone on its
cores loses nothing by it. Two processes that each run one thread per core do: a thread
spins through its time slice waiting for a partner the scheduler has parked, and each run
gets 5-15x less done than alone (issue 26; a fixed spin budget or a passive wait policy only
trades this against speed alone, measured in docs/bench.md). So, unless the count is pinned,
a run uses the cores of its CPU set that other processes of its priority leave free, re-read
about once a second at a step boundary: all of them alone, fewer while others keep some busy.

The thread count changes how CPU kernels split their sums, so an adaptive run is close to,
but not bit-identical with, a pinned one; `train.threads: N` (or OMP_NUM_THREADS) pins it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

STAT = Path("/proc/stat")
# /proc/stat fields after the cpu name: user nice system idle iowait irq softirq steal ...
# (guest time is already inside user/nice). Time of niced processes is left out when this
# one is not niced: the scheduler gives them what we leave, so they do not take our cores
_BUSY = (0, 2, 5, 6, 7)
_BUSY_WITH_NICE = (0, 1, 2, 5, 6, 7)


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity set; empty where unknown: not Linux)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set()


def busy_seconds(cpus: set[int], niced: bool = False) -> float | None:
    """CPU seconds spent busy on `cpus` since boot, by processes of normal priority (and
    niced ones when `niced`); None where /proc/stat cannot be read (not Linux), which turns
    adaptation off."""
    try:
        lines = STAT.read_text().splitlines()
    except OSError:
        return None
    fields = _BUSY_WITH_NICE if niced else _BUSY
    ticks = 0
    for line in lines[1:]:
        if not line.startswith("cpu"):
            break
        name, *values = line.split()
        if int(name[3:]) in cpus:
            ticks += sum(int(values[i]) for i in fields if i < len(values))
    return ticks / os.sysconf("SC_CLK_TCK")


class AdaptiveThreads:
    """Sets torch's intra-op thread count to the cores other processes leave free.

    `tick()` is called between training steps and scoring batches; about once every `every`
    seconds it compares the busy time of this process's CPUs with this process's own CPU
    time: the difference is the other processes' load, in cores. A new count is taken only
    when two readings in a row ask for it, so a moment's spike does not flip it; the first,
    over `probe` seconds idle when it starts, is taken at once. `pinned` (a count the user
    set) turns it off; so does a single core. `take_used()` gives the mean count since its
    last call, for the log."""

    def __init__(
        self,
        pinned: int | None = None,
        every: float = 1.0,
        *,
        cores: int | None = None,
        set_threads: Callable[[int], None] | None = None,
        get_threads: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        own_seconds: Callable[[], float] = time.process_time,
        busy: Callable[[], float | None] | None = None,
        probe: float = 0.2,
    ) -> None:
        import torch

        self.set_threads = set_threads or torch.set_num_threads
        get_threads = get_threads or torch.get_num_threads
        cpus = usable_cpus()
        self.cores = cores or len(cpus) or os.cpu_count() or 1
        niced = os.getpriority(os.PRIO_PROCESS, 0) > 0  # then our own time is counted as nice
        self.busy = busy or (lambda: busy_seconds(cpus, niced))
        self.clock, self.own_seconds, self.every = clock, own_seconds, every
        if pinned is None and os.environ.get("OMP_NUM_THREADS"):
            pinned = get_threads()  # torch took the user's OMP_NUM_THREADS at import
        if pinned is not None:
            self.set_threads(pinned)
            self.threads = pinned
        else:
            self.threads = min(get_threads(), self.cores)
        self.adaptive = pinned is None and self.cores > 1 and self.busy() is not None
        self._wanted = self.threads
        self._sum, self._ticks = 0, 0
        self._mark()
        if self.adaptive and probe > 0:
            # a first reading, idle for `probe` seconds, taken at once: a short job (a few
            # seconds of scoring) would end before two readings a second apart
            time.sleep(probe)
            self._read(at_once=True)

    def _mark(self) -> None:
        self._at, self._own = self.clock(), self.own_seconds()
        self._busy = self.busy() if self.adaptive else None

    def tick(self) -> None:
        if self.adaptive and self.clock() - self._at >= self.every:
            self._read()
        self._sum += self.threads  # the count the coming step or batch runs with
        self._ticks += 1

    def _read(self, at_once: bool = False) -> None:
        at, own, busy = self._at, self._own, self._busy
        self._mark()
        if busy is None or self._busy is None or self._at <= at:
            return
        others = max(0.0, (self._busy - busy) - (self._own - own)) / (self._at - at)
        # the cores others keep busy, counted from half a core up
        target = max(1, min(self.cores, self.cores - int(others + 0.5)))
        if target != self.threads and (at_once or target == self._wanted):
            self.threads = target
            self.set_threads(target)
        self._wanted = target

    def take_used(self) -> float | None:
        """The mean thread count over the ticks since the last call (None: no ticks)."""
        mean = self._sum / self._ticks if self._ticks else None
        self._sum, self._ticks = 0, 0
        return mean

"""Shared by the prepare benchmarks: run a command and measure wall time and peak memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time


def timed(cmd: list[str], threads: int) -> dict:
    """Run `cmd` under /usr/bin/time -v; wall seconds, peak RSS (GiB), output."""
    env = {**os.environ, "POLARS_MAX_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"seconds": wall, "peak_gib": rss / 2**20, "stdout": done.stdout}

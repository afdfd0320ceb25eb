"""Benchmark `msctr prepare aliccp --raw-dir` on generated raw Ali-CCP files, at several sizes.

For each size: planted-signal samples are written in Ali-CCP's raw format (sample skeleton +
common features, ``\\x01 \\x02 \\x03`` feature lists, half the days raw train, half raw test),
then ``msctr prepare aliccp --raw-dir`` runs in its own process under ``/usr/bin/time -v``
with Polars limited to 2 threads. It prints rows/s and peak RSS per size: with the raw files
streamed, peak memory should stay flat as the sample count grows (it grows with the number of
requests held in memory, not with samples).

Usage (about 0.25 GiB of raw CSV per million samples; removed afterwards unless --keep;
above 4 M samples the files are written in chunks of independent worlds, see write_aliccp):

    python benchmarks/prepare_aliccp.py --sizes 2500000 10000000 --root /tmp/aliccp-bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from timing import timed  # benchmarks/timing.py (scripts run from benchmarks/ or repo root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/aliccp-bench"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[2_500_000, 10_000_000])
    ap.add_argument("--history", type=int, default=30, help="clicks summarized per request")
    ap.add_argument("--seq-len", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    results = []
    for size in args.sizes:
        raw = args.root / f"raw-{size}"
        out = args.root / f"prepared-{size}"
        if not (raw / "sample_skeleton_test.csv").is_file():
            from msctr.testing.rawgen import write_aliccp

            t0 = time.perf_counter()
            write_aliccp(raw, rows=size, seed=0, history=args.history, truth=False)
            print(f"generated {size:,} samples in {time.perf_counter() - t0:.0f} s", flush=True)
        raw_gib = sum(p.stat().st_size for p in raw.glob("*.csv")) / 2**30
        shutil.rmtree(out, ignore_errors=True)
        cmd = [
            sys.executable, "-m", "msctr.cli", "prepare", "aliccp", "--raw-dir", str(raw),
            "--out", str(out), "--seq-len", str(args.seq_len),
        ]  # fmt: skip
        run = timed(cmd, args.threads)
        schema = json.loads((out / "schema.json").read_text())
        rows = sum(schema["rows"].values())
        result = {
            "samples": size,
            "raw_gib": round(raw_gib, 2),
            "prepared_rows": rows,
            "split_rows": schema["rows"],
            "requests": schema["info"]["requests"],
            "seconds": round(run["seconds"], 1),
            "samples_per_s": round(size / run["seconds"]),
            "peak_gib": round(run["peak_gib"], 2),
        }
        print(json.dumps(result), flush=True)
        results.append(result)
        if not args.keep:
            shutil.rmtree(raw, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, "
                f"POLARS_MAX_THREADS={args.threads}",
                "results": results,
            },
            indent=2,
        )
    )
    if not args.keep:
        shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()

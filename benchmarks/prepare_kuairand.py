"""Benchmark `msctr prepare kuairand` on generated KuaiRand-1K-shaped raw files.

Writes planted-signal rows as raw KuaiRand files of the 1K shape (11.7 M standard-log rows over
both periods, 1,000 users, 4.4 M videos), then times, each in its own process under
``/usr/bin/time -v`` (wall time and peak RSS) with Polars limited to 2 threads:

1. the floor: Polars reading the same CSVs (both standard logs, user and basic video
   features) into memory, all columns, nothing else;
2. ``msctr prepare kuairand --raw-dir ... --setup hierrec`` with sequences on (50 clicks).

Usage (about 1.5 GB of CSV under --root; removed afterwards unless --keep):

    python benchmarks/prepare_kuairand.py --root /tmp/kuairand-bench
    python benchmarks/prepare_kuairand.py --rows 2000000 --videos 750000   # a smaller shape
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

from timing import timed  # benchmarks/timing.py, beside this script

FLOOR = """
import sys, polars as pl
from pathlib import Path
d = Path(sys.argv[1])
n = 0
for name in ("log_standard_4_08_to_4_21_1k", "log_standard_4_22_to_5_08_1k",
             "user_features_1k", "video_features_basic_1k"):
    n += pl.read_csv(d / f"{name}.csv").height
print(n)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/kuairand-bench"))
    ap.add_argument("--rows", type=int, default=11_700_000, help="standard-log rows")
    ap.add_argument("--users", type=int, default=1_000)
    ap.add_argument("--videos", type=int, default=4_400_000)
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the generated files and output")
    args = ap.parse_args()

    raw = args.root / "raw"
    data = raw / "KuaiRand-1K" / "data"
    out = args.root / "prepared"
    if not (data / "log_standard_4_22_to_5_08_1k.csv").is_file():
        from msctr.testing.rawgen import write_kuairand

        t0 = time.perf_counter()
        files = write_kuairand(
            raw,
            rows=args.rows,
            scenarios=15,
            seed=0,
            users=args.users,
            videos=args.videos,
            statistics=False,
        )
        print(
            f"generated {args.rows:,} log rows, {files.users:,} users, {files.videos:,} videos "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        del files
    size = sum(p.stat().st_size for p in data.glob("*.csv")) / 2**30
    print(f"raw CSVs: {size:.2f} GiB in {data}")

    floor = timed([sys.executable, "-c", FLOOR, str(data)], args.threads)
    print(f"floor (Polars reads the CSVs): {floor['seconds']:.1f} s, {floor['peak_gib']:.2f} GiB")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "msctr.cli", "prepare", "kuairand", "--raw-dir", str(raw),
        "--out", str(out), "--setup", "hierrec", "--seq-len", str(args.seq_len),
    ]  # fmt: skip
    prep = timed(cmd, args.threads)
    schema = json.loads((out / "schema.json").read_text())
    rows = sum(schema["rows"].values())
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, "
        f"POLARS_MAX_THREADS={args.threads}",
        "log_rows": args.rows,
        "prepared_rows": rows,
        "split_rows": schema["rows"],
        "floor_read_csv_s": round(floor["seconds"], 1),
        "floor_peak_gib": round(floor["peak_gib"], 2),
        "prepare_s": round(prep["seconds"], 1),
        "prepare_peak_gib": round(prep["peak_gib"], 2),
        "log_rows_per_s": round(args.rows / prep["seconds"]),
        "prepare_over_floor": round(prep["seconds"] / floor["seconds"], 2),
        "output_gib": round(sum(p.stat().st_size for p in out.iterdir()) / 2**30, 2),
    }
    print(prep["stdout"][-2500:])
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()

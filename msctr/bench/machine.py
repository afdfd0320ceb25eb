"""The machine a measurement ran on, recorded with every benchmark result (bench-inference's
bench.json and `benchmarks/train_throughput.py`)."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return cpu


def machine(device: torch.device | None = None) -> dict:
    """CPU, cores, torch threads and version, the device (when given), the date and the load
    average now; the GPU's name on CUDA."""
    info: dict = {
        "cpu": cpu_name(),
        "logical_cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device is not None:
        info["device"] = str(device)
    info["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if hasattr(os, "getloadavg"):
        info["loadavg"] = list(os.getloadavg())
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info

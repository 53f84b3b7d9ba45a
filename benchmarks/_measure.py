"""Shared helpers for benchmark scripts: wall time and peak resident memory of a step."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from contextlib import contextmanager

import psutil


class Step:
    seconds: float = 0.0
    peak_mb: float = 0.0
    delta_mb: float = 0.0


@contextmanager
def measure(interval: float = 0.005):
    """Time a block and sample the process RSS for its peak (MB) above the start."""
    proc = psutil.Process(os.getpid())
    step = Step()
    start_rss = proc.memory_info().rss
    peak = [start_rss]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        yield step
    finally:
        step.seconds = time.perf_counter() - t0
        stop.set()
        t.join()
        peak[0] = max(peak[0], proc.memory_info().rss)
        step.peak_mb = peak[0] / 2**20
        step.delta_mb = (peak[0] - start_rss) / 2**20


def machine() -> str:
    return (
        f"{platform.node()} {platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {sys.version.split()[0]}"
    )


def command_line() -> str:
    return "python " + " ".join(sys.argv)

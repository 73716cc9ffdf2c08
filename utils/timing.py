"""Wall-clock timing: per-stage durations (StageTimer), repeated calls after warm-up (time_calls), and what ran them."""

from __future__ import annotations

import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p95 and mean in milliseconds, count and total in seconds, of a list of durations."""
    values = np.asarray(seconds, dtype=np.float64)
    if values.size == 0:
        return {"count": 0, "median_ms": float("nan"), "p95_ms": float("nan"), "mean_ms": float("nan"), "total_s": 0.0}
    return {
        "count": int(values.size),
        "median_ms": float(np.median(values) * 1e3),
        "p95_ms": float(np.percentile(values, 95) * 1e3),
        "mean_ms": float(values.mean() * 1e3),
        "total_s": float(values.sum()),
    }


class StageTimer:
    """Collects durations per stage; safe to record from a reader thread and the main thread at once."""

    def __init__(self, cuda_sync: bool = False) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.cuda_sync = cuda_sync  # GPU work is asynchronous: synchronise or the time lands in the wrong stage

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.cuda_sync:
            torch.cuda.synchronize()
        self.samples[name].append(time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.samples[name].append(seconds)

    def summary(self) -> dict[str, dict[str, float]]:
        return {name: summarize(values) for name, values in self.samples.items()}


def format_summary(summary: dict[str, dict[str, float]]) -> str:
    """A small fixed-width table of a StageTimer summary, one stage per line."""
    lines = [f"{'stage':<14}{'calls':>7}{'median ms':>11}{'p95 ms':>9}{'total s':>9}"]
    for name, row in summary.items():
        lines.append(f"{name:<14}{row['count']:>7}{row['median_ms']:>11.1f}{row['p95_ms']:>9.1f}{row['total_s']:>9.2f}")
    return "\n".join(lines)


def time_calls(run: Callable[[Any], Any], inputs: list, warmup: int, repeats: int, sync: bool) -> dict[str, float]:
    """Median/p95 ms of run(inputs[i % len]) over `repeats` calls after `warmup` untimed ones; sync: CUDA work is
    asynchronous, so synchronise before starting the clock and before stopping it."""
    for index in range(warmup):
        run(inputs[index % len(inputs)])
    seconds = []
    for index in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run(inputs[index % len(inputs)])
        if sync:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    stats = summarize(seconds)
    return {"median_ms": stats["median_ms"], "p95_ms": stats["p95_ms"]}


def device_name(device: torch.device) -> str:
    """What a row ran on, for the report: the GPU's name, or the CPU's architecture and vector capability."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({platform.machine()}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()})"


def cpu_model() -> str:
    """The processor's marketing name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"

"""Timing and machine description for the benchmark: repetitions, medians, spreads, load, versions."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch


@dataclass
class Timing:
    """Wall-clock seconds of each timed repetition (warm-up excluded)."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def min(self) -> float:
        return min(self.seconds) if self.seconds else float("nan")

    @property
    def max(self) -> float:
        return max(self.seconds) if self.seconds else float("nan")

    def rate(self, items: float) -> dict[str, float | int]:
        """Items per second: median, and the spread as (slowest, fastest) repetition."""
        return {
            "median": items / self.median,
            "min": items / self.max,
            "max": items / self.min,
            "reps": len(self.seconds),
        }

    def per_item_ms(self, items: float) -> dict[str, float | int]:
        """Milliseconds per item: median, fastest, slowest repetition."""
        return {
            "median": 1e3 * self.median / items,
            "min": 1e3 * self.min / items,
            "max": 1e3 * self.max / items,
            "reps": len(self.seconds),
        }


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock time covers it; a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], object],
    reps: int,
    warmup: int = 1,
    budget_s: float | None = None,
    min_reps: int = 2,
    device: torch.device | None = None,
) -> Timing:
    """Call `fn` `warmup` times untimed, then time up to `reps` calls with time.perf_counter.

    With `budget_s`, repetitions stop once the timed calls have used that many seconds, but never before
    `min(min_reps, reps)` repetitions, so one expensive workload cannot dominate the whole run.
    """
    device = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
    synchronize(device)
    timing = Timing()
    spent = 0.0
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        dt = time.perf_counter() - t0
        timing.seconds.append(dt)
        spent += dt
        if budget_s is not None and spent > budget_s and i + 1 >= min(min_reps, reps):
            break
    return timing


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (runnable processes; this machine has few cores, so it matters)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class CpuMeter:
    """CPU seconds this process and its finished children used over a wall-clock interval.

    `busy_cores` = CPU seconds / wall seconds: how many cores the benchmark itself kept busy; compare it
    with the core count and the load average to see how much other processes took from it.
    """

    def __init__(self) -> None:
        self.wall0 = time.perf_counter()
        self.cpu0 = self._cpu()

    @staticmethod
    def _cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall0
        cpu = self._cpu() - self.cpu0
        return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "busy_cores": round(cpu / max(wall, 1e-9), 2)}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() as a fallback)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info(device: torch.device) -> dict[str, object]:
    """Everything needed to tell two benchmark runs' machines apart."""
    info: dict[str, object] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cv2_threads": cv2.getNumThreads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cv2": cv2.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "device": str(device),
        "gpu": None,
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        info["torchvision"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info

"""Shared pieces of the benchmarks: result records, statistics and a description of the machine."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version


@dataclass
class Record:
    """One figure: a median over runs (or a ratio of medians), with its target when it has one."""

    name: str
    value: float
    unit: str
    runs: list[float] = field(default_factory=list)
    target: str | None = None
    met: bool | None = None
    note: str = ""

    @property
    def spread(self) -> str:
        if len(self.runs) < 2:
            return ""
        return f"{min(self.runs):.4g}–{max(self.runs):.4g}"

    def as_json(self) -> dict:
        data = asdict(self)
        data["spread"] = self.spread
        return data


def measure(runs: int, action: Callable[[], float]) -> list[float]:
    """Call action `runs` times and return what it returns each time."""
    return [action() for _ in range(runs)]


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio_record(name: str, numerators: list[float], denominators: list[float], target: float | None,
                 higher_is_better: bool = True, note: str = "") -> Record:
    """A ratio of two medians measured in the same run, with the per-run ratios as its spread."""
    value = median(numerators) / median(denominators)
    per_run = [n / d for n, d in zip(numerators, denominators)]
    met = None
    target_text = None
    if target is not None:
        met = value >= target if higher_is_better else value <= target
        target_text = f"{'≥' if higher_is_better else '≤'} {target:g}"
    return Record(name, value, "×", per_run, target_text, met, note)


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def machine() -> dict:
    """Describe the machine: CPU, cores, memory, Python and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            kilobytes = int(handle.readline().split()[1])
            memory = f"{kilobytes / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    packages = {}
    for name in ("chatty", "llama-cpp-python", "torch", "transformers", "peft", "textual", "gguf"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "cpu": cpu,
        "cores": cores,
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": packages,
    }

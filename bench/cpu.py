"""CPU time of processes, from ``/proc`` (Linux): what benchmarks compare beside wall
time, which moves more with the machine's other load."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds of named processes (the hub, the broker, this one: the devices)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def read(self) -> dict[str, float]:
        """CPU seconds so far, by name."""
        return {name: process_cpu_s(pid) for name, pid in self.pids.items()}

    @staticmethod
    def per_event(before: dict[str, float], after: dict[str, float],
                  events: int) -> dict[str, float]:
        """Milliseconds of CPU per event between two readings, by name."""
        return {name: round((after[name] - before[name]) * 1e3 / max(1, events), 2)
                for name in before}

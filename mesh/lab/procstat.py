"""What a benchmark reads from /proc: a process's peak memory, the CPU time of a process and
everything it started, and how busy the whole machine was."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its live descendants. Descendants, not the
    process group: dockerd starts its containerd in a group of its own, and on the containerd
    image store that containerd does most of a pull's work."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        child = int(stat.parent.name)
        parent[child] = int(fields[1])  # field 4, the parent's pid
        ticks[child] = int(fields[11]) + int(fields[12])  # fields 14 and 15, utime and stime
    family = {pid}
    grew = True
    while grew:
        grew = False
        for child, up in parent.items():
            if up in family and child not in family:
                family.add(child)
                grew = True
    return sum(ticks.get(p, 0) for p in family) / TICK


@dataclass(frozen=True)
class MachineCpu:
    """CPU-seconds summed over all cores since boot (/proc/stat)."""

    busy: float  # user, nice, system, irq, softirq
    iowait: float
    idle: float

    def __sub__(self, other: MachineCpu) -> MachineCpu:
        return MachineCpu(self.busy - other.busy, self.iowait - other.iowait, self.idle - other.idle)


def machine_cpu() -> MachineCpu:
    with open("/proc/stat") as fh:
        user, nice, system, idle, iowait, irq, softirq = (int(v) for v in fh.readline().split()[1:8])
    return MachineCpu((user + nice + system + irq + softirq) / TICK, iowait / TICK, idle / TICK)

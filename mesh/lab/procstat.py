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


def processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (its parent's pid, its user + system CPU time in ticks)."""
    found: dict[int, tuple[int, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # Fields 4 (the parent), 14 and 15 (utime, stime) of proc(5), counted after the name.
        found[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return found


def family(pid: int, live: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """`pid` and every live process it started, however deep and in whatever process group."""
    children: dict[int, list[int]] = {}
    for child, (parent, _) in (processes() if live is None else live).items():
        children.setdefault(parent, []).append(child)
    members, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in members:
                members.add(child)
                todo.append(child)
    return members


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU time so far of each named process and its family, from one look at
    /proc. The family, not the process group: dockerd starts its containerd in a group of its
    own, and on the containerd image store that containerd does most of a pull's work."""
    live = processes()

    def of(pid: int) -> float:
        return sum(live[p][1] for p in family(pid, live) if p in live) / TICK

    return {name: of(pid) for name, pid in pids.items()}


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

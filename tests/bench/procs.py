"""Linux process facts for the benchmark: worker discovery, listening ports and CPU use from /proc."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (utime + stime of /proc/<pid>/stat).

    ProcessLookupError if the process is gone (a server worker that died during a phase).
    """
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        raise ProcessLookupError(f"process {pid} exited during the measurement.") from None
    # Fields after the command name start at field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def worker_pids(parent: int) -> list[int]:
    """Pids of the multiprocessing workers spawned by `parent` (its resource tracker excluded)."""
    pids = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on (its socket inodes matched against /proc/net/tcp and tcp6)."""
    inodes = set()
    for fd in (PROC / str(pid) / "fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in (PROC / str(pid) / "net" / table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _machine_seconds() -> tuple[float, float, int]:
    """CPU seconds all cores spent busy since boot, the seconds the hypervisor took (steal), and the cores."""
    lines = (PROC / "stat").read_text().splitlines()
    values = [int(v) for v in lines[0].split()[1:]]
    idle, steal = values[3] + values[4], values[7]  # idle + iowait; steal
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3].isdigit())
    return (sum(values[:7]) - idle) / CLOCK_TICKS, steal / CLOCK_TICKS, cores


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class CpuUse:
    """CPU use over one measured phase, in percent of one core."""

    seconds: float
    servers: dict[str, float]
    """Per server process, labelled."""
    load_generator: float
    """The load generator processes this script waited for during the phase."""
    machine: float
    """Every process on the machine; with `steal`, at most 100 x cores."""
    cores: int
    steal: float = 0.0
    """Time the hypervisor gave the machine's virtual cores to others (the host was contended)."""

    @property
    def others(self) -> float:
        """Processes neither the servers nor the load generator (other work on the machine)."""
        return max(0.0, self.machine - sum(self.servers.values()) - self.load_generator)


class CpuMeter:
    """Measures CPU use of labelled server processes, the load generator and the machine over a phase.

    Example:
        meter = CpuMeter({"decision-1": pid}); ...run load...; use = meter.stop()
    """

    def __init__(self, servers: dict[str, int]) -> None:
        self._servers = servers
        self._start = {label: cpu_seconds(pid) for label, pid in servers.items()}
        self._children = _children_seconds()
        self._machine, self._steal, self._cores = _machine_seconds()
        self._wall = time.monotonic()

    def stop(self) -> CpuUse:
        """The CPU use since the meter was made."""
        wall = time.monotonic() - self._wall
        servers = {
            label: 100.0 * (cpu_seconds(pid) - self._start[label]) / wall for label, pid in self._servers.items()
        }
        machine, steal, cores = _machine_seconds()
        return CpuUse(
            seconds=wall,
            servers=servers,
            load_generator=100.0 * (_children_seconds() - self._children) / wall,
            machine=100.0 * (machine - self._machine) / wall,
            cores=cores,
            steal=100.0 * (steal - self._steal) / wall,
        )

"""Load generators: h2load (gRPC over h2c, or HTTP/1.1 at a fixed rate) and wrk, with their figures parsed.

h2load sends one body per process, so a load with several request bodies runs one h2load per body in
parallel, each with its share of the connections, requests and rate. h2load prints no percentiles:
they come from its `--log-file` (one row per request: start µs since the epoch, status, elapsed µs).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
JSON_HEADERS = ("content-type: application/json",)
_H2LOAD_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded")
_H2LOAD_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m),")
_WRK_PERCENTILE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


class LoadError(RuntimeError):
    """A load generator failed or printed something this module cannot read."""


@dataclass(frozen=True)
class Load:
    """How hard to drive a server: connections, requests, streams per connection and an optional fixed rate."""

    clients: int
    requests: int
    streams: int = 1
    rps: float | None = None
    """Total requests per second over all connections; None drives at saturation."""
    h1: bool = False
    """HTTP/1.1 (one request in flight per connection) instead of h2c."""


@dataclass(frozen=True)
class H2loadSummary:
    """The counts h2load prints at the end of a run."""

    total: int
    done: int
    ok: int
    """Responses with a 2xx status."""


@dataclass(frozen=True)
class LoadResult:
    """What the load generator saw."""

    done: int
    """Requests that got a complete response."""
    ok: int
    """Responses with a 2xx status (for gRPC this includes errors: their status is in the trailers)."""
    errors: int
    """Requests that did not end with a 2xx response (failed, timed out, reset or a non-2xx status)."""
    rps: float
    p50_ms: float
    p95_ms: float | None
    p99_ms: float
    seconds: float


def parse_h2load_summary(text: str) -> H2loadSummary:
    """Read the request and status counts of h2load's output."""
    requests, statuses = _H2LOAD_REQUESTS.search(text), _H2LOAD_STATUS.search(text)
    if requests is None or statuses is None:
        raise LoadError(f"cannot read h2load's summary:\n{text[-2000:]}")
    return H2loadSummary(total=int(requests.group(1)), done=int(requests.group(3)), ok=int(statuses.group(1)))


def merge_h2load(summaries: Sequence[H2loadSummary], logs: Sequence[np.ndarray]) -> LoadResult:
    """Merge parallel h2load runs: RPS over the window in which all of them ran, percentiles over every request.

    Each log is an (n, 3) array of h2load `--log-file` rows: start µs, status, elapsed µs.
    """
    for summary, rows in zip(summaries, logs, strict=True):
        if rows.shape[0] != summary.done:
            raise LoadError(f"h2load logged {rows.shape[0]} requests but reported {summary.done} done.")
    ends = [rows[:, 0] + rows[:, 2] for rows in logs]
    window_start = max(int(rows[:, 0].min()) for rows in logs)
    window_end = min(int(end.max()) for end in ends)
    in_window = sum(int(np.count_nonzero((end >= window_start) & (end <= window_end))) for end in ends)
    seconds = (window_end - window_start) / 1e6
    p50, p95, p99 = latency_percentiles(np.concatenate([rows[:, 2] for rows in logs]))
    return LoadResult(
        done=sum(s.done for s in summaries),
        ok=sum(s.ok for s in summaries),
        errors=sum(s.total - s.ok for s in summaries),
        rps=in_window / seconds if seconds > 0 else 0.0,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        seconds=seconds,
    )


def latency_percentiles(elapsed_us: np.ndarray) -> tuple[float, float, float]:
    """p50, p95 and p99 in ms of request latencies in µs."""
    p50, p95, p99 = np.percentile(elapsed_us / 1000.0, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def read_h2load_log(path: Path) -> np.ndarray:
    """An h2load `--log-file` as an (n, 3) array: start µs, status, elapsed µs."""
    return np.loadtxt(path, dtype=np.int64, ndmin=2)


def parse_wrk(text: str) -> LoadResult:
    """Read wrk's `--latency` output; wrk prints p50, p75, p90 and p99, so p95 is None."""
    total = _WRK_TOTAL.search(text)
    percentiles = {int(p): float(v) * _TO_MS[unit] for p, v, unit in _WRK_PERCENTILE.findall(text)}
    if total is None or 50 not in percentiles or 99 not in percentiles:
        raise LoadError(f"wrk printed no request count or latency distribution:\n{text[-2000:]}")
    done = int(total.group(1))
    seconds = float(total.group(2)) * _TO_MS[total.group(3)] / 1000.0
    non_2xx = _WRK_NON_2XX.search(text)
    rejected = int(non_2xx.group(1)) if non_2xx else 0
    socket_errors = _WRK_SOCKET_ERRORS.search(text)
    failed = sum(map(int, socket_errors.groups())) if socket_errors else 0
    return LoadResult(
        done=done,
        ok=done - rejected,
        errors=rejected + failed,
        rps=done / seconds,
        p50_ms=percentiles[50],
        p95_ms=None,
        p99_ms=percentiles[99],
        seconds=seconds,
    )


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def h2load_command(
    url: str, body: Path, load: Load, clients: int, requests: int, log_file: Path, headers: Sequence[str]
) -> list[str]:
    """One h2load's command line: `clients` of the load's connections sending `requests` requests of `body`.

    At a fixed rate h2load paces each connection on its own timer, which starts when the connection opens.
    Connections opened together send together: four per process at 62.5 RPS each made a burst of four requests
    every 16 ms. So they open one by one, a connection's interval divided by their number apart (4 ms), and
    the process sends one request every 4 ms: a fixed rate, not bursts at a fixed rate.
    """
    args = ["h2load", "-n", str(requests), "-c", str(clients), "-t", "1", "-m", str(load.streams)]
    args += ["-d", str(body), "--log-file", str(log_file)]
    if load.rps is not None:
        connection_interval_ms = load.clients / load.rps * 1000
        args += ["--rps", f"{load.rps / load.clients:g}"]
        args += ["-r", "1", "--rate-period", f"{max(1, round(connection_interval_ms / clients))}ms"]
    if load.h1:
        args.append("--h1")
    for header in headers:
        args += ["-H", header]
    return [*args, url]


def start_h2load(url: str, bodies: Sequence[Path], load: Load, log_dir: Path, headers: Sequence[str]) -> list[tuple]:
    """Start one h2load per body; return (process, log file, output file) per h2load."""
    if load.clients % len(bodies):
        raise LoadError(f"{load.clients} connections do not split evenly over {len(bodies)} request bodies.")
    clients = load.clients // len(bodies)
    runs = []
    for index, body in enumerate(bodies):
        log_file = log_dir / f"h2load-{index}.log"
        output = log_dir / f"h2load-{index}.out"
        log_file.unlink(missing_ok=True)  # h2load appends to an existing log file
        requests = _share(load.requests, len(bodies), index)
        with output.open("wb") as out:
            process = subprocess.Popen(
                h2load_command(url, body, load, clients, requests, log_file, headers),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        runs.append((process, log_file, output))
    return runs


def finish_h2load(runs: list[tuple], timeout: float) -> LoadResult:
    """Wait for the h2load processes of `start_h2load` (killing them on any failure) and merge their figures."""
    try:
        for process, _, output in runs:
            if process.wait(timeout=timeout) != 0:
                raise LoadError(f"h2load exited with {process.returncode}:\n{output.read_text()[-2000:]}")
    finally:
        for process, _, _ in runs:
            if process.poll() is None:
                process.kill()
                process.wait()
    summaries = [parse_h2load_summary(output.read_text()) for _, _, output in runs]
    logs = [read_h2load_log(log_file) for _, log_file, _ in runs]
    return merge_h2load(summaries, logs)


def run_h2load(
    url: str, bodies: Sequence[Path], load: Load, log_dir: Path, headers: Sequence[str] = GRPC_HEADERS
) -> LoadResult:
    """Drive `url` with one h2load per body in parallel and return the merged figures."""
    return finish_h2load(start_h2load(url, bodies, load, log_dir, headers), timeout=600)


def run_wrk(url: str, script: Path, bodies_file: Path, connections: int, seconds: int, log_dir: Path) -> LoadResult:
    """Drive `url` with wrk (one thread, `--latency`, the Lua `script` given `bodies_file`) for `seconds`."""
    args = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", str(script)]
    completed = subprocess.run(
        [*args, url, "--", str(bodies_file)], capture_output=True, text=True, timeout=seconds + 60
    )
    text = completed.stdout + completed.stderr
    (log_dir / "wrk.out").write_text(text)
    if completed.returncode != 0:
        raise LoadError(f"wrk exited with {completed.returncode}:\n{text[-2000:]}")
    return parse_wrk(text)

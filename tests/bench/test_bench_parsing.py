"""The benchmark's readings of h2load, wrk and /proc, and how it adds up rounds: a misread figure would pass
silently, so they are tested."""

from __future__ import annotations

import os
import socket
import subprocess

import numpy as np
import pytest

from tests.bench import procs
from tests.bench.loadgen import (
    H2loadSummary,
    Load,
    LoadError,
    LoadResult,
    h2load_command,
    merge_h2load,
    parse_h2load_summary,
    parse_wrk,
)
from tests.bench.procs import CpuUse, cpu_seconds, listening_ports
from tests.bench.run_bench import Phase, Report, combined, targets

H2LOAD_OUTPUT = """\
finished in 10.01s, 3761.87 req/s, 3.14MB/s
requests: 20000 total, 20000 started, 20000 done, 19990 succeeded, 10 failed, 10 errored, 0 timeout
status codes: 19990 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 16.69MB (17505480) total, 59.77KB (61200) headers (space savings 96.22%), 15.58MB (16340000) data
"""

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:8080/v1/rank
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.12ms    2.31ms  40.00ms   80.00%
    Req/Sec     1.59k   100.00     1.80k    70.00%
  Latency Distribution
     50%    9.87ms
     75%   11.02ms
     90%   12.50ms
     99%    1.20s
  15873 requests in 10.00s, 20.12MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:   1587.30
Transfer/sec:      2.01MB
"""


def test_h2load_summary_counts_only_2xx_as_ok() -> None:
    assert parse_h2load_summary(H2LOAD_OUTPUT) == H2loadSummary(total=20000, done=20000, ok=19990)


def test_wrk_output_is_read_with_units_and_errors() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert (result.done, result.ok, result.errors) == (15873, 15870, 6)
    assert (result.p50_ms, result.p95_ms, result.p99_ms) == (9.87, None, 1200.0)
    assert result.seconds == 10.0
    assert result.rps == pytest.approx(1587.3)


@pytest.mark.parametrize(
    ("parse", "text", "match"),
    [
        (parse_h2load_summary, "connect: Connection refused\n", "cannot read h2load's summary"),
        (parse_h2load_summary, H2LOAD_OUTPUT.split("status codes")[0], "cannot read h2load's summary"),
        (parse_wrk, "unable to connect to 127.0.0.1:1 Connection refused\n", "no request count"),
        (parse_wrk, WRK_OUTPUT.replace("     99%    1.20s\n", ""), "latency distribution"),
    ],
)
def test_unreadable_output_is_an_error(parse, text: str, match: str) -> None:
    with pytest.raises(LoadError, match=match):
        parse(text)


def test_parallel_h2load_runs_merge_over_their_common_window() -> None:
    # Run A: requests start at 0, 1, ..., 9 s and take 1 ms; run B starts 2 s later and ends 1 s later.
    a = np.array([[s * 1_000_000, 200, 1000] for s in range(10)], dtype=np.int64)
    b = np.array([[(s + 2) * 1_000_000, 200, 3000] for s in range(9)], dtype=np.int64)
    result = merge_h2load([H2loadSummary(10, 10, 10), H2loadSummary(9, 9, 8)], [a, b])
    # Common window: from B's first start (2 s) to A's last end (9.001 s); 8 ends of A and 7 of B fall in it.
    assert result.seconds == pytest.approx(7.001)
    assert result.rps == pytest.approx(15 / 7.001)
    assert (result.done, result.ok, result.errors) == (19, 18, 1)
    assert (result.p50_ms, result.p99_ms) == (1.0, 3.0)


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_fixed_rate_connections_open_one_by_one_so_each_process_sends_evenly(tmp_path) -> None:
    """16 connections at 1,000 RPS over four h2load processes: 62.5 RPS each, opened 4 ms apart."""
    fixed = h2load_command("http://x/", tmp_path / "b", Load(16, 2500, 8, 1000.0), 4, 625, tmp_path / "l", ())
    assert (_option(fixed, "-c"), _option(fixed, "--rps")) == ("4", "62.5")
    assert (_option(fixed, "-r"), _option(fixed, "--rate-period")) == ("1", "4ms")
    saturated = h2load_command("http://x/", tmp_path / "b", Load(64, 8000, 2), 16, 2000, tmp_path / "l", ())
    assert _option(saturated, "--rps") is None and _option(saturated, "-r") is None


def test_a_log_that_disagrees_with_the_summary_is_an_error() -> None:
    rows = np.array([[0, 200, 1000]], dtype=np.int64)
    with pytest.raises(LoadError, match="logged 1 requests but reported 2 done"):
        merge_h2load([H2loadSummary(2, 2, 2)], [rows])


def test_proc_readings_of_this_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port in listening_ports(os.getpid())
    assert cpu_seconds(os.getpid()) > 0


def test_cpu_of_a_process_that_is_gone_is_an_error() -> None:
    process = subprocess.Popen(["true"])
    process.wait()
    with pytest.raises(ProcessLookupError, match=f"process {process.pid} exited"):
        cpu_seconds(process.pid)


def test_rounds_combine_into_one_phase(tmp_path) -> None:
    def round_(done: int, seconds: float, cpu: float, latencies_ms: list[float]) -> Phase:
        log_dir = tmp_path / f"round-{len(list(tmp_path.iterdir()))}"
        log_dir.mkdir()
        for index, half in enumerate((latencies_ms[::2], latencies_ms[1::2])):
            rows = "".join(f"{1_000_000 + n} 200 {int(ms * 1000)}\n" for n, ms in enumerate(half))
            (log_dir / f"h2load-{index}.log").write_text(rows)
        result = LoadResult(done, done, 0, done / seconds, 1.0, 2.0, 99.0, seconds)
        use = CpuUse(seconds, {"decision-0": cpu}, 20.0, 180.0, 2, steal=cpu / 10)
        return Phase("real", "1000rps-1", result, use, done, log_dir)

    fast = [1.0] * 95
    phase = combined(
        "real",
        "1000rps",
        [
            round_(3000, 1.0, 90.0, [*fast, *[40.0] * 5]),
            round_(3000, 2.0, 60.0, [*fast, 1.0, 1.0, 1.0, 2.0, 3.0]),
            round_(600, 0.2, 100.0, [*fast, 1.0, 1.0, 1.0, 2.0, 3.0]),
        ],
    )
    assert (phase.result.done, phase.result.seconds) == (6600, pytest.approx(3.2))
    assert phase.result.rps == pytest.approx(6600 / 3.2)
    # Over all 300 requests: the median of the rounds' p99s would hide the slow round (about 2 ms).
    assert (phase.result.p50_ms, phase.result.p99_ms) == (1.0, 40.0)
    assert phase.cpu.servers["decision-0"] == pytest.approx((90.0 + 120.0 + 20.0) / 3.2)
    assert phase.cpu_us_per_request() == pytest.approx(sum((0.9, 1.2, 0.2)) / 6600 * 1e6)
    assert phase.cpu.steal == pytest.approx((9.0 + 12.0 + 2.0) / 3.2)


def test_the_machine_meter_counts_steal_apart_from_busy_time(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    stat = tmp_path / "stat"
    monkeypatch.setattr(procs, "PROC", tmp_path)
    stat.write_text("cpu  100 0 50 1000 10 0 5 40 0 0\ncpu0 50 0 25 500 5 0 3 20 0 0\ncpu1 50 0 25 500 5 0 2 20 0 0\n")
    meter = procs.CpuMeter({})
    stat.write_text(
        "cpu  300 0 70 1100 10 0 5 240 0 0\ncpu0 150 0 35 550 5 0 3 120 0 0\ncpu1 150 0 35 550 5 0 2 120 0 0\n"
    )
    use = meter.stop()
    ticks = os.sysconf("SC_CLK_TCK")
    assert use.cores == 2
    assert use.machine * use.seconds / 100 == pytest.approx(220 / ticks)  # user + system, not steal
    assert use.steal * use.seconds / 100 == pytest.approx(200 / ticks)


def _phase(server: str, name: str, rps: float, p99: float) -> Phase:
    result = LoadResult(1000, 1000, 0, rps, 1.0, 2.0, p99, 1000 / rps)
    return Phase(server, name, result, CpuUse(1.0, {f"{server}-0": 50.0}, 10.0, 60.0, 2), 1000)


def test_targets_cover_only_the_phases_that_ran() -> None:
    gateway_only = Report(phases=[_phase("gateway", "saturation", 1200, 30.0), _phase("gateway", "1000rps", 1000, 9)])
    assert [(name, met) for name, _, met in targets(gateway_only)] == [
        ("gateway >= 1,000 RPS (wrk, saturation)", True),
        ("gateway p99 < 15 ms at 1,000 RPS", True),
    ]
    grpc_only = Report(
        phases=[
            _phase("bare", "saturation", 3000, 50.0),
            _phase("real", "saturation", 2500, 60.0),
            _phase("bare", "1000rps", 1000, 4.0),
            _phase("real", "1000rps", 1000, 8.0),
        ]
    )
    assert [(name, met) for name, _, met in targets(grpc_only)] == [
        ("real saturated RPS >= 80% of bare", True),
        ("real p99 at 1,000 RPS <= 1.5x bare", False),
        ("both cores used (real, saturation)", False),
    ]

import asyncio
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aura.eventlog import RECORD_TYPES, SCHEMAS, EventLog, LogUnavailable, _Segment, read_log, recover_open_segments


def _admin(i: int) -> tuple:
    return RECORD_TYPES["admin"](
        event_id=f"e{i}", ts=datetime(2026, 11, 27, 15, 30, tzinfo=UTC), node_id="n1", action="a"
    )


def test_durable_append_is_on_disk_before_it_returns(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "admin", node_id="n1", flush_interval=60)

    async def go() -> None:
        await log.append_durable([_admin(1), _admin(2)])

    asyncio.run(go())
    # Read from a fresh process's point of view: the open segment on disk already holds both rows.
    assert read_log(tmp_path, "admin")["event_id"].to_pylist() == ["e1", "e2"]
    log.close()


def test_a_full_batch_is_written_before_the_flush_interval(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "admin", node_id="n1", flush_interval=3600, batch_size=3)
    for i in range(2):
        log.append(_admin(i))
    time.sleep(0.3)
    assert read_log(tmp_path, "admin").num_rows == 0
    log.append(_admin(2))
    deadline = time.monotonic() + 10
    while read_log(tmp_path, "admin").num_rows < 3:
        assert time.monotonic() < deadline, "the full batch was not written"
        time.sleep(0.02)
    log.close()


def test_close_writes_hive_partitioned_parquet(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "admin", node_id="n1", flush_interval=0.05)
    for i in range(5):
        log.append(_admin(i))
    log.close()
    files = list((tmp_path / "admin").glob("date=2026-11-27/hour=15/*.parquet"))
    assert len(files) == 1
    assert pq.read_table(files[0]).num_rows == 5
    assert list((tmp_path / "admin" / "_open").glob("*.arrow")) == []


def test_a_segment_is_split_by_the_hour_of_its_rows(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "admin", node_id="n1", flush_interval=0.05)
    for i, (hour, minute) in enumerate([(10, 59), (11, 0), (10, 58), (11, 1), (11, 2)]):
        log.append(RECORD_TYPES["admin"](event_id=f"e{i}", ts=datetime(2026, 11, 27, hour, minute, tzinfo=UTC)))
    log.close()
    rows_by_hour = {
        file.parent.name: pq.read_table(file)["event_id"].to_pylist()
        for file in (tmp_path / "admin").glob("date=2026-11-27/hour=*/*.parquet")
    }
    assert rows_by_hour == {"hour=10": ["e0", "e2"], "hour=11": ["e1", "e3", "e4"]}


FULL_DISK_SCRIPT = """
import asyncio, resource, signal, sys
from datetime import UTC, datetime
from aura.eventlog import EventLog, LogUnavailable, read_log

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the size limit fails with EFBIG, like a full disk
root = sys.argv[1]
log = EventLog(root, "admin", node_id="n1", flush_interval=60)
acknowledged = []

async def append(first, count, note=""):
    records = [
        log.record(event_id=f"e{i}", ts=datetime.now(UTC), action="a", note=note) for i in range(first, first + count)
    ]
    try:
        await log.append_durable(records)
    except LogUnavailable:
        return False
    acknowledged.extend(record.event_id for record in records)
    return True

async def main():
    assert await append(0, 5)
    segment = next(log.directory.glob("_open/*.arrow"))
    resource.setrlimit(resource.RLIMIT_FSIZE, (segment.stat().st_size + 500, resource.RLIM_INFINITY))
    assert not await append(5, 20, note="x" * 200)  # fails part-way through its batch
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert await append(25, 10)

asyncio.run(main())
log.close()
logged = read_log(root, "admin")["event_id"].to_pylist()
print(sorted(acknowledged) == sorted(logged), len(acknowledged), len(logged))
"""


def test_records_acknowledged_after_a_failed_write_are_kept(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "15", "15"]
    assert list((tmp_path / "admin" / "_open").glob("*.arrow")) == []


def test_a_corrupt_open_segment_is_recovered_up_to_its_last_valid_batch(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "admin", node_id="n1", flush_interval=60)
    asyncio.run(_append(log, [_admin(1), _admin(2)]))
    segment = next((tmp_path / "admin" / "_open").glob("*.arrow"))
    good = segment.read_bytes()
    asyncio.run(_append(log, [_admin(3)]))
    third = segment.read_bytes()[len(good) :]
    log._thread.join(0)  # the writer keeps running; the copy below is what a crash would leave
    dead = segment.with_name("n1-999999999-1-1.arrow")  # a pid that is not running
    # The third batch with its buffers overwritten: its framing parses, its offsets point nowhere.
    dead.write_bytes(good + third[:-24] + b"\xff" * 24)
    log.close()
    assert recover_open_segments(tmp_path / "admin") == 1
    assert not dead.exists()
    assert sorted(read_log(tmp_path, "admin")["event_id"].to_pylist()) == ["e1", "e1", "e2", "e2", "e3"]


def test_rotation_by_rows_closes_segments(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "admin", node_id="n1", flush_interval=0.01, rotate_rows=2)
    for i in range(6):
        log.append(_admin(i))
        log.flush()
    log.close()
    assert len(list((tmp_path / "admin").glob("date=*/hour=*/*.parquet"))) == 3
    assert sorted(read_log(tmp_path, "admin", include_open=False)["event_id"].to_pylist()) == [
        f"e{i}" for i in range(6)
    ]


def test_segment_of_a_killed_process_is_recovered(tmp_path: Path) -> None:
    script = f"""
import asyncio, os, signal
from datetime import UTC, datetime
from aura.eventlog import EventLog
log = EventLog({str(tmp_path)!r}, "admin", node_id="dead", flush_interval=60)
async def go():
    await log.append_durable([log.record(event_id="acked", ts=datetime.now(UTC), action="x")])
asyncio.run(go())
os.kill(os.getpid(), signal.SIGKILL)
"""
    subprocess.run([sys.executable, "-c", script], check=False)
    assert len(list((tmp_path / "admin" / "_open").glob("*.arrow"))) == 1
    assert recover_open_segments(tmp_path / "admin") == 1
    assert read_log(tmp_path, "admin", include_open=False)["event_id"].to_pylist() == ["acked"]


def test_processes_that_start_together_recover_each_segment_once(tmp_path: Path) -> None:
    killed = """
import asyncio, os, signal, sys
from datetime import UTC, datetime
from aura.eventlog import EventLog
log = EventLog(sys.argv[1], "admin", node_id="dead", flush_interval=60)
asyncio.run(log.append_durable([log.record(event_id="acked", ts=datetime.now(UTC), action="x")]))
os.kill(os.getpid(), signal.SIGKILL)
"""
    subprocess.run([sys.executable, "-c", killed, str(tmp_path)], check=False)
    segment = next((tmp_path / "admin" / "_open").glob("*.arrow"))
    node, pid, _, sequence = segment.stem.split("-")
    for i in range(1, 30):  # more segments of the dead process
        shutil.copy(segment, segment.with_name(f"{node}-{pid}-{i}-{sequence}.arrow"))
    recover = """
import sys, time
from aura.eventlog import recover_open_segments
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(recover_open_segments(sys.argv[1]))
"""
    start = str(time.time() + 2.0)  # all four begin at once, after their imports
    racing = [
        subprocess.Popen(
            [sys.executable, "-c", recover, str(tmp_path / "admin"), start], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outcomes = [(process.wait(timeout=60), process.stdout.read()) for process in racing]
    assert [code for code, _ in outcomes] == [0] * 4
    assert sum(int(printed) for _, printed in outcomes) == 30
    assert read_log(tmp_path, "admin", include_open=False)["event_id"].to_pylist() == ["acked"] * 30


def test_torn_tail_keeps_the_complete_batches(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "admin", node_id="n1", flush_interval=60)
    asyncio.run(_append(log, [_admin(1)]))
    asyncio.run(_append(log, [_admin(2)]))
    segment = next((tmp_path / "admin" / "_open").glob("*.arrow"))
    with segment.open("ab") as handle:
        handle.write(b"\xff\xff\xff\xff\x10\x00garbage")
    assert read_log(tmp_path, "admin")["event_id"].to_pylist() == ["e1", "e2"]
    log.close()


def test_a_segment_is_the_arrow_stream_pyarrows_writer_makes(tmp_path: Path) -> None:
    schema = SCHEMAS["admin"]
    batches = [
        pa.RecordBatch.from_pylist([_admin(i)._asdict() for i in range(first, first + 3)], schema=schema)
        for first in (0, 3)
    ]
    expected = pa.BufferOutputStream()
    with pa.ipc.new_stream(expected, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    segment = _Segment(tmp_path / "s.arrow", tmp_path, schema)
    segment.write(batches[:1])
    segment.write(batches[1:])
    segment.finish()
    assert (tmp_path / "s.arrow").read_bytes() == expected.getvalue().to_pybytes()
    assert segment.rows == 6


async def _append(log: EventLog, records: list[tuple]) -> None:
    await log.append_durable(records)


def test_unknown_stream_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown event stream"):
        EventLog(tmp_path, "nope", node_id="n1")


def test_a_failed_write_fails_its_caller_and_the_log_goes_on(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "admin", node_id="n1", flush_interval=60)
    with pytest.raises(LogUnavailable, match="cannot store records right now"):
        asyncio.run(_append(log, [log.record(event_id="bad", ts="not a time")]))
    asyncio.run(_append(log, [_admin(3)]))
    log.close()
    assert read_log(tmp_path, "admin")["event_id"].to_pylist() == ["e3"]

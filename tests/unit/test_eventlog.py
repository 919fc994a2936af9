import asyncio
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aura.eventlog import RECORD_TYPES, EventLog, read_log, recover_open_segments


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


async def _append(log: EventLog, records: list[tuple]) -> None:
    await log.append_durable(records)


def test_unknown_stream_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown event stream"):
        EventLog(tmp_path, "nope", node_id="n1")


def test_a_failed_write_fails_its_caller_and_the_log_goes_on(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "admin", node_id="n1", flush_interval=60)
    with pytest.raises(OSError, match="write failed"):
        asyncio.run(_append(log, [log.record(event_id="bad", ts="not a time")]))
    asyncio.run(_append(log, [_admin(3)]))
    log.close()
    assert read_log(tmp_path, "admin")["event_id"].to_pylist() == ["e3"]


def test_column_builders_must_name_fields_of_the_stream(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown admin fields: nope"):
        EventLog(tmp_path, "admin", node_id="n1", column_builders={"nope": lambda column, field_type: None})

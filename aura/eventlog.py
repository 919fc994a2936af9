"""Durable, append-only event logs: what the edge decided, the feedback it acknowledged, SDK events.

Each process appends to its own open segment, an Arrow IPC stream under `<root>/<stream>/_open/`.
A writer thread batches appends, writes them and fsyncs (group commit): `append_durable` returns only
after its records are on disk, which is what "acknowledged" means. A segment is closed after
`rotate_seconds` or `rotate_rows` (and at shutdown) into Hive-partitioned Parquet,
`<root>/<stream>/date=YYYY-MM-DD/hour=HH/<segment>.parquet`, the form the batch reads. Segments left
open by a crashed process are recovered (their readable prefix closed into Parquet) when a log of the
same stream starts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aura.errors import NotReady
from aura.processes import process_alive

log = logging.getLogger(__name__)

_TIME = pa.timestamp("ms", tz="UTC")
_STRINGS = pa.list_(pa.string())

DECISION_ITEM = pa.struct(
    [
        pa.field("content_id", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("score", pa.float64()),
        pa.field("propensity", pa.float64()),
        pa.field("explored", pa.bool_()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "decisions": pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("ts", _TIME, nullable=False),
            pa.field("node_id", pa.string()),
            pa.field("bundle_version", pa.string()),
            pa.field("policy_version", pa.string()),
            pa.field("surface_id", pa.string()),
            pa.field("segment_id", pa.string()),
            pa.field("segment_source", pa.string()),
            pa.field("segment_confidence", pa.float64()),
            pa.field("holdout", pa.bool_()),
            pa.field("anon_id", pa.string()),
            pa.field("session_id", pa.string()),
            pa.field("device", pa.string()),
            pa.field("referrer_host", pa.string()),
            pa.field("page_type", pa.string()),
            pa.field("country", pa.string()),
            pa.field("region", pa.string()),
            pa.field("consent", _STRINGS),
            pa.field("context_json", pa.string()),
            pa.field("seed", pa.uint64()),
            pa.field("exploration_rate", pa.float64()),
            pa.field("eligible_count", pa.int32()),
            pa.field("items", pa.list_(DECISION_ITEM)),
        ]
    ),
    "feedback": pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("ts", _TIME, nullable=False),
            pa.field("reward_ts", _TIME),
            pa.field("node_id", pa.string()),
            pa.field("request_id", pa.string()),
            pa.field("decided_at", _TIME),
            pa.field("bundle_tag", pa.string()),
            pa.field("surface_id", pa.string()),
            pa.field("segment_id", pa.string()),
            pa.field("item_id", pa.string()),
            pa.field("reward_type", pa.string()),
            pa.field("reward_value", pa.float64()),
            pa.field("position", pa.int32()),
            pa.field("dwell_time", pa.float64()),
            pa.field("scroll_depth", pa.float64()),
        ]
    ),
    "events": pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("ts", _TIME, nullable=False),
            pa.field("received_at", _TIME),
            pa.field("type", pa.string()),
            pa.field("anon_id", pa.string()),
            pa.field("session_id", pa.string()),
            pa.field("surface_id", pa.string()),
            pa.field("content_id", pa.string()),
            pa.field("request_id", pa.string()),
            pa.field("url", pa.string()),
            pa.field("referrer", pa.string()),
            pa.field("props_json", pa.string()),
        ]
    ),
    "admin": pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("ts", _TIME, nullable=False),
            pa.field("node_id", pa.string()),
            pa.field("action", pa.string()),
            pa.field("subject", pa.string()),
            pa.field("note", pa.string()),
        ]
    ),
}
"""The documented event schema of every stream (docs/events.md describes each field)."""

RECORD_TYPES: dict[str, type[tuple]] = {
    stream: collections.namedtuple(f"{stream.title()}Record", schema.names, defaults=(None,) * len(schema.names))
    for stream, schema in SCHEMAS.items()
}
"""Per stream, its record: a named tuple of the schema's fields in order, absent fields null. Timestamps
may be datetimes or integer milliseconds since the epoch; list-of-struct items may be tuples."""


def default_node_id() -> str:
    """This node's id in log records and segment names: AURA_NODE_ID, else the host name."""
    return os.environ.get("AURA_NODE_ID") or socket.gethostname()


CONVERT_CHUNK_ROWS = 256
"""Tuple records converted to Arrow per call: a conversion holds the GIL, so one call per flush would stall a
server's requests for as long as a second's worth of records takes to convert."""


class RecordBuffer(Protocol):
    """Where an EventLog queues records until its writer thread takes them."""

    def __len__(self) -> int: ...

    def take(self) -> Any:
        """Everything queued so far, leaving the buffer empty (called under the log's lock)."""

    def batches(self, taken: Any) -> list[pa.RecordBatch]:
        """What `take` returned, as record batches of the log's schema (called on the writer thread, unlocked)."""


class TupleBuffer:
    """Records as tuples of the schema's fields (RECORD_TYPES), converted by `pa.array` in chunks.

    Appends need no lock; `wake` is called when `batch_size` records wait.
    """

    def __init__(self, schema: pa.Schema, batch_size: int, wake: Callable[[], None]) -> None:
        self._schema = schema
        self._batch_size = batch_size
        self._wake = wake
        self._records: collections.deque[tuple] = collections.deque()

    def __len__(self) -> int:
        return len(self._records)

    def append(self, record: tuple) -> None:
        """Queue one record."""
        self._records.append(record)
        if len(self._records) >= self._batch_size:
            self._wake()

    def extend(self, records: Iterable[tuple]) -> None:
        """Queue records without waking the writer."""
        self._records.extend(records)

    def take(self) -> list[tuple]:
        """Every queued record, oldest first."""
        records = self._records
        return [records.popleft() for _ in range(len(records))]

    def batches(self, taken: list[tuple]) -> list[pa.RecordBatch]:
        """The records in batches of CONVERT_CHUNK_ROWS."""
        return [
            self._batch(taken[start : start + CONVERT_CHUNK_ROWS]) for start in range(0, len(taken), CONVERT_CHUNK_ROWS)
        ]

    def _batch(self, records: list[tuple]) -> pa.RecordBatch:
        columns = zip(*records, strict=True)
        return pa.RecordBatch.from_arrays(
            [pa.array(column, type=field.type) for column, field in zip(columns, self._schema, strict=True)],
            schema=self._schema,
        )


class EventLog:
    """Append-only log of one stream for one process; see the module docstring for the layout.

    Records wait in a buffer made by `buffer(schema, batch_size, wake)`: by default a TupleBuffer, which
    `append` and `append_durable` fill; a log made with another buffer (aura.server.decision_log) is filled
    through `queue`.
    """

    def __init__(
        self,
        root: str | Path,
        stream: str,
        *,
        node_id: str,
        flush_interval: float = 1.0,
        batch_size: int = 1000,
        rotate_seconds: float = 300.0,
        rotate_rows: int = 200_000,
        buffer: Callable[[pa.Schema, int, Callable[[], None]], RecordBuffer] = TupleBuffer,
    ) -> None:
        if stream not in SCHEMAS:
            raise ValueError(f"unknown event stream {stream!r}; known: {', '.join(SCHEMAS)}.")
        self.stream = stream
        self.schema = SCHEMAS[stream]
        self.directory = Path(root) / stream
        self._open_dir = self.directory / "_open"
        self._open_dir.mkdir(parents=True, exist_ok=True)
        self._node_id = node_id
        self._flush_interval = flush_interval
        self._rotate_seconds = rotate_seconds
        self._rotate_rows = rotate_rows
        self.record = RECORD_TYPES[stream]
        """Build a record of this stream from its fields by name (TypeError on an unknown field)."""
        self.queue = buffer(self.schema, batch_size, self._wake)
        """The buffer records wait in until the writer takes them."""
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._cond = threading.Condition()
        self._closing = False
        self._segment: _Segment | None = None
        self._unclosed: list[Path] = []
        """Segments this process stopped writing whose Parquet rewrite failed (e.g. a full disk); retried later."""
        self._sequence = 0
        recover_open_segments(self.directory)
        self._thread = threading.Thread(target=self._run, name=f"eventlog-{stream}", daemon=True)
        self._thread.start()

    def append(self, record: tuple) -> None:
        """Queue a record (see `record`); it is written once `batch_size` records wait, or within `flush_interval`.

        No durability promise: `append_durable` gives one.
        """
        self.queue.append(record)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    async def append_durable(self, records: Iterable[tuple]) -> None:
        """Queue records and return once they are fsynced; raises LogUnavailable if their write failed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            self.queue.extend(records)
            self._waiters.append((loop, future))
            self._cond.notify()
        await future

    def flush(self) -> None:
        """Write and fsync everything queued so far (blocking)."""
        done = threading.Event()
        with self._cond:
            self._waiters.append((None, done))  # type: ignore[arg-type]
            self._cond.notify()
        done.wait()

    def close(self) -> None:
        """Flush, close the open segment into Parquet and stop the writer thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not (self._waiters or self._closing):
                    self._cond.wait(timeout=self._flush_interval)
                taken = self.queue.take() if len(self.queue) else None
                waiters, self._waiters = self._waiters, []
                closing = self._closing
            error: str | None = None
            if taken is not None:
                try:
                    self._write(self.queue.batches(taken))
                except Exception as exc:  # a failed write must fail the waiting callers, not kill the thread
                    log.error("event log %s: write failed: %s", self.stream, exc)
                    error = f"The {self.stream} log cannot store records right now; retry later."
            segment = self._segment
            if segment is not None and (closing or segment.due(self._rotate_seconds, self._rotate_rows)):
                self._segment = None
                self._retire(segment)
            for loop, waiter in waiters:
                if loop is None:
                    waiter.set()
                else:
                    loop.call_soon_threadsafe(_settle, waiter, error)
            if closing:
                return

    def _write(self, batches: list[pa.RecordBatch]) -> None:
        if self._segment is None:
            self._sequence += 1
            name = f"{self._node_id}-{os.getpid()}-{time.time_ns()}-{self._sequence}"
            self._segment = _Segment(self._open_dir / f"{name}.arrow", self.directory, self.schema)
        segment = self._segment
        try:
            segment.write(batches)
        except BaseException:
            # The segment cut itself back to its last complete batch; later records go to a new segment.
            self._segment = None
            self._retire(segment)
            raise

    def _retire(self, segment: _Segment) -> None:
        """Stop writing `segment` and rewrite it (and earlier ones that failed to) into Parquet.

        A failure leaves the segment's acknowledged batches in `_open`, to be retried at the next rotation, at
        close, or by recovery after this process ends.
        """
        self._unclosed.append(segment.path)
        segment.finish()
        for path in list(self._unclosed):
            try:
                _close_segment(path, self.directory)
            except Exception as exc:
                log.warning("event log %s: segment %s stays open for now: %s", self.stream, path.name, exc)
            else:
                self._unclosed.remove(path)


def _settle(future: asyncio.Future[None], error: str | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(LogUnavailable(error))


class LogUnavailable(NotReady):
    """A durable append failed (e.g. a full disk): none of its records is acknowledged, and a retry may succeed."""


class _Segment:
    """One open Arrow IPC stream file and its rows.

    Every message (the schema, each record batch, the end marker) is serialized in memory and written with one
    system call, which runs without the GIL. pyarrow's stream writer on a Python file would call back into Python,
    taking the GIL, for each of a batch's buffers (84 times for one decision batch), each time taking the
    GIL from the requests in flight.
    """

    def __init__(self, path: Path, stream_dir: Path, schema: pa.Schema) -> None:
        self.path = path
        self.stream_dir = stream_dir
        self.opened = time.monotonic()
        self.first_ts = datetime.now(UTC)
        self.rows = 0
        self._file = path.open("wb", buffering=0)  # no buffer that could write again after a cut-back
        self._broken = False
        self._write_all(schema.serialize())

    def _write_all(self, data: pa.Buffer | bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._file.write(view) :]

    def write(self, batches: list[pa.RecordBatch]) -> None:
        """Append and fsync `batches`; if that fails, cut the file back to its last complete batch and raise."""
        complete = self._file.tell()
        try:
            for batch in batches:
                self._write_all(batch.serialize())
            os.fsync(self._file.fileno())
        except BaseException:
            self._broken = True
            with contextlib.suppress(OSError):
                os.ftruncate(self._file.fileno(), complete)
                os.fsync(self._file.fileno())
            raise
        self.rows += sum(batch.num_rows for batch in batches)

    def due(self, rotate_seconds: float, rotate_rows: int) -> bool:
        return self.rows >= rotate_rows or time.monotonic() - self.opened >= rotate_seconds

    def finish(self) -> None:
        """Close the file; the stream's end marker is written unless a failed write cut the stream back."""
        try:
            if not self._broken:
                self._write_all(_END_OF_STREAM)
        except OSError as exc:  # a reader stops at the last complete batch anyway
            log.warning("event log: segment %s closed without its end marker: %s", self.path.name, exc)
        finally:
            self._file.close()


_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"
"""The Arrow IPC stream's end marker: a continuation token and a zero-length message."""


def _partitions(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """The table's rows by the UTC hour of their `ts` (rows without one: the current hour), as (partition, rows)."""
    now = datetime.now(UTC)
    keys = pc.fill_null(
        pc.strftime(table.column("ts"), format="date=%Y-%m-%d/hour=%H"), f"date={now:%Y-%m-%d}/hour={now:%H}"
    )
    for key in pc.unique(keys).to_pylist():
        yield key, table.filter(pc.equal(keys, key))


def _read_stream_prefix(path: Path) -> pa.Table | None:
    """Read every complete, valid record batch of an Arrow IPC stream, stopping at a torn or corrupt one."""
    batches = []
    schema = None
    try:
        with pa.OSFile(str(path)) as source:
            reader = pa.ipc.open_stream(source)
            schema = reader.schema
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                batch.validate(full=True)  # garbage that parses as a batch must not reach Parquet or a reader
                batches.append(batch)
    except (pa.ArrowInvalid, OSError) as exc:
        if schema is None:
            log.warning("event log: segment %s has no readable header (%s); it holds no acknowledged data", path, exc)
            return None
    return pa.Table.from_batches(batches, schema=schema)


def _close_segment(path: Path, stream_dir: Path) -> None:
    """Rewrite an Arrow segment as one Parquet file per hour partition its rows fall in, then delete it.

    The file names are the segment's, so a close that a crash interrupted is redone by recovery, not doubled.
    """
    table = _read_stream_prefix(path)
    if table is not None and table.num_rows:
        for partition, rows in _partitions(table):
            target_dir = stream_dir / partition
            target_dir.mkdir(parents=True, exist_ok=True)
            tmp = target_dir / f".{path.stem}.parquet.tmp"
            pq.write_table(rows, tmp, compression="zstd")
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
            tmp.rename(target_dir / f"{path.stem}.parquet")
    path.unlink()


def _owner_alive(path: Path) -> bool:
    parts = path.stem.split("-")
    try:
        pid = int(parts[-3])
    except (IndexError, ValueError):
        return False
    return pid != os.getpid() and process_alive(pid)


def recover_open_segments(stream_dir: str | Path) -> int:
    """Close into Parquet the open segments of processes that are gone; return how many were recovered.

    Processes that start together recover one at a time (a lock file in `_open`), so no segment is closed twice.
    """
    open_dir = Path(stream_dir) / "_open"
    open_dir.mkdir(parents=True, exist_ok=True)
    recovered = 0
    with (open_dir / ".recovery.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for path in sorted(open_dir.glob("*.arrow")):
            if _owner_alive(path):
                continue
            try:
                _close_segment(path, Path(stream_dir))
            except OSError as exc:  # e.g. a full disk: the segment is fine and is retried at the next start
                log.warning("event log: segment %s is not recovered yet: %s", path, exc)
                continue
            except Exception as exc:
                quarantined = path.with_name(f"{path.name}.unreadable")
                path.rename(quarantined)
                log.error("event log: segment %s cannot be recovered (%s); moved to %s", path, exc, quarantined)
            recovered += 1
    return recovered


def read_log(root: str | Path, stream: str, *, include_open: bool = True) -> pa.Table:
    """Read a whole stream (closed Parquet segments, and the readable part of open ones) as one table."""
    directory = Path(root) / stream
    schema = SCHEMAS[stream]
    tables = [pq.read_table(p, schema=schema) for p in sorted(directory.glob("date=*/hour=*/*.parquet"))]
    if include_open:
        for path in sorted((directory / "_open").glob("*.arrow")):
            table = _read_stream_prefix(path)
            if table is not None:
                tables.append(table)
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)

"""Ships an edge node's closed event-log segments to the bundle store, where the batch reads them.

Every closed segment `<logs_root>/<stream>/date=.../hour=.../<segment>.parquet` (never the open
`_open/` ones) is scrubbed of PII (aura.pii) and uploaded to `logs/<stream>/date=.../hour=.../<segment>.parquet`
in the store. An upload counts once the store confirms the object's size; only then is the segment
recorded in `<logs_root>/.shipped-<store digest>` (one `<stream>/<relative path>` per line, a record per
store), which makes shipping
idempotent: a recorded segment is never uploaded again (so an erasure that rewrote it in the store
is not undone). A failed upload is retried on the next rounds with exponential back-off. Local
copies are deleted only when recorded as shipped and older than `keep_local_seconds`.

Several processes of a node share the logs directory; the one holding the flock on `<logs_root>/.ship.lock`
ships for all of them, so a segment recovered from a crashed process is shipped too.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq

from aura.bundle.store import BundleStore
from aura.errors import AuraError
from aura.eventlog import SCHEMAS
from aura.pii import STREAM_PII_COLUMNS, scrub_table

log = logging.getLogger(__name__)

LOCK = ".ship.lock"
MAX_BACKOFF_SECONDS = 600.0


class LogShipper:
    """Uploads closed segments of every stream under `logs_root` to `store`; see the module docstring."""

    def __init__(
        self,
        logs_root: str | Path,
        store: BundleStore,
        node_id: str,
        *,
        interval_seconds: float = 30.0,
        keep_local_seconds: float = 86_400.0,
    ) -> None:
        self.logs_root = Path(logs_root)
        self.store = store
        self.node_id = node_id
        self.interval_seconds = interval_seconds
        self.keep_local_seconds = keep_local_seconds
        self.failures = 0
        """Consecutive failed rounds; the wait before the next one doubles with each."""
        self._shipped_path = self.logs_root / f".shipped-{hashlib.sha256(store.url.encode()).hexdigest()[:12]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Ship in a background thread every `interval_seconds` until `stop`."""
        self._thread = threading.Thread(target=self._run, name="logship", daemon=True)
        self._thread.start()

    def stop(self, final_round: bool = True) -> None:
        """Stop the thread; with `final_round`, ship once more (the segments closed at shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if final_round:
            self._round(wait_for_lock=True)

    def _run(self) -> None:
        while not self._stop.wait(self._delay()):
            self._round()

    def _delay(self) -> float:
        return min(self.interval_seconds * 2**self.failures, MAX_BACKOFF_SECONDS)

    def _round(self, wait_for_lock: bool = False) -> None:
        try:
            self.ship_once(wait_for_lock)
        except (AuraError, OSError) as exc:
            self.failures += 1
            log.warning(
                "log shipper of node %s: shipping to %s failed (%s); retrying in %.1f s",
                self.node_id,
                self.store.url,
                exc,
                self._delay(),
            )
        else:
            self.failures = 0

    def ship_once(self, wait_for_lock: bool = False) -> int:
        """Upload every closed, unshipped segment and clean up old shipped ones; return how many were uploaded.

        Returns 0 without doing anything when another process of the node is shipping, unless
        `wait_for_lock`, which waits for it to finish first. Raises
        BundleError or OSError when an upload fails; the segments uploaded before it stay recorded.
        """
        with self._lock(wait_for_lock) as held:
            if not held:
                return 0
            shipped = self._read_shipped()
            uploaded = 0
            for stream, relative, path in self._closed_segments():
                if f"{stream}/{relative}" not in shipped:
                    self._upload(stream, relative, path)
                    self._record(f"{stream}/{relative}")
                    shipped.add(f"{stream}/{relative}")
                    uploaded += 1
            self._clean_up(shipped)
            return uploaded

    def _closed_segments(self) -> Iterator[tuple[str, str, Path]]:
        for stream in SCHEMAS:
            directory = self.logs_root / stream
            for path in sorted(directory.glob("date=*/hour=*/*.parquet")):
                if not path.name.startswith("."):
                    yield stream, path.relative_to(directory).as_posix(), path

    def _upload(self, stream: str, relative: str, path: Path) -> None:
        table = scrub_table(pq.read_table(path), STREAM_PII_COLUMNS[stream])
        with tempfile.TemporaryDirectory(prefix="aura-logship-") as tmp:
            scrubbed = Path(tmp) / path.name
            pq.write_table(table, scrubbed, compression="zstd")
            self.store.put_log(stream, relative, scrubbed)
        log.info("log shipper of node %s: shipped %s/%s (%d rows)", self.node_id, stream, relative, table.num_rows)

    def _clean_up(self, shipped: set[str]) -> None:
        """Delete shipped local copies older than the local retention, and forget them in the record."""
        cutoff = time.time() - self.keep_local_seconds
        kept = set()
        for stream, relative, path in self._closed_segments():
            name = f"{stream}/{relative}"
            if name in shipped and path.stat().st_mtime < cutoff:
                # Empty partition folders stay: a recovering sibling process may be closing a segment into one.
                path.unlink()
            elif name in shipped:
                kept.add(name)
        if kept != shipped:
            self._write_shipped(kept)
            shipped.intersection_update(kept)

    @contextmanager
    def _lock(self, wait: bool) -> Iterator[bool]:
        self.logs_root.mkdir(parents=True, exist_ok=True)
        with (self.logs_root / LOCK).open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_shipped(self) -> set[str]:
        try:
            return set(self._shipped_path.read_text().split())
        except FileNotFoundError:
            return set()

    def _record(self, name: str) -> None:
        with self._shipped_path.open("a") as handle:
            handle.write(name + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _write_shipped(self, names: set[str]) -> None:
        path = self._shipped_path
        tmp = path.with_name(f"{path.name}.tmp")
        with tmp.open("w") as handle:
            handle.writelines(f"{name}\n" for name in sorted(names))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

"""Node-wide set of erased visitors (GDPR/CCPA/DPDP requests), shared by a node's processes through a file."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from aura.pii import user_digest


class ErasedUsers:
    """Remembers erased visitor ids (as sha256 digests, so the file itself holds no ids)."""

    def __init__(self, path: str | Path, refresh_seconds: float = 1.0) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._path.touch(exist_ok=True)
        self._refresh_seconds = refresh_seconds
        self._digests: frozenset[str] = frozenset()
        self._stamp: tuple[int, int] = (-1, -1)
        self._checked = 0.0
        self._reload()

    def _reload(self) -> None:
        stat = self._path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._digests = frozenset(self._path.read_text().split())
            self._stamp = stamp

    def __contains__(self, user_id: str) -> bool:
        now = time.monotonic()
        if now - self._checked >= self._refresh_seconds:
            self._checked = now
            self._reload()
        return bool(self._digests) and user_digest(user_id) in self._digests

    def add(self, user_id: str) -> None:
        """Record an erasure durably (appended, fsynced) and apply it to this process at once."""
        digest = user_digest(user_id)
        with self._path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(digest + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._digests = self._digests | {digest}

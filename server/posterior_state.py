"""Online learning between bundles: posterior counts shared by a node's processes through mmap files.

The bundle's Beta parameters are copied once per node into `<state_dir>/posteriors/<version>.f64`;
every server process maps the same file, so a reward applied by one process is seen by all. Writes
are unsynchronized float adds: a rare lost increment under contention is accepted, because the
durable feedback log, not this cache, is what the batch learns from.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from aura.bundle.loader import LoadedBundle

EXAMINATION_WEIGHTS = 1.0 / np.log2(np.arange(2, 203, dtype=np.float64))
"""EXAMINATION_WEIGHTS[k - 1]: the weight of position k (1-based), 1 / log2(k + 1)."""


def examination_weight(position: int) -> float:
    """Probability-like weight that a visitor examined position `position` (1-based): 1 / log2(position + 1)."""
    return float(EXAMINATION_WEIGHTS[position - 1])


class PosteriorState:
    """Alpha and beta of every posterior row of one bundle, as writable views of a shared file.

    `params` holds every alpha followed by every beta; `alpha` and `beta` are views of its halves. Rank counts
    each slate's items as impressions weighted by position, beta[row] += EXAMINATION_WEIGHTS[position - 1]
    (in compiled code, aura.server._native.serve_slate); `record_reward` turns one into a success.
    """

    def __init__(self, params: np.ndarray, beta_floor: np.ndarray) -> None:
        n = len(beta_floor)
        self.params = params
        self.alpha = params[:n]
        self.beta = params[n:]
        self._beta_floor = beta_floor

    @classmethod
    def in_memory(cls, bundle: LoadedBundle) -> PosteriorState:
        """A private copy, for tests and single-process tools."""
        return cls(np.concatenate([bundle.alpha, bundle.beta]).astype(np.float64), bundle.beta)

    @classmethod
    def shared(cls, state_dir: str | Path, bundle: LoadedBundle) -> PosteriorState:
        """Map (creating on first use) the node-wide posterior file of `bundle`."""
        directory = Path(state_dir) / "posteriors"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{bundle.version}.f64"
        n = len(bundle.alpha)
        if not path.exists():
            tmp = directory / f".{bundle.version}.{os.getpid()}.tmp"
            np.concatenate([bundle.alpha, bundle.beta]).astype(np.float64).tofile(tmp)
            try:
                with contextlib.suppress(FileExistsError):  # a sibling process created it first: use theirs
                    os.link(tmp, path)
            finally:
                tmp.unlink()
        # A plain ndarray view of the mapping: slicing a np.memmap costs a subclass round trip per request.
        return cls(np.memmap(path, dtype=np.float64, mode="r+", shape=(2 * n,)).view(np.ndarray), bundle.beta)

    def record_reward(self, row: int, value: float, weight: float) -> None:
        """Turn an impression into a success: alpha += value, beta -= weight, never below the bundle's beta."""
        self.alpha[row] += value
        self.beta[row] = max(self.beta[row] - weight * value, self._beta_floor[row])


class FeedbackDedupe:
    """A node-wide, bounded set of feedback fingerprints, so retries are applied once.

    A memory-mapped table of 64-bit fingerprints in 4-way buckets, replaced round robin; the file lock
    makes check-and-insert atomic across processes. Retries arrive within seconds, far inside the
    table's reach (2**20 entries by default).
    """

    _WAYS = 4

    def __init__(self, path: str | Path, buckets: int = 1 << 18) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        size = buckets * (self._WAYS + 1) * 8
        with path.open("ab") as handle:
            if handle.tell() < size:
                handle.truncate(size)
        self._table = np.memmap(path, dtype=np.uint64, mode="r+", shape=(buckets, self._WAYS + 1))
        self._lock_file = path.open("rb")
        self._buckets = buckets

    @staticmethod
    def fingerprint(*parts: str) -> int:
        """A non-zero 64-bit fingerprint of the joined parts."""
        digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") or 1

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the node-wide lock for a check-then-insert sequence."""
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def contains(self, fingerprint: int) -> bool:
        """True when the fingerprint was added (and not yet evicted)."""
        bucket = self._table[fingerprint % self._buckets]
        return bool(np.any(bucket[: self._WAYS] == np.uint64(fingerprint)))

    def add(self, fingerprint: int) -> None:
        """Insert a fingerprint, evicting the bucket's oldest entry when full."""
        bucket = self._table[fingerprint % self._buckets]
        slot = int(bucket[self._WAYS]) % self._WAYS
        bucket[slot] = np.uint64(fingerprint)
        bucket[self._WAYS] = np.uint64(slot + 1)

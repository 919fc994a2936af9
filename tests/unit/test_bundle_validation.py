"""Bundle validation before anything trusts a file: the hnswlib index structure and the manifest's field types."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import pytest

from aura.bundle.format import EMBEDDING_DIM, INDEX, MANIFEST, FileEntry, Manifest
from aura.bundle.hnsw_file import check_hnsw_file
from aura.bundle.loader import verify_bundle
from aura.bundle.store import LocalBundleStore
from aura.bundle.writer import sha256_file
from aura.errors import BundleError
from aura.timeformat import parse_rfc3339
from tests.bundle_factory import make_tiny_bundle

HEADER_BYTES = 96
M = 4
"""The fixture index's M: small, so that it has many elements on levels 1 and 2."""
RECORD_BYTES = 4 + 4 * 2 * M + 4 * EMBEDDING_DIM + 8
"""One level-0 record: link count, maxM0 = 2M neighbour ids, the vector and the label."""
UPPER_BLOCK_BYTES = 4 + 4 * M
N = 400


def _save_index(path: Path, n: int, m: int = 16) -> Path:
    """Build and save a cosine hnswlib index of `n` seeded random vectors labelled 0..n-1, as the writer does."""
    index = hnswlib.Index(space="cosine", dim=EMBEDDING_DIM)
    index.init_index(max_elements=max(1, n), ef_construction=200, M=m)
    if n:
        index.add_items(np.random.default_rng(n).standard_normal((n, EMBEDDING_DIM)).astype(np.float32), np.arange(n))
    index.save_index(str(path))
    return path


def _max_level(path: Path) -> int:
    return struct.unpack_from("<i", path.read_bytes(), 48)[0]


def _upper_lists(data: bytes) -> dict[int, tuple[int, int]]:
    """Element -> (offset, level count) of its upper-level links, for the fixture's elements that have any."""
    lists, position = {}, HEADER_BYTES + N * RECORD_BYTES
    for element in range(N):
        (size,) = struct.unpack_from("<I", data, position)
        if size:
            lists[element] = (position + 4, size // UPPER_BLOCK_BYTES)
        position += 4 + size
    return lists


@pytest.fixture(scope="module")
def index_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = _save_index(tmp_path_factory.mktemp("index") / INDEX, N, M)
    assert _max_level(path) >= 3
    return path.read_bytes()


@pytest.mark.parametrize(("n", "m"), [(0, 16), (1, 16), (2, 16), (50, 16), (N, 16), (N, M)])
def test_indexes_saved_by_hnswlib_are_accepted(tmp_path: Path, n: int, m: int) -> None:
    path = _save_index(tmp_path / INDEX, n, m)
    check_hnsw_file(path, "v1", dim=EMBEDDING_DIM, count=n)
    if n >= 50:
        assert _max_level(path) >= 1  # elements with upper levels are covered


def _put(fmt: str, offset: int, value: float) -> Callable[[bytearray], bytes]:
    def change(data: bytearray) -> bytes:
        struct.pack_into(fmt, data, offset, value)
        return bytes(data)

    return change


def _record(element: int, field_offset: int) -> int:
    return HEADER_BYTES + element * RECORD_BYTES + field_offset


def _put_upper(level: int, word: int, value: int | None) -> Callable[[bytearray], bytes]:
    """Set a word of the level-`level` block of the first element with links at that level (word -1 of level 1:
    the size of its upper-level links) to `value`, or (None) to an element whose own level is `level - 1`."""

    def change(data: bytearray) -> bytes:
        lists = _upper_lists(bytes(data))
        blocks = (offset + (level - 1) * UPPER_BLOCK_BYTES for offset, levels in lists.values() if levels >= level)
        block = next(block for block in blocks if struct.unpack_from("<I", data, block)[0])
        own_level = {element: levels for element, (_, levels) in lists.items()}
        lower = next(element for element in range(N) if own_level.get(element, 0) == level - 1)
        struct.pack_into("<I", data, block + 4 * word, lower if value is None else value)
        return bytes(data)

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: bytes(b ^ 0xFF for b in d[:4]) + bytes(d[4:]), r"has offsetLevel0 4294967295, not 0"),
        (_put("<Q", 16, N + 1), rf"holds {N + 1} elements, the id map {N}"),
        (_put("<Q", 8, N - 1), rf"has max_elements {N - 1}, fewer than its {N} elements"),
        (_put("<Q", 24, RECORD_BYTES + 4), r"has record size, .* \(1584, 36, 1572\), expected \(1580, 36, 1572\)"),
        (_put("<Q", 40, 40), r"has record size, .* \(1580, 40, 1572\), expected \(1580, 36, 1572\)"),
        (_put("<i", 48, 9), r"has maxlevel 9 and entry point \d+ at level \d, but its highest element level is \d"),
        (_put("<I", 52, N), rf"has entry point {N} and maxlevel \d for {N} elements"),
        (_put("<Q", 56, M + 1), r"has M 4, maxM 5 and maxM0 8"),
        (_put("<Q", 72, 1), r"has M 1, maxM 4 and maxM0 8"),
        (_put("<d", 80, 0.5), r"has mult 0.5, not 1/ln\(M\) for M 4"),
        (_put("<Q", 88, 2), r"has ef_construction 2, less than M 4"),
        (_put("<I", _record(7, 0), 9), r"gives element 7 a level-0 link count of 9, more than maxM0 8"),
        (_put("<I", _record(7, 0), 1 << 16), r"gives element 7 a level-0 link count of 65536"),  # a deletion mark
        (_put("<I", _record(7, 4), N), rf"links element 7 at level 0 to a neighbour id outside 0..{N - 1}"),
        (_put("<f", _record(7, 36), float("nan")), r"holds a vector that is not finite"),
        (_put("<Q", _record(7, 1572), 0), rf"does not label its elements 0..{N - 1}, each once"),
        (_put_upper(1, 0, M + 1), r"has an upper-level link count of 5, more than maxM 4"),
        (_put_upper(1, 1, N), rf"has an upper-level neighbour id outside 0..{N - 1}"),
        (_put_upper(1, 1, None), r"links an element at a level above that element's own"),
        (_put_upper(2, 1, None), r"links an element at a level above that element's own"),
        (_put_upper(1, -1, UPPER_BLOCK_BYTES + 4), r"ends or breaks off in the upper-level links of element \d+"),
        (lambda d: bytes(d[:50]), r"is 50 bytes long, shorter than the 96-byte hnswlib header"),
        (
            lambda d: bytes(d[: _record(N - 1, 0)]),
            rf"is \d+ bytes long, too short for {N} level-0 records of {RECORD_BYTES}",
        ),
        (lambda d: bytes(d[:-4]), rf"ends or breaks off in the upper-level links of element {N - 1}"),
        (lambda d: bytes(d[:-1]), r"has \d+ bytes of upper-level links, not whole 4-byte words"),
        (lambda d: bytes(d) + bytes(4), r"has 4 bytes after its last element"),
    ],
)
def test_corrupt_indexes_are_refused(
    tmp_path: Path, index_bytes: bytes, change: Callable[[bytearray], bytes], message: str
) -> None:
    path = tmp_path / INDEX
    path.write_bytes(change(bytearray(index_bytes)))
    with pytest.raises(BundleError, match=rf"^bundle v1: content_index.hnsw {message}.*; the index is corrupt\.$"):
        check_hnsw_file(path, "v1", dim=EMBEDDING_DIM, count=N)


def test_an_index_of_another_size_or_dimension_is_refused(tmp_path: Path, index_bytes: bytes) -> None:
    path = tmp_path / INDEX
    path.write_bytes(index_bytes)
    with pytest.raises(BundleError, match=rf"holds {N} elements, the id map {N - 1}"):
        check_hnsw_file(path, "v1", dim=EMBEDDING_DIM, count=N - 1)
    with pytest.raises(BundleError, match=r"expected \(1068, 36, 1060\) for dimension 256"):
        check_hnsw_file(path, "v1", dim=256, count=N)
    empty = _save_index(tmp_path / "empty.hnsw", 0)
    empty.write_bytes(empty.read_bytes() + bytes(4))
    with pytest.raises(BundleError, match=r"empty.hnsw is empty but has 4 bytes of data"):
        check_hnsw_file(empty, "v1", dim=EMBEDDING_DIM, count=0)


def _flip_index_header(bundle_dir: Path) -> None:
    """The audit's reproduction: flip bytes 0-3 of the index and recompute the manifest's checksums."""
    path = bundle_dir / INDEX
    data = path.read_bytes()
    path.write_bytes(bytes(b ^ 0xFF for b in data[:4]) + data[4:])
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    manifest["files"][INDEX].update(sha256=sha256_file(path), bytes=path.stat().st_size)
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest))


def test_a_corrupt_index_with_valid_checksums_is_refused_by_push_and_load_without_a_crash(tmp_path: Path) -> None:
    bundle_dir = make_tiny_bundle(tmp_path / "built", "v1")
    _flip_index_header(bundle_dir)
    refusal = "bundle v1: content_index.hnsw has offsetLevel0 4294967295, not 0; the index is corrupt."
    with pytest.raises(BundleError, match=re.escape(refusal)):
        verify_bundle(bundle_dir)
    (tmp_path / "store").mkdir()
    with pytest.raises(BundleError, match=re.escape(refusal)):
        LocalBundleStore(tmp_path / "store").push(bundle_dir)
    # In a child process: without the check, hnswlib dies of a segmentation fault here.
    load = (
        "from aura.bundle.loader import load_bundle\n"
        f"try:\n    load_bundle({str(bundle_dir)!r})\nexcept Exception as exc:\n    print(exc)"
    )
    result = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=120, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, refusal)


def _manifest(**changes: Any) -> dict[str, Any]:
    """A valid manifest as JSON data, with fields replaced (a value of ... removes the field)."""
    entry = FileEntry(sha256="ab" * 32, rows=20, bytes=1000)
    data = json.loads(Manifest("v1", "2025-10-01T12:00:00Z", "2025-10-01", None, {"content.parquet": entry}).to_json())
    data.update(changes)
    return {key: value for key, value in data.items() if value is not ...}


def _entry(**changes: Any) -> dict[str, Any]:
    entry = {"sha256": "ab" * 32, "rows": 20, "bytes": 1000, **changes}
    return {"content.parquet": {key: value for key, value in entry.items() if value is not ...}}


def _read(tmp_path: Path, data: dict[str, Any]) -> Manifest:
    (tmp_path / "v1").mkdir(exist_ok=True)
    (tmp_path / "v1" / MANIFEST).write_text(json.dumps(data))
    return Manifest.read(tmp_path / "v1")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_manifest(policy_version=20251001), r": policy_version must be a string, got 20251001\."),
        (_manifest(bundle_version=1), r": bundle_version must be a string, got 1\."),
        (_manifest(parent_version=3), r": parent_version must be a string or null, got 3\."),
        (_manifest(embedding_model=None), r": embedding_model must be a string, got None\."),
        (_manifest(embedding_dim=True), r": embedding_dim must be an integer, got True\."),
        (_manifest(embedding_dim=384.0), r": embedding_dim must be an integer, got 384.0\."),
        (_manifest(stats=[]), r": stats must be a JSON object, got \[\]\."),
        (_manifest(reports="none"), r": reports must be a JSON object, got 'none'\."),
        (_manifest(files=[]), r": files must be a JSON object, got \[\]\."),
        (_manifest(format_version=True), r": format_version True is not supported; this build reads formats 1, 2\."),
        (_manifest(format_version="2"), r": format_version '2' is not supported; .*"),
        (_manifest(format_version=...), r": format_version None is not supported; .*"),
        (_manifest(created_at=20251001), r": created_at must be a string, got 20251001\."),
        (_manifest(created_at="last tuesday"), r": created_at must be an RFC 3339 date-time .*, got 'last tuesday'\."),
        (_manifest(created_at="2025-10-01"), r": created_at must be an RFC 3339 date-time .*, got '2025-10-01'\."),
        (_manifest(created_at="2025-10-01T12:00:00"), r": created_at must be an RFC 3339 date-time .*"),
        (_manifest(created_at="2025-13-01T12:00:00Z"), r": created_at must be an RFC 3339 date-time .*"),
        (_manifest(policy_version=...), r" lacks the field 'policy_version'\."),
        (_manifest(extra=1), r" has an unknown field 'extra'\."),
        (_manifest(files={"content.parquet": 5}), r": files entry 'content.parquet' must be a JSON object, got 5\."),
        (_manifest(files=_entry(rows="20")), r": files entry 'content.parquet': rows must be an integer, got '20'\."),
        (_manifest(files=_entry(bytes=True)), r": files entry 'content.parquet': bytes must be an integer, got True\."),
        (_manifest(files=_entry(sha256=None)), r": files entry 'content.parquet': sha256 must be a string, got None\."),
        (_manifest(files=_entry(rows=-1)), r": files entry 'content.parquet': rows and bytes must not be negative\."),
        (_manifest(files=_entry(sha256=...)), r": files entry 'content.parquet' lacks the field 'sha256'\."),
        (_manifest(files=_entry(md5="x")), r": files entry 'content.parquet' has an unknown field 'md5'\."),
    ],
)
def test_malformed_manifests_are_refused(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    with pytest.raises(BundleError, match=rf"^bundle v1: manifest.json{message}$"):
        _read(tmp_path, data)


def test_a_valid_manifest_reads_with_defaults_for_the_optional_fields(tmp_path: Path) -> None:
    data = _manifest(parent_version="v0", embedding_model=..., embedding_dim=..., stats=..., reports=...)
    manifest = _read(tmp_path, data)
    assert manifest == Manifest("v1", "2025-10-01T12:00:00Z", "2025-10-01", "v0", {
        "content.parquet": FileEntry(sha256="ab" * 32, rows=20, bytes=1000)
    })  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-10-01T12:00:00Z", datetime(2025, 10, 1, 12, tzinfo=UTC)),
        ("2025-10-01t12:00:00.25z", datetime(2025, 10, 1, 12, 0, 0, 250000, tzinfo=UTC)),
        ("2025-10-01T14:00:00+02:00", datetime(2025, 10, 1, 14, tzinfo=timezone(timedelta(hours=2)))),
    ],
)
def test_rfc3339_timestamps_parse(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected

"""Writes a bundle directory: Parquet tables, the HNSW index and the checksummed manifest."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aura.bundle.format import (
    CONTENT,
    EMBEDDING_DIM,
    INDEX,
    INDEX_IDS,
    MANIFEST,
    SCHEMAS,
    FileEntry,
    Manifest,
)
from aura.errors import BundleError


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def new_bundle_version(now: datetime | None = None) -> str:
    """Return a sortable, unique bundle version such as `20261127T154200Z-3fa9c1`."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{os.urandom(3).hex()}"


def write_bundle(
    out_dir: str | Path,
    tables: Mapping[str, pa.Table],
    *,
    bundle_version: str,
    policy_version: str,
    parent_version: str | None = None,
    stats: Mapping[str, Any] | None = None,
    reports: Mapping[str, Any] | None = None,
    hnsw_m: int = 16,
    hnsw_ef_construction: int = 200,
) -> Manifest:
    """Write a complete bundle into `out_dir/<bundle_version>` and return its manifest.

    `tables` maps each Parquet file name of `SCHEMAS` (except the index id map, which is derived)
    to a table; each is cast to its schema, so a missing column or a wrong type fails here rather
    than on an edge node. The directory is written under a temporary name and renamed at the end,
    so a crash never leaves a half-written bundle under a real version.
    """
    expected = set(SCHEMAS) - {INDEX_IDS}
    if set(tables) != expected:
        raise BundleError(f"write_bundle needs exactly the tables {sorted(expected)}, got {sorted(tables)}.")
    final = Path(out_dir) / bundle_version
    if final.exists():
        raise BundleError(f"bundle {bundle_version} already exists in {out_dir}.")
    staging = Path(out_dir) / f".tmp-{bundle_version}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    casted = {name: _cast(name, table) for name, table in tables.items()}
    content = casted[CONTENT]
    casted[INDEX_IDS] = pa.table(
        {"label": pa.array(np.arange(content.num_rows, dtype=np.int64)), "content_id": content["id"]},
        schema=SCHEMAS[INDEX_IDS],
    )
    files: dict[str, FileEntry] = {}
    for name, table in casted.items():
        path = staging / name
        pq.write_table(table, path, compression="zstd")
        files[name] = FileEntry(sha256=sha256_file(path), rows=table.num_rows, bytes=path.stat().st_size)

    embeddings = np.asarray(content["embedding"].combine_chunks().flatten(), dtype=np.float32)
    embeddings = embeddings.reshape(content.num_rows, EMBEDDING_DIM)
    index = hnswlib.Index(space="cosine", dim=EMBEDDING_DIM)
    index.init_index(max_elements=max(1, content.num_rows), ef_construction=hnsw_ef_construction, M=hnsw_m)
    if content.num_rows:
        index.add_items(embeddings, np.arange(content.num_rows))
    index.save_index(str(staging / INDEX))
    index_path = staging / INDEX
    files[INDEX] = FileEntry(sha256=sha256_file(index_path), rows=content.num_rows, bytes=index_path.stat().st_size)

    manifest = Manifest(
        bundle_version=bundle_version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        policy_version=policy_version,
        parent_version=parent_version,
        files=files,
        stats=dict(stats or {}),
        reports=dict(reports or {}),
    )
    (staging / MANIFEST).write_text(manifest.to_json())
    staging.rename(final)
    return manifest


def _cast(name: str, table: pa.Table) -> pa.Table:
    schema = SCHEMAS[name]
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise BundleError(f"table {name} is missing columns {missing}.")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise BundleError(f"table {name} does not match its schema: {exc}") from None

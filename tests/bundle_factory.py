"""Builds tiny, valid bundles for tests with the real bundle writer."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from aura.bundle.format import (
    COLD_START,
    CONTENT,
    EMBEDDING_DIM,
    GLOBAL_SEGMENT,
    POSTERIORS,
    SCHEMAS,
    SEGMENTS,
    USER_SEGMENTS,
)
from aura.bundle.writer import new_bundle_version, write_bundle

TINY_SEGMENTS: tuple[str, ...] = (GLOBAL_SEGMENT, "seg_learn_mobile_new")
"""Segments of every tiny bundle: the global segment and one learning segment."""


def make_tiny_bundle(
    out_dir: str | Path,
    version: str | None = None,
    n_items: int = 20,
    *,
    surfaces: Sequence[str] = ("homepage.hero",),
    seed: int = 0,
    policy_version: str = "2025-10-01",
    parent_version: str | None = None,
    content: Mapping[str, Sequence] | None = None,
    cold_start: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Write a small valid bundle into `out_dir/<version>` and return its directory.

    Content items are `c000`, `c001`, ...; embeddings are seeded random unit vectors. Every surface
    gets a `seg_global` cell over all items and a `seg_learn_mobile_new` cell over the even items.
    `content` replaces whole content columns, one value per item, e.g.
    `content={"jurisdictions": [["EU"], [], ...]}`. `cold_start` replaces the cold-start rules (one mapping
    of cold_start.parquet columns per rule, absent ones null; default: mobile -> seg_learn_mobile_new at 0.6).
    Example: `make_tiny_bundle(tmp_path / "built", "v001")`.
    """
    rng = np.random.default_rng(seed)
    version = version or new_bundle_version()
    ids = [f"c{i:03d}" for i in range(n_items)]
    embeddings = rng.standard_normal((n_items, EMBEDDING_DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    published = datetime(2025, 9, 1, tzinfo=UTC)
    topics = ("tutorial", "analytics", "finance", "marketing")

    columns = {
        "id": ids,
        "title": [f"Item {i}" for i in range(n_items)],
        "url": [f"/content/{cid}" for cid in ids],
        "summary": [f"Summary of item {i}" for i in range(n_items)],
        "body": [f"Body of item {i}" for i in range(n_items)],
        "content_type": ["article"] * n_items,
        "topics": [[topics[i % len(topics)]] for i in range(n_items)],
        "personas": [["beginner"] for _ in range(n_items)],
        "industries": [["finance"] for _ in range(n_items)],
        "sentiment": [0.1] * n_items,
        "complexity": [8.0] * n_items,
        "published_at": [published + timedelta(days=i) for i in range(n_items)],
        "updated_at": [published + timedelta(days=i) for i in range(n_items)],
        "freshness_score": rng.uniform(0.3, 1.0, n_items).astype(np.float32),
        "quality_score": rng.uniform(0.3, 1.0, n_items).astype(np.float32),
        "embedding": list(embeddings),
        "jurisdictions": [["US", "EU"] for _ in range(n_items)],
        "policy_flags": [[] for _ in range(n_items)],
        "device_suitability": [["mobile", "desktop"] for _ in range(n_items)],
        "topic_cluster": [i % len(topics) for i in range(n_items)],
    }
    columns.update(content or {})
    segments = pa.table(
        {
            "segment_id": list(TINY_SEGMENTS),
            "name": ["Everyone", "Learning-focused Mobile Users (New)"],
            "intent": ["", "learn"],
            "features_json": ["{}", json.dumps({"intent": "learn", "device_class": "mobile"})],
        }
    )
    cells = [(surface, GLOBAL_SEGMENT, cid) for surface in surfaces for cid in ids]
    cells += [(surface, TINY_SEGMENTS[1], cid) for surface in surfaces for cid in ids[::2]]
    posteriors = pa.table(
        {
            "surface_id": [c[0] for c in cells],
            "segment_id": [c[1] for c in cells],
            "content_id": [c[2] for c in cells],
            "alpha": rng.uniform(1.0, 5.0, len(cells)),
            "beta": rng.uniform(1.0, 5.0, len(cells)),
            "propensity": [None] * len(cells),
            "impressions": pa.nulls(len(cells), pa.float64()),
            "clicks": pa.nulls(len(cells), pa.float64()),
        }
    )
    user_segments = pa.table(
        {
            "user_id": ["anon_abc123"],
            "segment_id": [TINY_SEGMENTS[1]],
            "confidence": [0.85],
            "assigned_at": [published],
        }
    )
    rules = (
        cold_start
        if cold_start is not None
        else [{"device": "mobile", "segment_id": TINY_SEGMENTS[1], "confidence": 0.6}]
    )
    write_bundle(
        out_dir,
        {
            CONTENT: pa.table(columns),
            SEGMENTS: segments,
            POSTERIORS: posteriors,
            USER_SEGMENTS: user_segments,
            COLD_START: pa.Table.from_pylist(list(rules), schema=SCHEMAS[COLD_START]),
        },
        bundle_version=version,
        policy_version=policy_version,
        parent_version=parent_version,
    )
    return Path(out_dir) / version


def make_tiny_bundles(out_dir: str | Path, versions: Sequence[str]) -> Path:
    """Write one tiny bundle per version into `out_dir` (the i-th seeded with i) and return `out_dir`."""
    for seed, version in enumerate(versions):
        make_tiny_bundle(out_dir, version, seed=seed)
    return Path(out_dir)


def corrupt_file(path: str | Path) -> None:
    """Flip every bit of the byte in the middle of a file, keeping its size (what bit rot looks like)."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

"""Verifies a bundle directory and loads it into the immutable in-memory form the edge serves from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import hnswlib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aura.bundle.format import (
    COLD_START,
    COLD_START_CONTEXT,
    COLD_START_KEYS,
    CONTENT,
    EMBEDDING_DIM,
    GLOBAL_SEGMENT,
    INDEX,
    INDEX_IDS,
    POSTERIORS,
    REQUIRED_FILES,
    SCHEMAS,
    SEGMENTS,
    USER_SEGMENTS,
    Manifest,
    file_schema,
)
from aura.bundle.hnsw_file import check_hnsw_file
from aura.bundle.writer import sha256_file
from aura.errors import BundleError
from aura.timeformat import parse_rfc3339


@dataclass(frozen=True)
class ContentTable:
    """Columns of the content table as arrays and tuples, indexed by content row."""

    ids: tuple[str, ...]
    index_of: dict[str, int]
    titles: tuple[str, ...]
    urls: tuple[str, ...]
    content_types: tuple[str, ...]
    topics: tuple[tuple[str, ...], ...]
    personas: tuple[tuple[str, ...], ...]
    industries: tuple[tuple[str, ...], ...]
    jurisdictions: tuple[tuple[str, ...], ...]
    policy_flags: tuple[tuple[str, ...], ...]
    device_suitability: tuple[tuple[str, ...], ...]
    published_at: np.ndarray
    """Publication time, seconds since the epoch (float64)."""
    freshness_score: np.ndarray
    quality_score: np.ndarray
    topic_cluster: np.ndarray
    embeddings: np.ndarray
    """Unit-normalized embeddings, float32, shape (n, 384)."""

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of the bundle's catalogue."""

    id: str
    name: str
    intent: str
    features: dict[str, str]


@dataclass(frozen=True)
class Assignment:
    """A precomputed visitor-to-segment assignment."""

    segment_id: str
    confidence: float
    assigned_at: str


@dataclass(frozen=True)
class CellSpan:
    """Where one surface x segment cell's rows sit in the flat posterior arrays."""

    start: int
    stop: int


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle in memory. Immutable: online learning lives in a separate posterior state."""

    path: Path
    manifest: Manifest
    content: ContentTable
    segments: dict[str, SegmentInfo]
    surfaces: tuple[str, ...]
    cells: dict[tuple[str, str], CellSpan]
    cell_items: np.ndarray
    """Content row of every posterior row (int32), sorted by row within each cell."""
    alpha: np.ndarray
    beta: np.ndarray
    propensity: np.ndarray
    assignments: dict[str, Assignment]
    cold_start: dict[tuple[str | None, ...], tuple[str, float]]
    """Rule key (values of COLD_START_KEYS, then of `cold_start_context_keys`; None: any) -> (segment, confidence)."""
    cold_start_patterns: tuple[tuple[bool, ...], ...]
    """Which cold-start keys each rule pattern uses, most specific first."""
    cold_start_context_keys: tuple[str, ...]
    """The custom request context keys some cold-start rule requires, sorted; empty for most bundles."""
    index: hnswlib.Index

    @property
    def version(self) -> str:
        """The bundle version."""
        return self.manifest.bundle_version

    @property
    def created_at(self) -> datetime:
        """When the batch built the bundle."""
        return parse_rfc3339(self.manifest.created_at)


def match_cold_start(bundle: LoadedBundle, values: tuple[str, ...]) -> tuple[str, float] | None:
    """The (segment, confidence) of the most specific cold-start rule matching `values`, or None.

    `values` follow COLD_START_KEYS, then the bundle's `cold_start_context_keys` (the request's value of each,
    "" when absent); an empty value matches only rules that leave that key open.
    """
    for pattern in bundle.cold_start_patterns:
        if any(used and not value for value, used in zip(values, pattern, strict=True)):
            continue
        match = bundle.cold_start.get(tuple(v if used else None for v, used in zip(values, pattern, strict=True)))
        if match is not None:
            return match
    return None


def verify_bundle(bundle_dir: str | Path) -> Manifest:
    """Check manifest, file presence, checksums and the index's structure; return the manifest or raise BundleError.

    The index check guards hnswlib, which crashes the process on a malformed file instead of raising.
    """
    bundle_dir = Path(bundle_dir)
    manifest = Manifest.read(bundle_dir)
    name = manifest.bundle_version
    if bundle_dir.name != name:
        raise BundleError(f"bundle directory {bundle_dir.name} holds manifest version {name}.")
    if manifest.embedding_dim != EMBEDDING_DIM:
        raise BundleError(f"bundle {name}: embedding_dim {manifest.embedding_dim} is not {EMBEDDING_DIM}.")
    for file_name in REQUIRED_FILES:
        entry = manifest.files.get(file_name)
        if entry is None:
            raise BundleError(f"bundle {name}: the manifest lists no {file_name}.")
        path = bundle_dir / file_name
        if not path.is_file():
            raise BundleError(f"bundle {name}: {file_name} is missing.")
        if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
            raise BundleError(f"bundle {name}: {file_name} does not match its checksum; the bundle is corrupt.")
    check_hnsw_file(bundle_dir / INDEX, name, dim=EMBEDDING_DIM, count=manifest.files[INDEX_IDS].rows)
    return manifest


def load_bundle(bundle_dir: str | Path) -> LoadedBundle:
    """Verify and load a bundle; every array the hot path reads is built here, once."""
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir)
    name = manifest.bundle_version
    tables = {file_name: _read_table(bundle_dir, manifest, file_name) for file_name in SCHEMAS}

    content = _content_table(name, tables[CONTENT])
    ids = tables[INDEX_IDS].column("content_id").to_pylist()
    labels = tables[INDEX_IDS].column("label").to_numpy()
    if ids != list(content.ids) or not np.array_equal(labels, np.arange(len(ids))):
        raise BundleError(f"bundle {name}: {INDEX_IDS} does not map labels to content rows in order.")

    segments = _segments(name, tables[SEGMENTS])
    surfaces, cells, cell_items, alpha, beta, propensity = _posteriors(name, tables[POSTERIORS], content, segments)
    assignments = _assignments(name, tables[USER_SEGMENTS], segments)
    cold_start, patterns, context_keys = _cold_start(name, tables[COLD_START], segments)

    # verify_bundle checked the index's structure and that it holds one element per id map row, so per content row.
    index = hnswlib.Index(space="cosine", dim=EMBEDDING_DIM)
    try:
        index.load_index(str(bundle_dir / INDEX), max_elements=max(1, len(content)))
    except RuntimeError as exc:
        raise BundleError(f"bundle {name}: {INDEX} cannot be read: {exc}.") from None
    index.set_ef(64)

    return LoadedBundle(
        path=bundle_dir,
        manifest=manifest,
        content=content,
        segments=segments,
        surfaces=surfaces,
        cells=cells,
        cell_items=cell_items,
        alpha=alpha,
        beta=beta,
        propensity=propensity,
        assignments=assignments,
        cold_start=cold_start,
        cold_start_patterns=patterns,
        cold_start_context_keys=context_keys,
        index=index,
    )


def _read_table(bundle_dir: Path, manifest: Manifest, file_name: str) -> pa.Table:
    name = manifest.bundle_version
    try:
        table = pq.read_table(bundle_dir / file_name)
    except (OSError, pa.ArrowException) as exc:
        raise BundleError(f"bundle {name}: {file_name} is not readable Parquet: {exc}.") from None
    expected = file_schema(file_name, manifest.format_version)
    if not table.schema.remove_metadata().equals(expected, check_metadata=False):
        got = {f.name: str(f.type) for f in table.schema}
        want = {f.name: str(f.type) for f in expected}
        raise BundleError(f"bundle {name}: {file_name} has schema {got}, expected {want}.")
    if table.num_rows != manifest.files[file_name].rows:
        raise BundleError(
            f"bundle {name}: {file_name} has {table.num_rows} rows, the manifest says {manifest.files[file_name].rows}."
        )
    return table


def _tuples(table: pa.Table, column: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(v or ()) for v in table.column(column).to_pylist())


def _content_table(name: str, table: pa.Table) -> ContentTable:
    ids = tuple(table.column("id").to_pylist())
    index_of = {cid: i for i, cid in enumerate(ids)}
    if len(index_of) != len(ids):
        raise BundleError(f"bundle {name}: content ids are not unique.")
    embeddings = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(len(ids), EMBEDDING_DIM)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if len(ids) and (not np.all(np.isfinite(embeddings)) or np.any(norms == 0)):
        raise BundleError(f"bundle {name}: content embeddings must be finite and non-zero.")
    published = table.column("published_at").cast(pa.int64()).to_numpy().astype(np.float64) / 1000.0
    return ContentTable(
        ids=ids,
        index_of=index_of,
        titles=tuple(table.column("title").to_pylist()),
        urls=tuple(table.column("url").to_pylist()),
        content_types=tuple(table.column("content_type").to_pylist()),
        topics=_tuples(table, "topics"),
        personas=_tuples(table, "personas"),
        industries=_tuples(table, "industries"),
        jurisdictions=_tuples(table, "jurisdictions"),
        policy_flags=_tuples(table, "policy_flags"),
        device_suitability=_tuples(table, "device_suitability"),
        published_at=published,
        freshness_score=table.column("freshness_score").fill_null(0.0).to_numpy().astype(np.float32),
        quality_score=table.column("quality_score").fill_null(0.0).to_numpy().astype(np.float32),
        topic_cluster=table.column("topic_cluster").to_numpy().astype(np.int32),
        embeddings=embeddings / np.where(norms == 0, 1, norms),
    )


def _segments(name: str, table: pa.Table) -> dict[str, SegmentInfo]:
    segments = {}
    for row in table.to_pylist():
        try:
            features = json.loads(row["features_json"] or "{}")
        except ValueError:
            raise BundleError(f"bundle {name}: segment {row['segment_id']} has invalid features_json.") from None
        segments[row["segment_id"]] = SegmentInfo(
            id=row["segment_id"],
            name=row["name"],
            intent=row["intent"] or "",
            features={k: str(v) for k, v in features.items()},
        )
    if GLOBAL_SEGMENT not in segments:
        raise BundleError(f"bundle {name}: the segment catalogue lacks {GLOBAL_SEGMENT}.")
    return segments


def _posteriors(name: str, table: pa.Table, content: ContentTable, segments: dict[str, SegmentInfo]):
    """The posterior rows ordered by cell (surface, segment) and content row, and each cell's span.

    Vectorized: a bundle has hundreds of thousands of rows, and a load runs beside the requests of a
    serving process, which wait for the GIL while Python code or one long conversion holds it.
    """
    n = table.num_rows
    unknown_segments = set(pc.unique(table["segment_id"]).to_pylist()) - set(segments)
    if unknown_segments:
        raise BundleError(f"bundle {name}: posteriors name unknown segment {sorted(unknown_segments)[0]}.")
    items = pc.index_in(table["content_id"], value_set=pa.array(content.ids, pa.string()))
    if items.null_count:
        unknown = table["content_id"].filter(pc.is_null(items))[0].as_py()
        raise BundleError(f"bundle {name}: posteriors name unknown content {unknown}.")
    alpha, beta, propensity = (
        np.asarray(table[column].to_numpy(), dtype=np.float64) for column in ("alpha", "beta", "propensity")
    )  # a missing propensity becomes NaN
    if n and not (np.all(np.isfinite(alpha)) and np.all(np.isfinite(beta)) and alpha.min() > 0 and beta.min() > 0):
        raise BundleError(f"bundle {name}: posterior alpha and beta must be finite and positive.")

    surface_ids, surface_codes = _sorted_codes(table["surface_id"])
    segment_ids, segment_codes = _sorted_codes(table["segment_id"])
    items = np.asarray(items.to_numpy(), dtype=np.int32)
    order = np.lexsort((items, segment_codes, surface_codes))
    items, alpha, beta, propensity = items[order], alpha[order], beta[order], propensity[order]
    surface_codes, segment_codes = surface_codes[order], segment_codes[order]
    new_cell = (np.diff(surface_codes) != 0) | (np.diff(segment_codes) != 0)
    repeated = np.flatnonzero((np.diff(items) == 0) & ~new_cell)
    if repeated.size:
        key = (surface_ids[surface_codes[repeated[0]]], segment_ids[segment_codes[repeated[0]]])
        raise BundleError(f"bundle {name}: cell {key} lists a content item twice.")
    boundaries = np.flatnonzero(new_cell) + 1
    starts = np.concatenate(([0], boundaries)) if n else boundaries
    stops = np.concatenate((boundaries, [n])) if n else boundaries
    cells = {
        (surface_ids[surface_codes[start]], segment_ids[segment_codes[start]]): CellSpan(start, stop)
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True)
    }
    surfaces = tuple(sorted({s for s, _ in cells}))
    for surface in surfaces:
        if (surface, GLOBAL_SEGMENT) not in cells:
            raise BundleError(f"bundle {name}: surface {surface} has no {GLOBAL_SEGMENT} cell.")
    return surfaces, cells, items, alpha, beta, propensity


def _sorted_codes(column: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """The distinct values of a string column in sorted order, and each row's position among them."""
    values = sorted(pc.unique(column).to_pylist())
    return values, pc.index_in(column, value_set=pa.array(values, pa.string())).to_numpy()


def _assignments(name: str, table: pa.Table, segments: dict[str, SegmentInfo]) -> dict[str, Assignment]:
    rows = table.to_pydict()
    stamps = [t.isoformat(timespec="seconds").replace("+00:00", "Z") if t else "" for t in rows["assigned_at"]]
    result = {}
    for user, segment, confidence, stamp in zip(
        rows["user_id"], rows["segment_id"], rows["confidence"], stamps, strict=True
    ):
        if segment not in segments:
            raise BundleError(f"bundle {name}: user {user} is assigned to unknown segment {segment}.")
        result[user] = Assignment(segment, round(float(confidence), 6), stamp)
    return result


def _cold_start(
    name: str, table: pa.Table, segments: dict[str, SegmentInfo]
) -> tuple[dict[tuple[str | None, ...], tuple[str, float]], tuple[tuple[bool, ...], ...], tuple[str, ...]]:
    """The rules by key, their patterns (most specific first) and the custom context keys they use."""
    rows = table.to_pylist()
    required = [_required_context(name, row.get(COLD_START_CONTEXT)) for row in rows]
    context_keys = tuple(sorted({key for values in required for key in values}))
    rules: dict[tuple[str | None, ...], tuple[str, float]] = {}
    patterns: set[tuple[bool, ...]] = set()
    for row, values in zip(rows, required, strict=True):
        if row["segment_id"] not in segments:
            raise BundleError(f"bundle {name}: a cold-start rule names unknown segment {row['segment_id']}.")
        key = tuple(row[k] for k in COLD_START_KEYS) + tuple(values.get(k) for k in context_keys)
        rules[key] = (row["segment_id"], round(float(row["confidence"]), 6))
        patterns.add(tuple(v is not None for v in key))
    ordered = tuple(sorted(patterns, key=lambda p: (-sum(p), p)))
    return rules, ordered, context_keys


def _required_context(name: str, text: str | None) -> dict[str, str]:
    """A cold-start rule's `context_json`: custom context key -> the non-empty value it requires."""
    try:
        required = json.loads(text) if text is not None else {}
    except ValueError:
        required = None
    if not isinstance(required, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in required.items()
    ):
        raise BundleError(
            f"bundle {name}: a cold-start rule's {COLD_START_CONTEXT} {text!r} is not a JSON object of "
            "non-empty strings."
        )
    return required

"""The artifact bundle format: file names, Arrow schemas and the manifest (see docs/bundle.md)."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, get_args, get_origin, get_type_hints

import pyarrow as pa

from aura.errors import BundleError
from aura.timeformat import parse_rfc3339

FORMAT_VERSION = 2
"""The format this build writes. Format 1 lacks cold_start.parquet's `context_json` (read as null)."""
READABLE_FORMATS: tuple[int, ...] = (1, 2)
EMBEDDING_DIM = 384
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
GLOBAL_SEGMENT = "seg_global"

MANIFEST = "manifest.json"
CONTENT = "content.parquet"
SEGMENTS = "segments.parquet"
POSTERIORS = "posteriors.parquet"
USER_SEGMENTS = "user_segments.parquet"
COLD_START = "cold_start.parquet"
INDEX = "content_index.hnsw"
INDEX_IDS = "content_index_ids.parquet"

_STRINGS = pa.list_(pa.string())
_TIME = pa.timestamp("ms", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    CONTENT: pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("title", pa.string(), nullable=False),
            pa.field("url", pa.string(), nullable=False),
            pa.field("summary", pa.string()),
            pa.field("body", pa.string()),
            pa.field("content_type", pa.string(), nullable=False),
            pa.field("topics", _STRINGS),
            pa.field("personas", _STRINGS),
            pa.field("industries", _STRINGS),
            pa.field("sentiment", pa.float32()),
            pa.field("complexity", pa.float32()),
            pa.field("published_at", _TIME, nullable=False),
            pa.field("updated_at", _TIME),
            pa.field("freshness_score", pa.float32()),
            pa.field("quality_score", pa.float32()),
            pa.field("embedding", pa.list_(pa.float32(), EMBEDDING_DIM), nullable=False),
            pa.field("jurisdictions", _STRINGS),
            pa.field("policy_flags", _STRINGS),
            pa.field("device_suitability", _STRINGS),
            pa.field("topic_cluster", pa.int32(), nullable=False),
        ]
    ),
    SEGMENTS: pa.schema(
        [
            pa.field("segment_id", pa.string(), nullable=False),
            pa.field("name", pa.string(), nullable=False),
            pa.field("intent", pa.string()),
            pa.field("features_json", pa.string()),
        ]
    ),
    POSTERIORS: pa.schema(
        [
            pa.field("surface_id", pa.string(), nullable=False),
            pa.field("segment_id", pa.string(), nullable=False),
            pa.field("content_id", pa.string(), nullable=False),
            pa.field("alpha", pa.float64(), nullable=False),
            pa.field("beta", pa.float64(), nullable=False),
            pa.field("propensity", pa.float32()),
            pa.field("impressions", pa.float64()),
            pa.field("clicks", pa.float64()),
        ]
    ),
    USER_SEGMENTS: pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("segment_id", pa.string(), nullable=False),
            pa.field("confidence", pa.float32(), nullable=False),
            pa.field("assigned_at", _TIME),
        ]
    ),
    COLD_START: pa.schema(
        [
            pa.field("device", pa.string()),
            pa.field("referrer_class", pa.string()),
            pa.field("page_type", pa.string()),
            pa.field("country", pa.string()),
            pa.field("time_of_day", pa.string()),
            pa.field("campaign", pa.string()),
            pa.field("context_json", pa.string()),
            pa.field("segment_id", pa.string(), nullable=False),
            pa.field("confidence", pa.float32(), nullable=False),
        ]
    ),
    INDEX_IDS: pa.schema(
        [
            pa.field("label", pa.int64(), nullable=False),
            pa.field("content_id", pa.string(), nullable=False),
        ]
    ),
}

COLD_START_KEYS: tuple[str, ...] = ("device", "referrer_class", "page_type", "country", "time_of_day", "campaign")
"""Request dimensions of the cold-start table, in the order the lookup key uses; null means any."""
COLD_START_CONTEXT = "context_json"
"""The cold-start column holding a rule's custom request context keys and the values it requires (a JSON
object of strings; null: none), looked up after COLD_START_KEYS."""

REQUIRED_FILES: tuple[str, ...] = (*SCHEMAS, INDEX)


def file_schema(file_name: str, format_version: int) -> pa.Schema:
    """The schema of a bundle file in a readable format (`SCHEMAS` is that of FORMAT_VERSION)."""
    schema = SCHEMAS[file_name]
    if file_name == COLD_START and format_version == 1:
        return schema.remove(schema.get_field_index(COLD_START_CONTEXT))
    return schema


@dataclass(frozen=True)
class FileEntry:
    """Checksum and size of one bundle file."""

    sha256: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """`manifest.json`: what a bundle is, where it came from and how to verify it."""

    bundle_version: str
    created_at: str
    policy_version: str
    parent_version: str | None
    files: dict[str, FileEntry]
    format_version: int = FORMAT_VERSION
    embedding_model: str = EMBEDDING_MODEL
    embedding_dim: int = EMBEDDING_DIM
    stats: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialize the manifest with sorted keys, as it is written to disk."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, bundle_dir: str | Path) -> Manifest:
        """Read `manifest.json` of a bundle directory and validate every field's type and format."""
        path = Path(bundle_dir) / MANIFEST
        where = f"bundle {Path(bundle_dir).name}: {MANIFEST}"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise BundleError(f"{where} is missing.") from None
        except (OSError, ValueError) as exc:
            raise BundleError(f"{where} is not valid JSON: {exc}.") from None
        if not isinstance(data, dict):
            raise BundleError(f"{where} must hold a JSON object.")
        version = data.get("format_version")
        if type(version) is not int or version not in READABLE_FORMATS:
            raise BundleError(
                f"{where}: format_version {version!r} is not supported; "
                f"this build reads formats {', '.join(map(str, READABLE_FORMATS))}."
            )
        _check_fields(cls, data, where)
        try:
            parse_rfc3339(data["created_at"])
        except ValueError:
            raise BundleError(
                f"{where}: created_at must be an RFC 3339 date-time such as 2025-10-01T12:00:00Z, "
                f"got {data['created_at']!r}."
            ) from None
        files = {}
        for file_name, entry in data["files"].items():
            entry_where = f"{where}: files entry {file_name!r}"
            if not isinstance(entry, dict):
                raise BundleError(f"{entry_where} must be a JSON object, got {entry!r}.")
            _check_fields(FileEntry, entry, entry_where)
            if entry["rows"] < 0 or entry["bytes"] < 0:
                raise BundleError(f"{entry_where}: rows and bytes must not be negative.")
            files[file_name] = FileEntry(**entry)
        return cls(**{**data, "files": files})


_JSON_TYPE_NAMES: dict[type, str] = {str: "a string", int: "an integer", dict: "a JSON object", NoneType: "null"}


def _check_fields(cls: type, data: dict[str, Any], where: str) -> None:
    """Refuse JSON fields that the dataclass `cls` lacks, misses without a default or types otherwise.

    A field's annotation gives the JSON types it accepts (`str | None`: a string or null); a bool is not an int.
    """
    hints = get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise BundleError(f"{where} has an unknown field {unknown[0]!r}.")
    for spec in fields(cls):
        if spec.name not in data and spec.default is MISSING and spec.default_factory is MISSING:
            raise BundleError(f"{where} lacks the field {spec.name!r}.")
    for name, value in data.items():
        hint = hints[name]
        accepted = tuple(get_origin(arm) or arm for arm in (get_args(hint) if isinstance(hint, UnionType) else (hint,)))
        if isinstance(value, bool) or not isinstance(value, accepted):
            expected = " or ".join(_JSON_TYPE_NAMES[accepted_type] for accepted_type in accepted)
            raise BundleError(f"{where}: {name} must be {expected}, got {value!r}.")

"""Retention and erasure jobs over the bundle store's data (docs/events.md).

`apply_retention` deletes shipped log partitions older than EVENT_RETENTION_DAYS, feature partitions
older than FEATURE_RETENTION_DAYS and bundle versions beyond the newest MODEL_RETENTION_VERSIONS (never
the promoted one). `erase_user` erases one visitor (a GDPR/CCPA/DPDP request): it records the erasure
in the store (`erasures/<sha256>`, so the record itself holds no id), then rewrites every shipped log
segment that mentions the visitor without their rows: their decisions and SDK events, the feedback on
those decisions, and the visitor's id in erase_user admin events (replaced by `sha256:<digest>`).
A rewritten segment gets a new name (`<segment>.erased-<ns>.parquet`) and the old object is deleted
after the new one is stored, so no reader ever sees a half-written file, and download caches, which
compare names and sizes, drop the old copy. `erased_users` lists the erased visitors for the builder.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aura.bundle.store import LOGS, BundleStore, open_store, partition_start, utc_now
from aura.errors import InvalidRequest
from aura.pii import erasure_digests, scrub_id, user_digest

ERASURES = "erasures"
FEATURES = "features"
DIGEST_PREFIX = "sha256:"
_ERASED_SUFFIX = re.compile(r"\.erased-\d+$")


@dataclass(frozen=True)
class RetentionReport:
    """What `apply_retention` deleted."""

    log_files: int
    feature_files: int
    bundle_versions: list[str]


@dataclass
class ErasureReport:
    """What `erase_user` changed: rows removed per stream, segments rewritten and segments deleted (emptied)."""

    rows_removed: dict[str, int] = field(default_factory=dict)
    files_rewritten: int = 0
    files_deleted: int = 0


def _expired(keys: dict[str, int], cutoff: datetime) -> list[str]:
    """Keys whose whole partition (an hour with `hour=`, else a day) ended before `cutoff`."""
    expired = []
    for key in keys:
        start = partition_start(key)
        if start is not None:
            length = timedelta(hours=1) if "/hour=" in key else timedelta(days=1)
            if start + length <= cutoff:
                expired.append(key)
    return expired


def apply_retention(
    store: BundleStore,
    now: datetime | None = None,
    event_days: int = 395,
    feature_days: int = 90,
    model_versions: int = 5,
) -> RetentionReport:
    """Delete expired log and feature partitions and surplus bundle versions; return what went.

    A partition goes once all of it is older than `now` minus the retention; bundle versions are kept
    newest first up to `model_versions`, plus the promoted version wherever it is.
    """
    if event_days < 1 or feature_days < 1 or model_versions < 1:
        raise InvalidRequest("event_days, feature_days and model_versions must each be at least 1.")
    now = now or datetime.now(UTC)
    logs = _expired(store.list_objects(f"{LOGS}/"), now - timedelta(days=event_days))
    features = _expired(store.list_objects(f"{FEATURES}/"), now - timedelta(days=feature_days))
    store.delete_objects(logs)
    store.delete_objects(features)
    versions = store.list_versions()
    keep = set(versions[-model_versions:]) | {store.current()}
    dropped = [v for v in versions if v not in keep]
    for version in dropped:
        store.delete(version)
    return RetentionReport(log_files=len(logs), feature_files=len(features), bundle_versions=dropped)


def erased_users(source: BundleStore | str | Path) -> set[str]:
    """The SHA-256 digests (`aura.pii.user_digest`) of every erased visitor id, in each form logs hold it.

    From a store: its erasure records plus the erase_user events of its admin logs (erasures requested
    at an edge node that no job has applied yet). From a local logs root: the erase_user events there.
    """
    digests: set[str] = set()
    if isinstance(source, BundleStore):
        digests.update(key.rpartition("/")[2] for key in source.list_objects(f"{ERASURES}/"))
        with tempfile.TemporaryDirectory(prefix="aura-admin-") as tmp:
            digests |= _admin_erasures(source.download_logs("admin", tmp))
    else:
        digests |= _admin_erasures(sorted((Path(source) / "admin").glob("date=*/hour=*/[!.]*.parquet")))
    return digests


def _admin_erasures(files: list[Path]) -> set[str]:
    digests: set[str] = set()
    for path in files:
        table = pq.read_table(path, columns=["action", "subject"])
        for row in table.filter(pc.equal(table["action"], "erase_user")).to_pylist():
            subject = row["subject"] or ""
            if subject.startswith(DIGEST_PREFIX):
                digests.add(subject.removeprefix(DIGEST_PREFIX))
            elif subject:
                digests |= erasure_digests(subject)
    return digests


def erase_user(store: BundleStore, user_id: str) -> ErasureReport:
    """Erase a visitor from the store's logs and record the erasure; safe to run again (see the module doc)."""
    if not user_id:
        raise InvalidRequest("user_id must not be empty.")
    forms = pa.array(sorted({user_id, scrub_id(user_id)}), pa.string())
    record = json.dumps({"erased_at": utc_now()}).encode()
    for digest in sorted(erasure_digests(user_id)):
        store.write_object(f"{ERASURES}/{digest}", record)
    digest = pa.scalar(DIGEST_PREFIX + user_digest(user_id))

    def hash_subject(table: pa.Table) -> pa.Table:
        subject = pc.if_else(_matches(table, "subject", forms), digest, table["subject"])
        return table.set_column(table.schema.get_field_index("subject"), "subject", subject)

    report = ErasureReport()
    with tempfile.TemporaryDirectory(prefix="aura-erase-") as tmp:
        mirror = {stream: store.download_logs(stream, tmp) for stream in ("decisions", "feedback", "events", "admin")}
        # The feedback on the visitor's decisions goes first: were the job interrupted after the decisions
        # were rewritten, a rerun could no longer tell which feedback was theirs.
        request_ids: list[str] = []
        for path in mirror["decisions"]:
            table = pq.read_table(path, columns=["anon_id", "event_id"])
            request_ids += table.filter(_matches(table, "anon_id", forms))["event_id"].to_pylist()
        requests = pa.array(sorted(set(request_ids)), pa.string())
        _rewrite(store, Path(tmp), mirror["feedback"], "request_id", requests, None, report)
        _rewrite(store, Path(tmp), mirror["events"], "anon_id", forms, None, report)
        _rewrite(store, Path(tmp), mirror["decisions"], "anon_id", forms, None, report)
        _rewrite(store, Path(tmp), mirror["admin"], "subject", forms, hash_subject, report)
    return report


def _matches(table: pa.Table, column: str, values: pa.Array) -> pa.ChunkedArray:
    return pc.fill_null(pc.is_in(table[column], values), False)


def _rewrite(
    store: BundleStore,
    mirror: Path,
    paths: list[Path],
    column: str,
    values: pa.Array,
    change: Callable[[pa.Table], pa.Table] | None,
    report: ErasureReport,
) -> None:
    """Replace each mirrored segment whose `column` holds one of `values` by `change` of it (default: without
    those rows), under a new name; a segment left empty is deleted."""
    for path in paths:
        if len(values) == 0 or not pc.any(_matches(pq.read_table(path, columns=[column]), column, values)).as_py():
            continue
        table = pq.read_table(path)
        changed = change(table) if change else table.filter(pc.invert(_matches(table, column, values)))
        relative = path.relative_to(mirror).as_posix()
        stream, _, partition_file = relative.partition("/")
        report.rows_removed[stream] = report.rows_removed.get(stream, 0) + table.num_rows - changed.num_rows
        if changed.num_rows:
            folder, _, name = partition_file.rpartition("/")
            stem = _ERASED_SUFFIX.sub("", name.removesuffix(".parquet"))
            pq.write_table(changed, path, compression="zstd")
            store.put_log(stream, f"{folder}/{stem}.erased-{time.time_ns()}.parquet", path)
            report.files_rewritten += 1
        else:
            report.files_deleted += 1
        store.delete_objects([f"{LOGS}/{relative}"])


def retention_command(args: argparse.Namespace) -> None:
    """`aura retention`: apply the retention periods to a store and print what was deleted."""
    store = open_store(args.store, args.s3_endpoint_url)
    report = apply_retention(
        store, event_days=args.event_days, feature_days=args.feature_days, model_versions=args.model_versions
    )
    print(
        f"retention on {store.url}: deleted {report.log_files} log segment(s), {report.feature_files} feature "
        f"file(s) and {len(report.bundle_versions)} bundle version(s){': ' if report.bundle_versions else ''}"
        f"{', '.join(report.bundle_versions)}"
    )


def erase_user_command(args: argparse.Namespace) -> None:
    """`aura erase-user`: erase one visitor's history from a store and print what changed."""
    store = open_store(args.store, args.s3_endpoint_url)
    report = erase_user(store, args.user_id)
    rows = ", ".join(f"{n} {stream}" for stream, n in sorted(report.rows_removed.items())) or "none"
    print(
        f"erased visitor from {store.url}: rows removed: {rows}; {report.files_rewritten} segment(s) rewritten, "
        f"{report.files_deleted} deleted; the erasure is recorded for future builds"
    )

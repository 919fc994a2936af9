"""Turns the event logs edge nodes shipped into the interaction table the bundle builder learns from.

The logs are read as Hive-partitioned Parquet (`<stream>/date=YYYY-MM-DD/hour=HH/*.parquet`) from a local
directory, a local store in place, or any other store (S3) through a download cache; DuckDB then
dedupes every stream by `event_id`, drops erased visitors, joins feedback and SDK clicks to the
decisions by `request_id` and item, and yields one row per shown item (an impression, with its reward)
plus one row per click. SDK impressions and clicks that belong to no logged decision are kept as rows
of source `sdk`. PII is scrubbed once more before the table is returned (defence in depth: the gateway
and the log shipper scrub already). The schema is `INTERACTION_SCHEMA`, documented in docs/events.md.

    >>> table = load_interactions(open_store("s3://aura/prod"), since=datetime(2026, 1, 1, tzinfo=UTC))
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aura.batch.retention import erased_users
from aura.bundle.store import BundleStore, LocalBundleStore, open_store, partition_start
from aura.eventlog import SCHEMAS
from aura.pii import STREAM_PII_COLUMNS, Kind, scrub_column

STREAMS = ("decisions", "feedback", "events", "admin")
FEEDBACK_WINDOW = timedelta(days=30)
"""How long after a decision the edge accepts feedback for it (its FEEDBACK_WINDOW_SECONDS)."""

_TIME = pa.timestamp("ms", tz="UTC")
INTERACTION_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string()),
        pa.field("ts", _TIME),
        pa.field("type", pa.string()),
        pa.field("source", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("anon_id", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("surface_id", pa.string()),
        pa.field("segment_id", pa.string()),
        pa.field("segment_source", pa.string()),
        pa.field("bundle_version", pa.string()),
        pa.field("content_id", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("propensity", pa.float64()),
        pa.field("explored", pa.bool_()),
        pa.field("reward", pa.float64()),
        pa.field("device", pa.string()),
        pa.field("referrer", pa.string()),
        pa.field("page_type", pa.string()),
        pa.field("country", pa.string()),
        pa.field("time_of_day", pa.string()),
        pa.field("campaign", pa.string()),
        pa.field("context_json", pa.string()),
    ]
)
"""One row per impression or click; a superset of the builder's EVENT_COLUMNS (docs/events.md)."""

_COLUMNS: dict[str, str] = {
    "decisions": "event_id, ts, bundle_version, surface_id, segment_id, segment_source, anon_id, session_id, device, "
    "referrer_host, page_type, country, context_json, items",
    "feedback": "event_id, ts, reward_ts, request_id, item_id, reward_type, reward_value",
    "events": "event_id, ts, type, anon_id, session_id, surface_id, content_id, request_id, referrer",
    "admin": "event_id, ts, action, subject",
}

_DEDUPE_SQL = """
CREATE TEMP TABLE decisions AS
SELECT * EXCLUDE (n) FROM (
    SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY ts) AS n FROM raw_decisions
    WHERE ($since::TIMESTAMPTZ IS NULL OR ts >= $since) AND ($until::TIMESTAMPTZ IS NULL OR ts < $until)
) WHERE n = 1 AND (coalesce(anon_id, '') = '' OR sha256(anon_id) NOT IN (SELECT digest FROM erased));

CREATE TEMP TABLE sdk AS
SELECT * EXCLUDE (n) FROM (
    SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY ts) AS n FROM raw_events
    WHERE type IN ('impression', 'click')
) WHERE n = 1 AND (coalesce(anon_id, '') = '' OR sha256(anon_id) NOT IN (SELECT digest FROM erased))
"""

_JOIN_SQL = """
CREATE TEMP TABLE shown AS
SELECT request_id, ts, bundle_version, surface_id, segment_id, segment_source, anon_id, session_id, device,
       referrer, page_type, country, json_extract_string(context, '$.time_of_day') AS time_of_day,
       json_extract_string(context, '$.campaign') AS campaign, context AS context_json,
       it.content_id, it.position, it.propensity, it.explored
FROM (
    SELECT event_id AS request_id, ts, bundle_version, surface_id, segment_id, segment_source,
           nullif(anon_id, '') AS anon_id, nullif(session_id, '') AS session_id, device,
           nullif(referrer_host, '') AS referrer, nullif(page_type, '') AS page_type, nullif(country, '') AS country,
           CASE WHEN json_valid(context_json) THEN context_json END AS context, unnest(items) AS it
    FROM decisions
);

-- A click is a positive click feedback or an SDK click naming the decision; several count once.
CREATE TEMP TABLE clicks AS
SELECT request_id, content_id, min(ts) AS ts, max(reward) AS reward FROM (
    SELECT request_id, item_id AS content_id, coalesce(reward_ts, ts) AS ts, reward_value AS reward
    FROM (SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY ts) AS n FROM raw_feedback)
    WHERE n = 1 AND reward_type = 'click' AND reward_value > 0
    UNION ALL
    SELECT request_id, content_id, ts, 1.0 FROM sdk WHERE type = 'click' AND coalesce(request_id, '') <> ''
) GROUP BY request_id, content_id;

SELECT * FROM (
    SELECT s.request_id || ':' || s.position AS event_id, s.ts, 'impression' AS type, 'edge' AS source,
           s.request_id, s.anon_id, s.session_id, s.surface_id, s.segment_id, s.segment_source, s.bundle_version,
           s.content_id, s.position, s.propensity, s.explored, coalesce(c.reward, 0.0) AS reward,
           s.device, s.referrer, s.page_type, s.country, s.time_of_day, s.campaign, s.context_json
    FROM shown s LEFT JOIN clicks c USING (request_id, content_id)
    UNION ALL
    SELECT s.request_id || ':' || s.position || ':click', c.ts, 'click', 'edge',
           s.request_id, s.anon_id, s.session_id, s.surface_id, s.segment_id, s.segment_source, s.bundle_version,
           s.content_id, s.position, s.propensity, s.explored, c.reward,
           s.device, s.referrer, s.page_type, s.country, s.time_of_day, s.campaign, s.context_json
    FROM shown s JOIN clicks c USING (request_id, content_id)
    UNION ALL
    SELECT e.event_id, e.ts, e.type, 'sdk', nullif(e.request_id, ''), nullif(e.anon_id, ''),
           nullif(e.session_id, ''), e.surface_id, NULL, NULL, NULL, e.content_id, NULL, NULL, NULL,
           CASE WHEN e.type = 'click' THEN 1.0 ELSE 0.0 END, NULL, nullif(e.referrer, ''), NULL, NULL, NULL, NULL,
           NULL
    FROM sdk e
    WHERE coalesce(e.request_id, '') NOT IN (SELECT event_id FROM decisions)
      AND ($since::TIMESTAMPTZ IS NULL OR e.ts >= $since) AND ($until::TIMESTAMPTZ IS NULL OR e.ts < $until)
)
ORDER BY ts, event_id
"""


def segment_files(logs_root: str | Path, stream: str, since: datetime | None, until: datetime | None) -> list[Path]:
    """The closed segments of a stream whose hour partition overlaps [since, until) (None: unbounded)."""
    directory = Path(logs_root) / stream
    floor = since.replace(minute=0, second=0, microsecond=0) if since is not None else None
    files = []
    for path in sorted(directory.glob("date=*/hour=*/*.parquet")):
        start = partition_start(path.relative_to(directory).as_posix())
        if path.name.startswith(".") or start is None:
            continue
        if (floor is None or start >= floor) and (until is None or start < until):
            files.append(path)
    return files


@contextmanager
def local_logs(
    source: BundleStore | str | Path, since: datetime | None = None, cache_dir: str | Path | None = None
) -> Iterator[Path]:
    """Yield a local logs root (`<stream>/date=.../hour=.../*.parquet`) holding the logs of `source`.

    A directory is used as is, a local store in place; other stores are mirrored into `cache_dir`
    (kept, and synced on the next call) or a temporary directory (removed afterwards). The admin stream
    is mirrored whole, the others from `since` on.
    """
    if isinstance(source, str | Path):
        yield Path(source)
    elif isinstance(source, LocalBundleStore):
        yield source.root / "logs"
    elif cache_dir is not None:
        _mirror(source, Path(cache_dir), since)
        yield Path(cache_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="aura-logs-") as tmp:
            _mirror(source, Path(tmp), since)
            yield Path(tmp)


def _mirror(store: BundleStore, dest: Path, since: datetime | None) -> None:
    for stream in STREAMS:
        store.download_logs(stream, dest, None if stream == "admin" else since)


def load_interactions(
    source: BundleStore | str | Path,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    cache_dir: str | Path | None = None,
) -> pa.Table:
    """Impressions and clicks of the decisions made in [since, until) (aware datetimes; None: unbounded).

    `source` is a bundle store (its `logs/` area) or a local logs root. Feedback is read up to
    FEEDBACK_WINDOW past `until`. Visitors erased (`aura.batch.retention.erased_users`, or erase_user
    events in a local root's admin stream) are left out. Returns a table of INTERACTION_SCHEMA, sorted by
    time, with PII scrubbed.
    """
    late = until + FEEDBACK_WINDOW if until is not None else None
    with local_logs(source, since, cache_dir) as root:
        erased = erased_users(source) if isinstance(source, BundleStore) else erased_users(root)
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            for stream, window in (("decisions", until), ("feedback", late), ("events", late)):
                _register_stream(con, f"raw_{stream}", stream, segment_files(root, stream, since, window))
            con.register("erased", pa.table({"digest": pa.array(sorted(erased), pa.string())}))
            for statement in _DEDUPE_SQL.split(";\n"):
                con.execute(statement, _params(statement, since, until))
            _scrub_in_place(con, "decisions", STREAM_PII_COLUMNS["decisions"])
            _scrub_in_place(con, "sdk", STREAM_PII_COLUMNS["events"])
            *setup, query = _JOIN_SQL.split(";\n")
            for statement in setup:
                con.execute(statement)
            table = con.sql(query, params=_params(query, since, until)).to_arrow_table()
        finally:
            con.close()
    return table.cast(INTERACTION_SCHEMA)


def _scrub_in_place(con: duckdb.DuckDBPyConnection, table: str, columns: Mapping[str, Kind]) -> None:
    """Scrub PII columns of a DuckDB table: each distinct value is scrubbed once, changed ones updated in SQL."""
    present = {row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()}
    for column, kind in columns.items():
        if column not in present:
            continue
        values = con.sql(f"SELECT DISTINCT {column} AS raw FROM {table} WHERE {column} IS NOT NULL").to_arrow_table()
        mapping = pa.table({"raw": values["raw"], "clean": scrub_column(values["raw"], kind)})
        con.register("scrubbed", mapping.filter(pc.not_equal(mapping["raw"], mapping["clean"])))
        con.execute(f"UPDATE {table} SET {column} = s.clean FROM scrubbed s WHERE {table}.{column} = s.raw")
        con.unregister("scrubbed")


def _params(statement: str, since: datetime | None, until: datetime | None) -> dict[str, datetime | None]:
    return {"since": since, "until": until} if "$since" in statement else {}


def _register_stream(con: duckdb.DuckDBPyConnection, name: str, stream: str, files: list[Path]) -> None:
    if files:
        relation = con.read_parquet([str(f) for f in files], hive_partitioning=True, union_by_name=True)
        relation.select(_COLUMNS[stream]).create_view(name)
    else:
        con.register(name, SCHEMAS[stream].empty_table().select([c.strip() for c in _COLUMNS[stream].split(",")]))


def export_command(args: argparse.Namespace) -> None:
    """`aura interactions`: write the interactions of the shipped logs as `<out>/events.parquet` (a site table)."""
    store = open_store(args.store, args.s3_endpoint_url)
    table = load_interactions(store, args.since, args.until, cache_dir=args.cache_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "events.parquet", compression="zstd")
    counts = table.group_by("type").aggregate([("event_id", "count")]).to_pylist()
    summary = ", ".join(f"{row['event_id_count']} {row['type']}s" for row in sorted(counts, key=lambda r: r["type"]))
    print(f"wrote {out / 'events.parquet'}: {table.num_rows} rows ({summary or 'no events'})")


def parse_time(value: str) -> datetime:
    """An argparse type: `YYYY-MM-DD` or an ISO 8601 time, as an aware UTC datetime."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD) or ISO 8601 time.") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

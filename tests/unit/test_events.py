"""Reading shipped logs into interactions: dedupe, the feedback join, SDK events, erasure and PII scrubbing."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aura.batch.events import INTERACTION_SCHEMA, export_command, load_interactions, parse_time, segment_files
from aura.bundle.store import LocalBundleStore
from aura.eventlog import SCHEMAS
from aura.pii import pseudonym

T0 = datetime(2026, 1, 10, 10, 0, tzinfo=UTC)
EMAIL_VISITOR = "jane@example.com"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def write_segment(root: Path, stream: str, name: str, rows: list[dict[str, Any]]) -> Path:
    """Write rows as a closed segment in the partition of the first row's time, as the edge does."""
    first = rows[0]["ts"]
    path = root / stream / f"date={first:%Y-%m-%d}" / f"hour={first:%H}" / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[stream]), path)
    return path


def decision(request_id: str, minutes: float, anon_id: str, items: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "event_id": request_id,
        "ts": at(minutes),
        "bundle_version": "v1",
        "surface_id": "homepage.hero",
        "segment_id": "seg_learn",
        "segment_source": "assignment",
        "anon_id": anon_id,
        "session_id": f"s-{anon_id}",
        "device": "mobile",
        "referrer_host": "www.google.com",
        "page_type": "index",
        "country": "US",
        "items": [
            {"content_id": c, "position": i + 1, "score": 0.5, "propensity": 0.5 / (i + 1), "explored": False}
            for i, c in enumerate(items)
        ],
        **extra,
    }


def feedback(event_id: str, minutes: float, request_id: str, item: str, kind: str = "click", value: float = 1.0):
    return {
        "event_id": event_id,
        "ts": at(minutes),
        "request_id": request_id,
        "item_id": item,
        "reward_type": kind,
        "reward_value": value,
    }


def sdk(event_id: str, minutes: float, kind: str, content: str, request_id: str = "", anon_id: str = "a3"):
    return {
        "event_id": event_id,
        "ts": at(minutes),
        "type": kind,
        "anon_id": anon_id,
        "surface_id": "blog.index",
        "content_id": content,
        "request_id": request_id,
        "referrer": "https://news.example.org/a?mail=jane@example.com",
    }


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    root = tmp_path / "logs"
    context = '{"campaign": "mail jane@example.com", "time_of_day": "evening", "order": 1234567890}'
    write_segment(
        root,
        "decisions",
        "n1-1-1-1",
        [
            decision("r1", 0, "a1", ["c1", "c2"], context_json=context),
            decision("r2", 5, "a2", ["c3"]),
            decision("r3", 6, EMAIL_VISITOR, ["c1"]),
            decision("r4", 7, "", ["c2"]),
        ],
    )
    # The same decision shipped twice (another node's copy) counts once; an old one is out of the window.
    write_segment(root, "decisions", "n2-1-1-1", [decision("r1", 0, "a1", ["c1", "c2"], context_json=context)])
    write_segment(root, "decisions", "n1-1-0-1", [decision("r0", -180, "a1", ["c1"])])
    write_segment(
        root,
        "feedback",
        "n1-1-1-2",
        [
            feedback("f1", 1, "r1", "c2"),
            feedback("f1", 1, "r1", "c2"),
            feedback("f2", 2, "r1", "c1", kind="conversion"),
            feedback("f3", 8, "r2", "c3", value=0.5),
            feedback("f4", 9, "r0", "c1"),
        ],
    )
    write_segment(
        root,
        "events",
        "n1-1-1-3",
        [
            sdk("e1", 8.5, "click", "c3", request_id="r2", anon_id="a2"),
            sdk("e2", 3, "click", "c1", request_id="r1", anon_id="a1"),
            sdk("e3", 4, "impression", "c9"),
            sdk("e4", 4, "page_view", "c9"),
            sdk("e5", 4.5, "click", "c9"),
        ],
    )
    return root


def rows(table: pa.Table) -> list[tuple]:
    columns = ("event_id", "type", "source", "request_id", "content_id", "position", "reward")
    return [tuple(r[c] for c in columns) for r in table.to_pylist()]


def test_load_interactions_joins_feedback_and_sdk_events_to_decisions(logs: Path) -> None:
    table = load_interactions(logs, since=T0 - timedelta(minutes=30), until=T0 + timedelta(hours=1))
    assert table.schema == INTERACTION_SCHEMA
    assert rows(table) == [
        ("r1:1", "impression", "edge", "r1", "c1", 1, 1.0),
        ("r1:2", "impression", "edge", "r1", "c2", 2, 1.0),
        ("r1:2:click", "click", "edge", "r1", "c2", 2, 1.0),
        ("r1:1:click", "click", "edge", "r1", "c1", 1, 1.0),
        ("e3", "impression", "sdk", None, "c9", None, 0.0),
        ("e5", "click", "sdk", None, "c9", None, 1.0),
        ("r2:1", "impression", "edge", "r2", "c3", 1, 1.0),
        ("r3:1", "impression", "edge", "r3", "c1", 1, 0.0),
        ("r4:1", "impression", "edge", "r4", "c2", 1, 0.0),
        ("r2:1:click", "click", "edge", "r2", "c3", 1, 1.0),
    ]
    by_id = {r["event_id"]: r for r in table.to_pylist()}
    first = by_id["r1:1"]
    assert (first["ts"], first["surface_id"], first["segment_id"], first["bundle_version"]) == (
        T0,
        "homepage.hero",
        "seg_learn",
        "v1",
    )
    assert (first["propensity"], first["device"], first["referrer"], first["time_of_day"]) == (
        0.5,
        "mobile",
        "www.google.com",
        "evening",
    )
    assert by_id["r1:2"]["propensity"] == 0.25
    # Feedback (0.5 at minute 8) and an SDK click (minute 8.5) on the same item: one click, earliest, best reward.
    assert by_id["r2:1:click"]["ts"] == at(8)
    # Scrubbed again on the way out: a campaign naming an e-mail, an e-mail used as visitor id, a URL's query.
    assert first["campaign"] == "mail [email]"
    # The whole context map travels on (scrubbed too), for `context.<key>` segment dimensions.
    context = {"campaign": "mail [email]", "time_of_day": "evening", "order": 1234567890}
    assert json.loads(first["context_json"]) == json.loads(by_id["r1:1:click"]["context_json"]) == context
    assert by_id["r2:1"]["context_json"] is None and by_id["e3"]["context_json"] is None
    assert by_id["r3:1"]["anon_id"] == pseudonym(EMAIL_VISITOR)
    assert by_id["e3"]["referrer"] == "https://news.example.org/a"
    assert by_id["r4:1"]["anon_id"] is None


def test_unbounded_window_includes_old_decisions_and_their_feedback(logs: Path) -> None:
    table = load_interactions(logs)
    ids = table["event_id"].to_pylist()
    assert (ids[0], ids[-1], table.num_rows) == ("r0:1", "r0:1:click", 12)


def test_erased_visitors_are_left_out(logs: Path) -> None:
    write_segment(
        logs,
        "admin",
        "n1-1-1-4",
        [{"event_id": "x1", "ts": at(20), "action": "erase_user", "subject": "a1", "note": "er_1"}],
    )
    table = load_interactions(logs, since=T0 - timedelta(minutes=30))
    assert "a1" not in table["anon_id"].to_pylist()
    assert {r[3] for r in rows(table)} == {"r2", "r3", "r4", None}


def test_a_local_store_is_read_in_place(tmp_path: Path, logs: Path) -> None:
    store_root = tmp_path / "store"
    store_root.mkdir()
    logs.rename(store_root / "logs")
    table = load_interactions(LocalBundleStore(store_root), since=T0 - timedelta(minutes=30))
    assert table.num_rows == 10


def test_no_logs_give_an_empty_table(tmp_path: Path) -> None:
    table = load_interactions(tmp_path / "nothing")
    assert table.num_rows == 0
    assert table.schema == INTERACTION_SCHEMA


def test_segment_files_prunes_partitions_and_skips_temporary_files(logs: Path) -> None:
    (logs / "decisions" / "date=2026-01-10" / "hour=10" / ".n3-1-1-1.parquet.tmp").write_bytes(b"partial")
    (logs / "decisions" / "_open").mkdir()
    (logs / "decisions" / "_open" / "n3-1-1-2.parquet").write_bytes(b"open")
    names = [p.name for p in segment_files(logs, "decisions", at(-10), at(60))]
    assert names == ["n1-1-1-1.parquet", "n2-1-1-1.parquet"]
    assert [p.name for p in segment_files(logs, "decisions", None, at(-60))] == ["n1-1-0-1.parquet"]


def test_export_command_writes_a_site_events_table(logs: Path, tmp_path: Path, capsys) -> None:
    store_root = tmp_path / "store"
    store_root.mkdir()
    logs.rename(store_root / "logs")
    args = argparse.Namespace(
        store=str(store_root),
        s3_endpoint_url=None,
        since=parse_time("2026-01-10"),
        until=None,
        cache_dir=None,
        out=tmp_path / "site",
    )
    export_command(args)
    assert pq.read_table(tmp_path / "site" / "events.parquet").num_rows == 12
    out = tmp_path / "site" / "events.parquet"
    assert capsys.readouterr().out == f"wrote {out}: 12 rows (5 clicks, 7 impressions)\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2026-01-10", T0 - timedelta(hours=10)), ("2026-01-10T12:00:00+02:00", T0), ("2026-01-10T10:00:00", T0)],
)
def test_parse_time(value: str, expected: datetime) -> None:
    assert parse_time(value) == expected


def test_parse_time_rejects_garbage() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not a date"):
        parse_time("yesterday")

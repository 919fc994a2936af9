"""Retention and erasure jobs on a local store: what they delete is gone, what they keep is intact."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aura.batch.events import load_interactions
from aura.batch.retention import apply_retention, erase_user, erase_user_command, erased_users, retention_command
from aura.bundle.store import LocalBundleStore
from aura.errors import InvalidRequest
from aura.pii import erasure_digests, pseudonym, user_digest
from tests.bundle_factory import make_tiny_bundles
from tests.unit.test_events import EMAIL_VISITOR, T0, at, decision, feedback, sdk, write_segment

VISITOR = "visitor-42"


@pytest.fixture
def store(tmp_path: Path) -> LocalBundleStore:
    (tmp_path / "store").mkdir()
    return LocalBundleStore(tmp_path / "store")


def ship(store: LocalBundleStore, local_root: Path) -> None:
    """Upload every segment under a local logs root, as the log shipper does."""
    for path in sorted(local_root.glob("*/date=*/hour=*/*.parquet")):
        stream = path.relative_to(local_root).parts[0]
        store.put_log(stream, path.relative_to(local_root / stream).as_posix(), path)


def every_value(store: LocalBundleStore) -> list[str]:
    """Every string cell of every shipped row, nested ones included."""
    values: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            values.append(value)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    for path in sorted((store.root / "logs").rglob("*.parquet")):
        walk(pq.read_table(path).to_pylist())
    return values


def test_apply_retention_deletes_expired_partitions_and_surplus_bundles(store: LocalBundleStore, tmp_path: Path):
    versions = [f"v00{i}" for i in range(1, 8)]
    built = make_tiny_bundles(tmp_path / "built", versions)
    for version in versions:
        store.push(built / version)
    store.promote("v002")
    keys = {
        "logs/decisions/date=2025-12-01/hour=23/a.parquet": False,
        "logs/decisions/date=2025-12-02/hour=00/b.parquet": True,
        "logs/admin/date=2025-01-01/hour=00/c.parquet": False,
        "features/user_features/date=2026-10-02/part-0.parquet": False,
        "features/user_features/date=2026-10-03/part-0.parquet": True,
    }
    for key in keys:
        store.write_object(key, b"x")
    report = apply_retention(store, now=datetime(2027, 1, 1, tzinfo=UTC))
    assert (report.log_files, report.feature_files, report.bundle_versions) == (2, 1, ["v001"])
    for key, kept in keys.items():
        assert (store.read_object(key) is not None) == kept, key
    assert store.list_versions() == versions[1:]
    assert store.current() == "v002"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event_days": 0}, "event_days, feature_days and model_versions must each be at least 1"),
        ({"feature_days": -1}, "at least 1"),
        ({"model_versions": 0}, "at least 1"),
    ],
)
def test_apply_retention_rejects_invalid_periods(store: LocalBundleStore, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        apply_retention(store, **kwargs)


@pytest.fixture
def shipped(store: LocalBundleStore, tmp_path: Path) -> LocalBundleStore:
    local = tmp_path / "edge-logs"
    write_segment(
        local,
        "decisions",
        "n1-1-1-1",
        [decision("r1", 0, VISITOR, ["c1", "c2"]), decision("r2", 1, "a2", ["c1"])],
    )
    write_segment(local, "decisions", "n1-1-2-1", [decision("r3", 70, VISITOR, ["c3"])])
    write_segment(local, "decisions", "n1-1-3-1", [decision("r4", 2, pseudonym(EMAIL_VISITOR), ["c2"])])
    write_segment(
        local,
        "feedback",
        "n1-1-1-2",
        [feedback("f1", 3, "r1", "c2"), feedback("f2", 4, "r2", "c1"), feedback("f3", 5, "r4", "c2")],
    )
    write_segment(local, "events", "n1-1-1-3", [sdk("e1", 3, "click", "c9", anon_id=VISITOR)])
    write_segment(
        local,
        "admin",
        "n1-1-1-4",
        [
            {"event_id": "x1", "ts": at(10), "action": "erase_user", "subject": VISITOR, "note": "er_1"},
            {"event_id": "x2", "ts": at(11), "action": "retrain", "subject": "job_1", "note": "nightly"},
        ],
    )
    ship(store, local)
    return store


def test_erase_user_removes_every_row_of_the_visitor(shipped: LocalBundleStore) -> None:
    assert VISITOR in every_value(shipped)
    report = erase_user(shipped, VISITOR)
    assert report.rows_removed == {"decisions": 2, "events": 1, "feedback": 1, "admin": 0}
    assert (report.files_rewritten, report.files_deleted) == (3, 2)
    values = every_value(shipped)
    assert not [v for v in values if VISITOR in v]
    assert "r1" not in values and "r3" not in values and "f1" not in values
    assert {"r2", "r4", "f2", "f3", "job_1", f"sha256:{user_digest(VISITOR)}"} <= set(values)
    assert erasure_digests(VISITOR) <= erased_users(shipped)
    # The rewritten segments replaced the old names; no temporary files are left behind.
    names = sorted(p.name for p in (shipped.root / "logs").rglob("*") if p.is_file())
    assert all(".erased-" in n for n in names if n.startswith("n1-1-1-"))
    assert not [n for n in names if n.startswith(".")]


def test_erase_user_is_idempotent_and_finds_pseudonymized_ids(shipped: LocalBundleStore) -> None:
    erase_user(shipped, VISITOR)
    again = erase_user(shipped, VISITOR)
    assert (again.rows_removed, again.files_rewritten, again.files_deleted) == ({}, 0, 0)
    report = erase_user(shipped, EMAIL_VISITOR)
    assert report.rows_removed == {"decisions": 1, "feedback": 1}
    assert pseudonym(EMAIL_VISITOR) not in every_value(shipped)
    assert user_digest(pseudonym(EMAIL_VISITOR)) in erased_users(shipped)


def test_erased_visitors_recorded_but_not_yet_rewritten_are_skipped_by_the_batch(shipped: LocalBundleStore) -> None:
    # The admin stream says the visitor asked for erasure at an edge node; no job has run yet.
    assert user_digest(VISITOR) in erased_users(shipped)
    table = load_interactions(shipped, since=T0 - timedelta(hours=1))
    assert sorted(set(table["request_id"].to_pylist())) == ["r2", "r4"]


def test_download_cache_drops_copies_of_erased_segments(shipped: LocalBundleStore, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    before = shipped.download_logs("decisions", cache)
    assert len(before) == 3
    erase_user(shipped, VISITOR)
    after = shipped.download_logs("decisions", cache)
    on_disk = sorted(p for p in (cache / "decisions").rglob("*.parquet"))
    assert on_disk == sorted(after)
    assert len(after) == 2
    assert not [v for p in after for v in pq.read_table(p)["anon_id"].to_pylist() if v == VISITOR]


def test_erase_user_needs_an_id(store: LocalBundleStore) -> None:
    with pytest.raises(InvalidRequest, match="user_id must not be empty"):
        erase_user(store, "")


def test_cli_handlers_print_a_summary(shipped: LocalBundleStore, capsys: pytest.CaptureFixture[str]) -> None:
    store = {"store": str(shipped.root), "s3_endpoint_url": None}
    erase_user_command(argparse.Namespace(user_id=VISITOR, **store))
    retention_command(argparse.Namespace(event_days=1, feature_days=90, model_versions=5, **store))
    assert capsys.readouterr().out.splitlines() == [
        f"erased visitor from {shipped.root}: rows removed: 0 admin, 2 decisions, 1 events, 1 feedback; "
        "3 segment(s) rewritten, 2 deleted; the erasure is recorded for future builds",
        f"retention on {shipped.root}: deleted 4 log segment(s), 0 feature file(s) and 0 bundle version(s)",
    ]

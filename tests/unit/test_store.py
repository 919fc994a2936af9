"""The bundle store contract on a local directory: push, list, promote, rollback, download, delete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aura.bundle.format import MANIFEST, Manifest
from aura.bundle.loader import verify_bundle
from aura.bundle.store import (
    CURRENT,
    LocalBundleStore,
    S3BundleStore,
    atomic_path,
    open_store,
)
from aura.errors import BundleError, InvalidRequest, NotFound
from tests.bundle_factory import corrupt_file, make_tiny_bundles

VERSIONS = ("v001", "v002", "v003")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundles(tmp_path_factory.mktemp("built"), VERSIONS)


@pytest.fixture
def store(tmp_path: Path) -> LocalBundleStore:
    (tmp_path / "store").mkdir()
    return LocalBundleStore(tmp_path / "store")


def push_all(store: LocalBundleStore, built: Path) -> None:
    for version in VERSIONS:
        store.push(built / version)


def current_json(store: LocalBundleStore) -> dict:
    return json.loads((store.root / CURRENT).read_text())


def test_empty_store_has_no_versions(store: LocalBundleStore) -> None:
    assert store.list_versions() == []
    assert store.current() is None


def test_missing_root_is_unreachable(tmp_path: Path) -> None:
    store = LocalBundleStore(tmp_path / "absent")
    with pytest.raises(BundleError, match=r"absent is unreachable: the directory does not exist"):
        store.list_versions()
    with pytest.raises(BundleError, match="unreachable"):
        store.current()


def test_writes_to_a_missing_root_fail_and_never_create_it(tmp_path: Path) -> None:
    store = LocalBundleStore(tmp_path / "absent")
    with pytest.raises(BundleError, match=r"absent is unreachable: the directory does not exist \(an unmounted volume"):
        store.write_object("logs/feedback/date=2026-01-01/hour=00/n1.parquet", b"PAR1")
    with pytest.raises(BundleError, match="absent is unreachable"):
        store.delete_objects(["logs/feedback/date=2026-01-01/hour=00/n1.parquet"])
    assert not store.root.exists()


def test_a_root_that_is_a_file_is_unreachable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    store = LocalBundleStore(tmp_path / "file")
    with pytest.raises(BundleError, match=r"file is unreachable: it is not a directory"):
        store.write_object("features/t/date=2026-01-01/x.parquet", b"PAR1")
    with pytest.raises(BundleError, match=r"file is unreachable: it is not a directory"):
        store.current()


def test_writes_create_the_folders_below_an_existing_root(store: LocalBundleStore) -> None:
    store.write_object("features/t/date=2026-01-01/x.parquet", b"PAR1")
    assert store.read_object("features/t/date=2026-01-01/x.parquet") == b"PAR1"
    assert [p.name for p in (store.root / "features" / "t" / "date=2026-01-01").iterdir()] == ["x.parquet"]


def test_push_uploads_every_file_and_lists_the_version(store: LocalBundleStore, built: Path) -> None:
    assert store.push(built / "v001") == "v001"
    assert store.list_versions() == ["v001"]
    assert sorted(p.name for p in (store.root / "bundles" / "v001").iterdir()) == sorted(
        p.name for p in (built / "v001").iterdir()
    )
    assert store.read_manifest("v001") == Manifest.read(built / "v001")
    assert store.current() is None


def test_push_creates_a_fresh_root(tmp_path: Path, built: Path) -> None:
    store = LocalBundleStore(tmp_path / "new" / "store")
    store.push(built / "v001")
    assert store.list_versions() == ["v001"]


def test_push_refuses_an_existing_version(store: LocalBundleStore, built: Path) -> None:
    store.push(built / "v001")
    with pytest.raises(BundleError, match="bundle v001 already exists"):
        store.push(built / "v001")


def test_push_refuses_a_corrupt_bundle_before_uploading(store: LocalBundleStore, built: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(built / "v001", tmp_path / "broken" / "v001")
    corrupt_file(broken / "posteriors.parquet")
    with pytest.raises(BundleError, match=r"posteriors.parquet does not match its checksum; the bundle is corrupt"):
        store.push(broken)
    assert list(store.root.iterdir()) == []


def test_half_pushed_bundle_is_invisible(store: LocalBundleStore, built: Path) -> None:
    store.push(built / "v001")
    partial = store.root / "bundles" / "v002"
    partial.mkdir()
    for path in (built / "v002").iterdir():
        if path.name != MANIFEST:
            shutil.copyfile(path, partial / path.name)
    assert store.list_versions() == ["v001"]
    with pytest.raises(NotFound, match="bundle version v002 is not in the store"):
        store.promote("v002")
    with pytest.raises(NotFound, match="bundle version v002 is not in the store"):
        store.read_manifest("v002")


def test_promote_and_rollback_walk_the_history(store: LocalBundleStore, built: Path) -> None:
    push_all(store, built)
    for version in VERSIONS:
        store.promote(version)
    store.promote("v003")
    assert store.current() == "v003"
    assert current_json(store)["history"] == ["v002", "v001"]
    assert current_json(store)["promoted_at"].endswith("Z")

    assert store.rollback() == "v002"
    assert current_json(store)["history"] == ["v001"]
    assert store.rollback() == "v001"
    assert store.current() == "v001"
    with pytest.raises(BundleError, match="has no earlier promoted version to roll back to"):
        store.rollback()


def test_promoting_an_older_version_moves_it_out_of_the_history(store: LocalBundleStore, built: Path) -> None:
    push_all(store, built)
    for version in ("v001", "v002", "v003", "v001"):
        store.promote(version)
    assert current_json(store)["history"] == ["v003", "v002"]


def test_rollback_skips_deleted_versions(store: LocalBundleStore, built: Path) -> None:
    push_all(store, built)
    for version in VERSIONS:
        store.promote(version)
    store.delete("v002")
    assert store.rollback() == "v001"


def test_promote_needs_an_existing_version(store: LocalBundleStore) -> None:
    with pytest.raises(NotFound, match="bundle version v009 is not in the store"):
        store.promote("v009")


def test_download_verifies_and_leaves_only_the_bundle(store: LocalBundleStore, built: Path, tmp_path: Path) -> None:
    store.push(built / "v001")
    dest = tmp_path / "cache"
    path = store.download("v001", dest)
    assert path == dest / "v001"
    assert verify_bundle(path).bundle_version == "v001"
    assert [p.name for p in dest.iterdir()] == ["v001"]


def test_download_uses_a_copy_that_appeared_meanwhile(store: LocalBundleStore, built: Path, tmp_path: Path) -> None:
    store.push(built / "v001")
    first = store.download("v001", tmp_path / "cache")
    inode = first.stat().st_ino
    second = store.download("v001", tmp_path / "cache")
    assert second == first
    assert second.stat().st_ino == inode
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["v001"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: corrupt_file(d / "content.parquet"), r"content.parquet does not match its checksum"),
        (lambda d: (d / "content_index.hnsw").unlink(), r"bundles/v001/content_index.hnsw is missing"),
        (lambda d: (d / "segments.parquet").write_bytes(b"x"), r"segments.parquet does not match its checksum"),
    ],
)
def test_download_refuses_a_damaged_bundle(
    store: LocalBundleStore, built: Path, tmp_path: Path, damage, message
) -> None:
    store.push(built / "v001")
    damage(store.root / "bundles" / "v001")
    dest = tmp_path / "cache"
    with pytest.raises(BundleError, match=message):
        store.download("v001", dest)
    assert list(dest.iterdir()) == []


def test_download_of_an_unknown_version_is_not_found(store: LocalBundleStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="bundle version v009 is not in the store"):
        store.download("v009", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_delete_removes_a_version_but_not_the_promoted_one(store: LocalBundleStore, built: Path) -> None:
    push_all(store, built)
    store.promote("v003")
    with pytest.raises(BundleError, match="bundle v003 is the promoted version"):
        store.delete("v003")
    store.delete("v002")
    assert store.list_versions() == ["v001", "v003"]
    assert not (store.root / "bundles" / "v002").exists()
    with pytest.raises(NotFound, match="bundle version v002 is not in the store"):
        store.delete("v002")


@pytest.mark.parametrize("version", ["", "../v001", "a/b", ".hidden", "v 1", "x" * 129])
@pytest.mark.parametrize("operation", ["promote", "read_manifest", "delete"])
def test_invalid_version_names_are_rejected(store: LocalBundleStore, version: str, operation: str) -> None:
    with pytest.raises(InvalidRequest, match="is not a valid version name"):
        getattr(store, operation)(version)


def test_download_rejects_an_invalid_version_name(store: LocalBundleStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="is not a valid version name"):
        store.download("../escape", tmp_path / "cache")


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"version": "v001", "history": "v000"}'])
def test_malformed_current_json_is_a_clear_error(store: LocalBundleStore, content: str) -> None:
    (store.root / CURRENT).write_text(content)
    with pytest.raises(BundleError, match=r"CURRENT.json is malformed"):
        store.current()


def test_atomic_path_leaves_the_target_untouched_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(OSError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise OSError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize(
    ("url", "kind", "where"),
    [
        ("s3://aura-bundles/edge/prod", S3BundleStore, "s3://aura-bundles/edge/prod"),
        ("s3://aura-bundles", S3BundleStore, "s3://aura-bundles/"),
        ("s3://aura-bundles/prod/", S3BundleStore, "s3://aura-bundles/prod"),
        ("var/bundle-store", LocalBundleStore, "var/bundle-store"),
    ],
)
def test_open_store_picks_the_backend(url: str, kind: type, where: str) -> None:
    store = open_store(url, endpoint_url="http://127.0.0.1:9")
    assert isinstance(store, kind)
    assert store.url == where


def test_open_store_needs_a_bucket() -> None:
    with pytest.raises(BundleError, match="names no bucket"):
        open_store("s3://")
